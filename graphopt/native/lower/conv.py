"""conv / fused_conv / conv_transpose -> "conv2d" / "conv_transpose2d" (csrc/rt_conv.cpp).

1-D convolutions run as 2-D ones with a height of 1; 3-D ones run "conv3d" /
"conv_transpose3d" (csrc/rt_volume.cpp: direct loops, coverage rather than speed). The weight must be a plan constant (it is
packed for the GEMM, or copied for the depthwise path, when the plan is built).

A malformed convolution (from a crafted file or a hand-built graph that bypassed type
inference) is rejected here with a :class:`~graphopt.errors.LoweringError` naming the node and
what is wrong: strides, dilations and groups must be positive, groups must divide both channel
counts (else the kernel would leave output channels unwritten), the weight must have the layout
its attributes imply and the output the size they compute. The C++ factory checks the memory
side again (rt_conv.cpp); this is where the message can name the node.
"""

from __future__ import annotations

from graphopt.native.lower import blocked
from graphopt.native.lower._common import activation, reads_pad_marker, require_float32
from graphopt.ops.registry import IN_OUT_SPATIAL, get_op, register_lowering


def _spatial(ctx, name: str, n: int) -> list[int]:
    value = ctx.attrs[name]
    value = [value] if isinstance(value, int) else list(value)
    if len(value) not in (1, n) or not all(isinstance(v, int) for v in value):
        ctx.invalid(f"attribute {name}={tuple(value)} must hold 1 or {n} integers")
    return value * n if len(value) == 1 else value


def _check_conv(ctx, x_shape, w_shape, out_shape, stride, pad, dil, transpose: bool) -> None:
    """Rejects convolutions whose attributes, weight and output disagree (see module doc).
    ``x_shape`` is the node's input as declared (for a folded zero pad: the padded shape)."""
    n = len(x_shape) - 2
    groups = ctx.attrs["groups"]
    if len(w_shape) != n + 2 or len(out_shape) != n + 2:
        ctx.invalid(f"input {list(x_shape)}, weight {list(w_shape)} and output "
                    f"{list(out_shape)} must all be [N, C, *spatial] of rank {n + 2}")
    for name, values, low in (("stride", stride, 1), ("dilation", dil, 1), ("padding", pad, 0)):
        if any(v < low for v in values):
            ctx.invalid(f"{name}={tuple(values)} must be >= {low}")
    if not isinstance(groups, int) or groups < 1:
        ctx.invalid(f"groups={groups!r} must be a positive integer")
    c, co = x_shape[1], out_shape[1]
    if c % groups or co % groups:
        ctx.invalid(f"groups={groups} must divide the input channels ({c}) and the output "
                    f"channels ({co})")
    kernel = list(w_shape[2:])
    if any(k < 1 for k in kernel):
        ctx.invalid(f"the weight {list(w_shape)} has an empty kernel")
    want_w = [c, co // groups] if transpose else [co, c // groups]
    if list(w_shape[:2]) != want_w:
        ctx.invalid(f"the weight is {list(w_shape)}; with {c} input channels, {co} output "
                    f"channels and groups={groups} it must be {want_w + kernel}")
    if out_shape[0] != x_shape[0]:
        ctx.invalid(f"batch {out_shape[0]} of the output differs from the input's {x_shape[0]}")
    outpad = _spatial(ctx, "output_padding", n) if transpose else [0] * n
    for i in range(n):
        span = dil[i] * (kernel[i] - 1) + 1
        if transpose:
            want = (x_shape[2 + i] - 1) * stride[i] - 2 * pad[i] + span + outpad[i]
        else:
            want = (x_shape[2 + i] + 2 * pad[i] - span) // stride[i] + 1
        # A transposed convolution may compute an empty output (torch returns one).
        if out_shape[2 + i] < (0 if transpose else 1) or out_shape[2 + i] != want:
            ctx.invalid(f"output spatial dim {i} is {out_shape[2 + i]}, the attributes give "
                        f"{max(want, 0)}")


def _conv_params(ctx, x_shape=None, extra_pad=(0, 0), w_slot: int = 1):
    """The conv kernels' int parameters; the weight is operand ``w_slot`` (a plan constant is
    packed once; another weight is read on every call)."""
    x_shape = x_shape or ctx.in_shape(0)
    w_shape, out_shape = ctx.in_shape(w_slot), ctx.out_shape(0)
    n = len(x_shape) - 2
    if n not in (1, 2):
        ctx.unsupported(f"{n}-d convolution has no native kernel")
    a = ctx.attrs
    stride, pad, dil = (_spatial(ctx, k, n) for k in ("stride", "padding", "dilation"))
    _check_conv(ctx, ctx.in_shape(0), w_shape, out_shape, stride, pad, dil,
                get_op(ctx.node.op).weights.layout == IN_OUT_SPATIAL)
    kernel = list(w_shape[2:])
    in_sp, out_sp = list(x_shape[2:]), list(out_shape[2:])
    if n == 1:  # conv1d as conv2d over [N, C, 1, L]
        stride, pad, dil, kernel = [1] + stride, [0] + pad, [1] + dil, [1] + kernel
        in_sp, out_sp = [1] + in_sp, [1] + out_sp
    # The kernels take the top / left padding; bottom / right follow from the output size.
    pad = [pad[0] + extra_pad[0], pad[1] + extra_pad[1]]
    co = out_shape[1]
    return [x_shape[0], x_shape[1], *in_sp, co, *kernel, *stride, *pad, *dil, a["groups"], *out_sp]


def _conv3d(ctx, kernel: str) -> None:
    """A 3-D convolution (or transposed one): "conv3d" / "conv_transpose3d", direct loops
    (csrc/rt_volume.cpp). A fused residual or activation is not taken: such a node is refused
    by name (and runs through the reference fallback by default)."""
    if ctx.has(3) or ctx.attrs.get("activation", "none") != "none":  # fused_conv's epilogue
        ctx.unsupported("a 3-D convolution with a fused residual or activation")
    x_shape, w_shape, out_shape = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
    stride, pad, dil = (_spatial(ctx, k, 3) for k in ("stride", "padding", "dilation"))
    _check_conv(ctx, x_shape, w_shape, out_shape, stride, pad, dil,
                kernel == "conv_transpose3d")
    out = ctx.output(0)
    if out.numel == 0:
        return
    params = [x_shape[0], x_shape[1], *x_shape[2:], out_shape[1], *w_shape[2:], *stride, *pad,
              *dil, ctx.attrs["groups"], *out_shape[2:]]
    operands = [out, ctx.contiguous(0), ctx.contiguous(1), ctx.contiguous(2)]
    if kernel == "conv3d":
        ctx.emit("conv3d", operands, params)
    else:
        ctx.emit("conv_transpose3d", operands, params)


def _conv(ctx, fused: bool) -> None:
    require_float32(ctx, 0, 1, 2, 3)
    if len(ctx.in_shape(0)) == 5:
        _conv3d(ctx, "conv3d")
        return
    if blocked.lower_conv(ctx, fused, _conv_params, activation):
        return
    x = ctx.ref(0)
    padded_from = x.meta.get("padded_from")
    if padded_from is not None:  # a zero pad folded into this convolution (see lower_pad)
        x = padded_from
        params = _conv_params(ctx, x.shape, x.meta["pad_top_left"])
    else:
        params = _conv_params(ctx)
        x = ctx.contiguous(0)
    bias = ctx.contiguous(2)
    residual = ctx.contiguous(3) if fused and ctx.has(3) else None
    a = ctx.attrs
    code, p0, p1 = activation(ctx, a.get("activation", "none"), a.get("activation_params", ()))
    out = ctx.output(0, inplace=(3,) if residual is not None else ())
    in_place = residual is not None and out.buffer is residual.buffer and \
        out.offset == residual.offset
    ctx.emit("conv2d", [out, x, _weight(ctx), bias, residual], [*params, code, int(in_place)],
             [p0, p1])


def _weight(ctx):
    """The weight operand: a constant as it is (the kernel packs it once), else contiguous
    (the kernel reads [Co, C/g * kh * kw] rows from it on every call)."""
    return ctx.ref(1) if ctx.const(1) is not None else ctx.contiguous(1)


@register_lowering("native", "conv")
@blocked.reads_blocked_layout(blocked.conv_reads)
@reads_pad_marker
def lower_conv(ctx) -> None:
    _conv(ctx, fused=False)


@register_lowering("native", "fused_conv")
@blocked.reads_blocked_layout(blocked.conv_reads)
@reads_pad_marker
def lower_fused_conv(ctx) -> None:
    _conv(ctx, fused=True)


@register_lowering("native", "conv_transpose")
def lower_conv_transpose(ctx) -> None:
    require_float32(ctx, 0, 1, 2)
    if len(ctx.in_shape(0)) == 5:
        _conv3d(ctx, "conv_transpose3d")
        return
    # output_padding only changes the output size, which the params carry already.
    params = _conv_params(ctx)
    out = ctx.output(0)
    if out.numel == 0:
        return
    x = ctx.contiguous(0)
    ctx.emit("conv_transpose2d", [out, x, _weight(ctx), ctx.contiguous(2)], params)
