"""Data-movement ops. Most are views (no step): reshape, permute, expand, squeeze, unsqueeze,
slice, select, split, flip. A consumer that needs contiguous data copies the view once
(``ctx.contiguous``). concat copies each piece into its slot of the output; pad fills the
border and copies the interior; tile copies a broadcast view.
"""

from __future__ import annotations

import struct

import torch

from graphopt.ir.dtypes import DType
from graphopt.native import refs as R
from graphopt.native.lower import blocked
from graphopt.native.lower._common import accepts_padded_input, norm_axis
from graphopt.native.lower.kv_segments import defer_concat
from graphopt.ops.registry import register_lowering


@register_lowering("native", "reshape")
def lower_reshape(ctx) -> None:
    shape = ctx.out_shape(0)
    view = ctx.ref(0).reshaped(shape)
    if view is None:  # strides do not allow a view: copy first
        view = ctx.contiguous(0).reshaped(shape)
    ctx.set_output(0, view)


for _op in ("squeeze", "unsqueeze"):
    register_lowering("native", _op)(lower_reshape)


@register_lowering("native", "bitcast")
def lower_bitcast(ctx) -> None:
    """A view of the same bytes with the other dtype (equal element sizes: no copy)."""
    x = ctx.contiguous(0)
    ctx.set_output(0, R.TensorRef(x.buffer, x.offset, x.shape, x.strides, ctx.out_dtype(0)))


@register_lowering("native", "permute")
def lower_permute(ctx) -> None:
    if ctx.node.outputs[0] in ctx.builder.env:
        return  # the producer already wrote this layout (see lower/attention.py)
    ctx.set_output(0, ctx.ref(0).permuted(ctx.attrs["perm"]))


@register_lowering("native", "expand")
def lower_expand(ctx) -> None:
    ctx.set_output(0, ctx.ref(0).expanded(ctx.out_shape(0)))


@register_lowering("native", "slice")
def lower_slice(ctx) -> None:
    x = ctx.ref(0)
    axis = norm_axis(ctx.attrs["axis"], len(x.shape))
    start, end, step = ctx.attrs["start"], ctx.attrs["end"], ctx.attrs["step"]
    start, _, _ = slice(start, min(end, 2**62), step).indices(x.shape[axis])
    length = ctx.out_shape(0)[axis]
    ctx.set_output(0, x.sliced(axis, start if length else 0, length, step))


@register_lowering("native", "select")
def lower_select(ctx) -> None:
    x = ctx.ref(0)
    axis = norm_axis(ctx.attrs["axis"], len(x.shape))
    ctx.set_output(0, x.selected(axis, ctx.attrs["index"] % x.shape[axis]))


@register_lowering("native", "split")
def lower_split(ctx) -> None:
    x = ctx.ref(0)
    axis = norm_axis(ctx.attrs["axis"], len(x.shape))
    start = 0
    for i, size in enumerate(ctx.attrs["sizes"]):
        ctx.set_output(i, x.sliced(axis, start, size))
        start += size


@register_lowering("native", "flip")
def lower_flip(ctx) -> None:
    x = ctx.ref(0)
    shape, strides, offset = list(x.shape), list(x.strides), x.offset
    for axis in {norm_axis(a, len(shape)) for a in ctx.attrs["axes"]}:
        if shape[axis] > 1:
            offset += (shape[axis] - 1) * strides[axis] * x.itemsize
            strides[axis] = -strides[axis]
    ctx.set_output(0, x.with_view(offset, shape, strides))


@register_lowering("native", "concat")
def lower_concat(ctx) -> None:
    if defer_concat(ctx):  # a decoder's KV cache + new keys: attention reads the two pieces
        return
    out = ctx.output(0)
    axis = norm_axis(ctx.attrs["axis"], len(out.shape))
    start = 0
    for i in range(ctx.num_inputs):
        piece = ctx.ref(i)
        size = piece.shape[axis]
        if size:
            ctx.copy(out.sliced(axis, start, size), piece)
        start += size


@register_lowering("native", "tile")
def lower_tile(ctx) -> None:
    # x.repeat(r): out viewed as [r0, d0, r1, d1, ...] is x broadcast over the r axes.
    x = ctx.ref(0)
    reps = list(ctx.attrs["repeats"])
    lead = len(reps) - len(x.shape)
    dims = [1] * lead + list(x.shape)
    strides = [0] * lead + list(x.strides)
    out = ctx.output(0)
    big_shape, src_strides = [], []
    for r, d, s in zip(reps, dims, strides):
        big_shape += [r, d]
        src_strides += [0, s]
    src = x.with_view(x.offset, big_shape, src_strides)
    ctx.copy(out.with_view(out.offset, big_shape, R.contiguous_strides(tuple(big_shape))), src)


@register_lowering("native", "pixel_shuffle")
def lower_pixel_shuffle(ctx) -> None:
    """[*, C*r*r, H, W] viewed as [*, C, r, r, H, W], copied as [*, C, H, r, W, r]."""
    r = ctx.attrs["factor"]
    x = ctx.ref(0)
    lead, (crr, h, w) = x.shape[:-3], x.shape[-3:]
    split = tuple(lead) + (crr // (r * r), r, r, h, w)
    view = x.reshaped(split)
    if view is None:
        view = ctx.contiguous(0).reshaped(split)
    n = len(lead)
    src = view.permuted(list(range(n)) + [n, n + 3, n + 1, n + 4, n + 2])
    out = ctx.output(0)
    if out.numel:
        ctx.copy(out.with_view(out.offset, src.shape, R.contiguous_strides(src.shape)), src)


@register_lowering("native", "roll")
def lower_roll(ctx) -> None:
    """A circular shift is two pieces per rolled axis: out[s:] = x[:d-s], out[:s] = x[d-s:];
    each of the 2^k combinations over k rolled axes is one strided copy."""
    x = ctx.ref(0)
    rank = len(x.shape)
    shifts: dict[int, int] = {}
    for shift, axis in zip(ctx.attrs["shifts"], ctx.attrs["axes"]):
        a = norm_axis(axis, rank)
        shifts[a] = shifts.get(a, 0) + shift
    out = ctx.output(0)
    if out.numel == 0:
        return
    pieces = [(out, x)]
    for axis, shift in shifts.items():
        d = x.shape[axis]
        s = shift % d
        if s == 0:
            continue
        pieces = [p for dst, src in pieces for p in (
            (dst.sliced(axis, s, d - s), src.sliced(axis, 0, d - s)),
            (dst.sliced(axis, 0, s), src.sliced(axis, d - s, s)))]
    for dst, src in pieces:
        ctx.copy(dst, src)


def _bit_pattern(value: float, dtype: DType) -> int:
    if dtype == DType.float32:
        return struct.unpack("<I", struct.pack("<f", value))[0]
    if dtype == DType.float64:
        return struct.unpack("<q", struct.pack("<d", value))[0]
    if dtype in (DType.float16, DType.bfloat16):  # rounded as torch rounds the fill value
        bits = torch.tensor(float(value)).to(dtype.torch).view(torch.int16).item()
        return bits & 0xFFFF
    if dtype == DType.bool:
        return int(bool(value))
    v = int(value)
    return v & ((1 << (8 * dtype.itemsize)) - 1)


def _fold_into_convs(ctx) -> bool:
    """A zero pad of the spatial dims whose only readers are convolutions (their input) costs
    nothing: each convolution reads the unpadded input with a larger top / left padding (the
    bottom / right padding is implied by the output size)."""
    pads, value = ctx.attrs["pads"], ctx.attrs["value"]
    out = ctx.node.outputs[0]
    rank = len(ctx.in_shape(0))
    if (value != 0 or any(p < 0 for p in pads) or rank not in (3, 4)
            or len(pads) > 2 * (rank - 2) or out.is_graph_output or not out.uses
            or ctx.in_dtype(0) != DType.float32):
        return False
    # only lowerings that declare it (@reads_pad_marker: conv, fused_conv) read the marker
    if not all(accepts_padded_input(node, slot) for node, slot in out.uses):
        return False
    if rank == 4:
        top, left = (pads[2] if len(pads) >= 4 else 0), pads[0]
    else:  # conv1d runs as a conv2d of height 1
        top, left = 0, pads[0]
    if blocked.fold_pad(ctx, top, left):  # a blocked input, read by blocked convolutions
        return True
    src = ctx.contiguous(0)
    # The marker stands for the padded tensor; only the convolutions read it (through meta).
    marker = src.with_view(src.offset, ctx.out_shape(0), R.contiguous_strides(ctx.out_shape(0)))
    src_view = src.with_view(src.offset, src.shape, src.strides)
    src_view.meta["pad_top_left"] = (top, left)
    marker.meta["padded_from"] = src_view
    ctx.set_output(0, marker)
    return True


@register_lowering("native", "pad")
@blocked.reads_blocked_layout(blocked.pad_reads)
def lower_pad(ctx) -> None:
    mode, pads = ctx.attrs["mode"], ctx.attrs["pads"]
    if mode not in ("constant",) + tuple(_BORDER_SOURCE):
        ctx.unsupported(f"pad mode '{mode}' has no native kernel")
    if mode != "constant" and any(p < 0 for p in pads):
        ctx.unsupported(f"negative pads (crops) in pad mode '{mode}'")
    if mode == "constant" and _fold_into_convs(ctx):
        return
    x = ctx.ref(0)
    out = ctx.output(0)
    dtype = ctx.out_dtype(0)
    if out.numel == 0:
        return
    if mode == "constant":
        ctx.emit("fill", [out],
                 [out.itemsize, out.numel, _bit_pattern(ctx.attrs["value"], dtype)])
    # Interior: out[lo:lo+n] = x[...] along each padded axis (negative pads crop x instead).
    src, dst = x, out
    for i in range(len(pads) // 2):
        axis = len(x.shape) - 1 - i
        lo, hi = pads[2 * i], pads[2 * i + 1]
        keep = x.shape[axis] + min(lo, 0) + min(hi, 0)
        if keep <= 0:
            return
        src = src.sliced(axis, max(-lo, 0), keep)
        dst = dst.sliced(axis, max(lo, 0), keep)
    ctx.copy(dst, src)
    if mode != "constant":
        _fill_borders(ctx, out, x.shape, pads, mode)


# Where each border element of a non-constant pad reads, in the padded output's coordinates
# along one axis (n: the input's size, lo / hi: the pads, w: the border's width):
# (source start, step) of the low border, then of the high border.
_BORDER_SOURCE = {
    # padded[lo - 1 - k] = x[k + 1]; padded[lo + n + k] = x[n - 2 - k]
    "reflect": lambda n, lo: ((2 * lo, -1), (lo + n - 2, -1)),
    # padded[k] = x[0] for k < lo; padded[lo + n + k] = x[n - 1]
    "replicate": lambda n, lo: ((lo, 0), (lo + n - 1, 0)),
    # padded[k] = x[n - lo + k]; padded[lo + n + k] = x[k]
    "circular": lambda n, lo: ((n, 1), (lo, 1)),
}


def _fill_borders(ctx, out, shape, pads, mode: str) -> None:
    """The borders of a reflect / replicate / circular pad, copied from the interior already
    in ``out``, one axis at a time. Each axis's copies span the other axes' full padded extent,
    so a corner becomes the composition of both axes' rules (as torch computes it)."""
    limit = {"reflect": lambda n: n - 1, "replicate": lambda n: None, "circular": lambda n: n}
    for i in range(len(pads) // 2):
        axis = len(shape) - 1 - i
        lo, hi, n = pads[2 * i], pads[2 * i + 1], shape[axis]
        most = limit[mode](n)
        if (most is not None and max(lo, hi) > most) or (n == 0 and lo + hi > 0):
            ctx.invalid(f"pad {lo}, {hi} of axis {axis} (size {n}) is too wide for mode "
                        f"'{mode}' (at most {most})")
        for (start, step), at, width in zip(_BORDER_SOURCE[mode](n, lo), (0, lo + n), (lo, hi)):
            if width == 0:
                continue
            src = out.sliced(axis, start, width, step) if step else out.sliced(axis, start, 1)
            if step == 0:  # replicate: the edge plane broadcast over the border
                src = src.with_view(src.offset, out.sliced(axis, at, width).shape,
                                    [0 if a == axis else st for a, st in enumerate(src.strides)])
            ctx.copy(out.sliced(axis, at, width), src)
