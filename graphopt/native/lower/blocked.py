"""Channel-blocked convolution chains (csrc/rt_blocked.cpp): layout propagation with reorders
only at the edges.

A float32 NCHW activation can be held in the *blocked* layout ``[N, ceil(C/16), H, W, 16]``
(oneDNN's nChw16c): the 16 channels of a block are adjacent, so an AVX-512 register holds one
pixel of one block and every convolution, depthwise ones included, vectorises over channels
with no im2col and no per-plane loops.

The choice is made per value while the plan is built, in graph order:

* a 2-D convolution (``conv`` / ``fused_conv``, groups 1 or depthwise, constant weight) runs
  blocked when its input or residual already is blocked, or when every reader of its output
  reads the blocked layout (:func:`reads_blocked`); its output then stays blocked;
* ``max_pool`` of a blocked input stays blocked; ``adaptive_avg_pool`` to 1x1 of a blocked
  input writes its plain ``[N, C, 1, 1]`` result directly; a zero ``pad`` read only by
  convolutions folds into them as before, blocked or not;
* any other reader gets the plain tensor: ``PlanBuilder.plain_ref`` emits one ``from_blocked``
  reorder per value, on first demand. Graph outputs are always plain. So a blocked value can
  never reach a kernel that reads it as NCHW: only the lowerings here see the blocked form.

The builder's ``layout`` option picks the mode: ``"auto"`` (blocked where the runtime has the
AVX-512 blocked kernels, else NCHW: on AVX2 machines the NCHW GEMM path is the faster one),
``"blocked"`` (also with the portable kernels: tests) or ``"nchw"`` (never).
"""

from __future__ import annotations

import os

from graphopt.errors import InternalError
from graphopt.interpreter import node_attrs
from graphopt.ir.dtypes import DType
from graphopt.native import refs as R
from graphopt.native.refs import TensorRef

LAYOUTS = ("auto", "blocked", "nchw")
BLOCK = 16
# "auto": Winograd F(2x2, 3x3) for the 3x3 convolutions where it pays (winograd_pays); "0":
# never; "1": wherever the kernel can run it (tests use it to cover small shapes).
WINOGRAD_ENV = "GRAPHOPT_NATIVE_WINOGRAD"


def _kernel_name() -> str:
    from graphopt._extension import load_or_none

    ext = load_or_none()
    return "" if ext is None else str(ext.cpu_features().get("blocked_conv_kernel", ""))


def enabled(builder) -> bool:
    """Whether this plan uses the blocked layout at all (the builder's ``layout`` option)."""
    if builder.layout == "nchw":
        return False
    if builder.layout == "blocked":
        return True
    cached = getattr(builder, "_blocked_auto", None)
    if cached is None:
        cached = builder._blocked_auto = _kernel_name() == "avx512"
    return cached


def physical_shape(logical) -> tuple[int, ...]:
    n, c, h, w = logical
    return (n, -(-c // BLOCK), h, w, BLOCK)


def new_blocked(builder, logical, label: str, pending_end: float) -> TensorRef:
    ref = builder.new_ref(physical_shape(logical), DType.float32, label, pending_end)
    ref.meta["logical"] = tuple(logical)
    return ref


def reads_blocked_layout(predicate):
    """Mark a native lowering that reads a blocked input: ``predicate(builder, node, slot)``
    says whether it does for that node and operand (a capability of the lowering, like
    ``reads_pad_marker``; wants_blocked_output asks it of every reader of a value)."""
    def mark(lowering):
        lowering.blocked_reader = predicate
        return lowering
    return mark


def reads_blocked(builder, node, slot: int) -> bool:
    """Whether ``node`` reads its input ``slot`` in the blocked layout when it is blocked."""
    lowering = node.opdef.lowerings.get("native")
    predicate = getattr(lowering, "blocked_reader", None)
    return predicate is not None and bool(predicate(builder, node, slot))


def conv_blockable(builder, node) -> bool:
    """A convolution (conv / fused_conv node) the blocked kernel runs: 2-D, float32, constant
    weight, groups 1, depthwise (C == Co == groups) or groups that tile the blocks."""
    x, w, out = node.inputs[0], node.inputs[1], node.outputs[0]
    if x.dtype != DType.float32 or w.dtype != DType.float32 or out.dtype != DType.float32:
        return False
    if len(w.shape) != 4 or w not in builder.consts:
        return False
    if any(v is not None and v.dtype != DType.float32 for v in node.inputs[2:]):
        return False
    groups = node_attrs(node, builder.bindings).get("groups", 1)
    c, co = builder.shape(x)[1], builder.shape(out)[1]
    return groups == 1 or (groups == c and co == c) or grouped_tiles_blocks(c, co, groups)


def grouped_tiles_blocks(c: int, co: int, groups: int) -> bool:
    """A grouped convolution whose groups tile the 16-channel blocks (csrc/rt_blocked.cpp):
    equal group widths dividing 16 (ResNeXt's 32 x 4), or widths that are multiples of 16."""
    if groups <= 1 or c % groups or co % groups:
        return False
    cig, cog = c // groups, co // groups
    return (cig == cog and BLOCK % cog == 0) or (cig % BLOCK == 0 and cog % BLOCK == 0)


def conv_reads(builder, node, slot: int) -> bool:
    """conv / fused_conv: the input (slot 0) and fused_conv's residual (slot 3)."""
    return slot in (0, 3) and conv_blockable(builder, node)


def _plain_4d(node, slot: int) -> bool:
    return slot == 0 and node.inputs[0].dtype == DType.float32 and len(node.inputs[0].shape) == 4


def max_pool_reads(builder, node, slot: int) -> bool:
    return _plain_4d(node, slot) and len(node_attrs(node, builder.bindings)["kernel"]) == 2


def global_pool_reads(builder, node, slot: int) -> bool:
    return _plain_4d(node, slot) and all(
        s == 1 for s in node_attrs(node, builder.bindings)["output_size"])


def pad_reads(builder, node, slot: int) -> bool:
    """A zero pad read only by blocked convolutions, as their input: folded into them."""
    from graphopt.native.lower._common import accepts_padded_input

    attrs = node_attrs(node, builder.bindings)
    out = node.outputs[0]
    return (_plain_4d(node, slot) and attrs["mode"] == "constant" and attrs["value"] == 0
            and bool(out.uses) and not out.is_graph_output
            and all(accepts_padded_input(n, s) and reads_blocked(builder, n, s)
                    for n, s in out.uses))


def wants_blocked_output(builder, value) -> bool:
    return (enabled(builder) and not value.is_graph_output and bool(value.uses)
            and all(reads_blocked(builder, node, slot) for node, slot in value.uses))


def emit_from_blocked(builder, value, blocked: TensorRef) -> TensorRef:
    """The plain copy of a blocked value (PlanBuilder.plain_ref: its first plain reader)."""
    if "pad_top_left" in blocked.meta:
        raise InternalError(f"%{value.name} is a zero pad folded into blocked convolutions; "
                            "only they may read it")
    n, c, h, w = blocked.meta["logical"]
    out = builder.new_ref((n, c, h, w), DType.float32, f"{value.name}.nchw",
                          builder.last_use.get(value, -1))
    builder.emit("from_blocked", f"{value.name}.to_nchw", [out, blocked], [n, c, h * w])
    return out


def blocked_input(ctx, i: int) -> TensorRef:
    """Input i in the blocked layout, reordered from the plain tensor (once per value) when it
    was not computed blocked."""
    ref = ctx.blocked_ref(i)
    if ref is not None:
        return ref
    value = ctx.node.inputs[i]
    src = ctx.contiguous(i)
    n, c, h, w = src.shape
    out = new_blocked(ctx.builder, src.shape, f"{value.name}.blocked",
                      ctx.builder.last_use.get(value, -1))
    ctx.emit("to_blocked", [out, src], [n, c, h * w])
    ctx.builder.blocked[value] = out
    return out


def blocked_output(ctx, logical, reuse: TensorRef | None = None,
                   avoid: tuple = ()) -> TensorRef:
    """The blocked buffer of output 0; takes over ``reuse`` (a blocked input that dies at this
    node, same size, not aliased by ``avoid``) when it can."""
    value = ctx.node.outputs[0]
    end = ctx.builder.last_use.get(value, -1)
    if (reuse is not None and reuse.buffer.space == R.SPACE_ARENA
            and reuse.buffer.pending_end <= ctx.index
            and reuse.nbytes == R.numel(physical_shape(logical)) * 4
            and all(a is None or a.buffer is not reuse.buffer for a in avoid)):
        reuse.buffer.pending_end = max(end, ctx.index)
        shape = physical_shape(logical)
        out = TensorRef(reuse.buffer, reuse.offset, shape, R.contiguous_strides(shape),
                        DType.float32)
        out.meta["logical"] = tuple(logical)
    else:
        out = new_blocked(ctx.builder, logical, f"{value.name}.blocked", end)
    ctx.builder.blocked[value] = out
    return out


def fold_pad(ctx, top: int, left: int) -> bool:
    """A zero pad of a blocked input read only by blocked convolutions: record the unpadded
    blocked source and its top / left padding (no copy; the convolutions read through it)."""
    src = ctx.blocked_ref(0)
    if src is None or not reads_blocked(ctx.builder, ctx.node, 0):
        return False
    marker = src.with_view(src.offset, src.shape, src.strides)
    marker.meta.update(logical=src.meta["logical"], pad_top_left=(top, left))
    end = ctx.builder.last_use.get(ctx.node.outputs[0], -1)
    src.buffer.pending_end = max(src.buffer.pending_end, end)
    ctx.builder.blocked[ctx.node.outputs[0]] = marker
    return True


def lower_conv(ctx, fused: bool, conv_params, activation) -> bool:
    """Lowers a convolution to "conv2d_blocked" when the layout rules choose it; False leaves
    it to the NCHW kernel."""
    builder, node = ctx.builder, ctx.node
    if not enabled(builder) or not conv_blockable(builder, node):
        return False
    x = ctx.blocked_ref(0)
    residual = ctx.blocked_ref(3) if fused and ctx.has(3) else None
    if x is None and residual is None and not wants_blocked_output(builder, node.outputs[0]):
        return False
    if x is not None:
        x_blocked, extra_pad = True, x.meta.get("pad_top_left", (0, 0))
        x_shape = x.meta["logical"]
    else:
        x_blocked, x = False, ctx.ref(0)
        padded_from = x.meta.get("padded_from")
        if padded_from is not None:  # a plain zero pad folded into this convolution
            x, extra_pad = padded_from, padded_from.meta["pad_top_left"]
        else:
            x, extra_pad = ctx.contiguous(0), (0, 0)
        x_shape = x.shape
    params = conv_params(ctx, x_shape, extra_pad)
    (n, c, h, w, co, kh, kw, sh, sw, ph, pw, dh, dw, groups, ho, wo) = params
    if fused and ctx.has(3) and residual is None:
        residual = blocked_input(ctx, 3)
    a = ctx.attrs
    code, p0, p1 = activation(ctx, a.get("activation", "none"), a.get("activation_params", ()))
    out = blocked_output(ctx, (n, co, ho, wo), reuse=residual, avoid=(x,))
    pad_h = (ho - 1) * sh + (kh - 1) * dh + 1
    pad_w = (wo - 1) * sw + (kw - 1) * dw + 1
    inside = ph == 0 and pw == 0 and pad_h <= h and pad_w <= w
    scratch = None
    # Taps outside the input read a zero-bordered copy, except in depthwise convolutions of a
    # blocked input, which skip them (the kernel needs the copy only to block a plain input).
    depthwise = groups > 1 and groups == c and co == c
    workspace = None
    if x_blocked and winograd_wanted(params):
        tiles = -(-ho // 2) * -(-wo // 2)
        floats = 16 * BLOCK * tiles * (-(-c // BLOCK) + -(-co // BLOCK))
        workspace = ctx.temp((floats,), DType.float32, "winograd")
    elif x_blocked and kh == kw == 1 and (sh > 1 or sw > 1) and ph == pw == 0 and groups == 1:
        # A strided 1x1 convolution reads a compact copy of the pixels it uses.
        scratch = ctx.temp((-(-c // BLOCK) * BLOCK * ho * wo,), DType.float32, "subsampled")
    elif (not x_blocked) if depthwise else not inside:
        # A dense convolution of a plain input keeps its copy plain ([C][Hp][Wp]).
        channels = c if not x_blocked and not depthwise else -(-c // BLOCK) * BLOCK
        scratch = ctx.temp((channels * pad_h * pad_w,), DType.float32, "padded")
    ctx.emit("conv2d_blocked",
             [out, x, ctx.ref(1), ctx.contiguous(2), residual, scratch, workspace],
             [*params, code, int(x_blocked)], [p0, p1])
    return True


def winograd_wanted(params) -> bool:
    """Whether a convolution of a blocked input runs Winograd F(2x2, 3x3) (csrc/rt_winograd.h):
    3x3, stride 1, no dilation, groups 1, padding 0..2, and (under "auto") enough channels
    that 2.25x fewer multiply-adds outweigh the transforms and the 16/9 larger weights."""
    (_n, c, _h, _w, co, kh, kw, sh, sw, ph, pw, dh, dw, groups, ho, wo) = params
    if not (groups == 1 and kh == kw == 3 and sh == sw == dh == dw == 1
            and 0 <= ph <= 2 and 0 <= pw <= 2 and ho > 0 and wo > 0):
        return False
    mode = os.environ.get(WINOGRAD_ENV, "auto")
    if mode in ("0", "1"):
        return mode == "1"
    return winograd_pays(c, co)


def winograd_pays(c: int, co: int) -> bool:
    """Measured on AVX-512 (benchmarks/bench_winograd.py, 2 threads): 1.3-1.8x from 32
    channels up at every image size down to 7x7; at 16 channels the layer is bound by memory
    and the two paths tie."""
    return c >= 32 and co >= 32


def lower_max_pool(ctx, kernel, stride, pad, dil) -> bool:
    x = ctx.blocked_ref(0)
    if x is None or len(kernel) != 2 or ctx.in_dtype(0) != DType.float32:
        return False
    n, c, h, w = x.meta["logical"]
    ho, wo = ctx.out_shape(0)[2:]
    out = blocked_output(ctx, (n, c, ho, wo))
    ctx.emit("max_pool2d_blocked", [out, x], [n, c, h, w, ho, wo, *kernel, *stride, *pad, *dil])
    return True


def lower_global_avg_pool(ctx) -> bool:
    x = ctx.blocked_ref(0)
    if x is None or any(s != 1 for s in ctx.attrs["output_size"]):
        return False
    n, c, h, w = x.meta["logical"]
    out = ctx.output(0)
    ctx.emit("global_avg_pool_blocked", [out, x], [n, c, h * w])
    return True
