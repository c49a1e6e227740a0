"""ONNX lowerings of the data-movement ops: reshape, permute, expand, slice, concat, pad..."""

from __future__ import annotations

from graphopt.ir.dtypes import DType
from graphopt.onnx.conv_padding import absorbable_pad
from graphopt.onnx.export import INT64_MAX, INT64_MIN, OnnxLowering
from graphopt.ops._infer import norm_axes, norm_axis
from graphopt.ops.registry import register_lowering


def target_shape(ctx: OnnxLowering, dims) -> str:
    """A Reshape target: static, or with its one symbolic dim as -1, or computed at run time."""
    static = [isinstance(d, int) for d in dims]
    if all(static):
        return ctx.ints(dims)
    if static.count(False) == 1 and 0 not in dims:
        return ctx.ints([d if isinstance(d, int) else -1 for d in dims])
    return ctx.shape_tensor(dims)


def reshape(ctx: OnnxLowering, x: str, dims, out: str | None = None) -> str:
    # ONNX reads a 0 in the target as "copy that dim" unless allowzero is set.
    allowzero = 1 if any(isinstance(d, int) and d == 0 for d in dims) else None
    return ctx.op("Reshape", [x, target_shape(ctx, dims)], out=out, allowzero=allowzero)


@register_lowering("onnx", "reshape")
def _reshape(ctx, node):
    reshape(ctx, ctx.input(node, 0), node.outputs[0].shape, out=ctx.output(node))


@register_lowering("onnx", "permute")
def _permute(ctx, node):
    ctx.op("Transpose", [ctx.input(node, 0)], out=ctx.output(node),
           perm=[int(p) for p in node.attrs["perm"]])


@register_lowering("onnx", "expand")
def _expand(ctx, node):
    ctx.op("Expand", [ctx.input(node, 0), ctx.shape_tensor(node.outputs[0].shape)],
           out=ctx.output(node))


def squeeze(ctx: OnnxLowering, x: str, axes, out: str | None = None) -> str:
    if ctx.opset >= 13:
        return ctx.op("Squeeze", [x, ctx.ints(axes)], out=out)
    return ctx.op("Squeeze", [x], out=out, axes=list(axes))


def unsqueeze(ctx: OnnxLowering, x: str, axes, out: str | None = None) -> str:
    if ctx.opset >= 13:
        return ctx.op("Unsqueeze", [x, ctx.ints(axes)], out=out)
    return ctx.op("Unsqueeze", [x], out=out, axes=list(axes))


@register_lowering("onnx", "squeeze")
def _squeeze(ctx, node):
    shape = node.inputs[0].shape
    axes = [a for a in norm_axes(node.attrs["axes"], len(shape)) if shape[a] == 1]
    if not axes:  # torch.squeeze ignores dims that are not 1
        ctx.alias(node, ctx.input(node, 0))
    else:
        squeeze(ctx, ctx.input(node, 0), axes, out=ctx.output(node))


@register_lowering("onnx", "unsqueeze")
def _unsqueeze(ctx, node):
    axis = norm_axis(node.attrs["axis"], node.inputs[0].type.rank + 1)
    unsqueeze(ctx, ctx.input(node, 0), [axis], out=ctx.output(node))


def _bound(ctx: OnnxLowering, value) -> str:
    if isinstance(value, int):
        return ctx.ints([min(max(value, INT64_MIN), INT64_MAX)])
    return ctx.dim_tensor(value)


def slice_(ctx: OnnxLowering, x: str, axis: int, start, end, step=1, out: str | None = None):
    if ctx.opset < 10:
        return ctx.op("Slice", [x], out=out, axes=[axis], starts=[start], ends=[end])
    return ctx.op("Slice", [x, _bound(ctx, start), _bound(ctx, end), ctx.ints([axis]),
                            ctx.ints([step])], out=out)


@register_lowering("onnx", "slice")
def _slice(ctx, node):
    a = node.attrs
    axis = norm_axis(a["axis"], node.inputs[0].type.rank)
    slice_(ctx, ctx.input(node, 0), axis, a["start"], a["end"], a["step"], out=ctx.output(node))


@register_lowering("onnx", "select")
def _select(ctx, node):
    axis = norm_axis(node.attrs["axis"], node.inputs[0].type.rank)
    index = ctx.scalar(node.attrs["index"], DType.int64)
    ctx.op("Gather", [ctx.input(node, 0), index], out=ctx.output(node), axis=axis)


@register_lowering("onnx", "concat")
def _concat(ctx, node):
    axis = norm_axis(node.attrs["axis"], node.inputs[0].type.rank)
    ctx.op("Concat", [ctx.input(node, i) for i in range(len(node.inputs))],
           out=ctx.output(node), axis=axis)


@register_lowering("onnx", "split")
def _split(ctx, node):
    axis = norm_axis(node.attrs["axis"], node.inputs[0].type.rank)
    outs = [ctx.output(node, i) for i in range(len(node.outputs))]
    sizes = node.attrs["sizes"]
    if ctx.opset >= 13:
        ctx.op("Split", [ctx.input(node, 0), ctx.shape_tensor(sizes)], outs=outs, axis=axis)
    else:
        ctx.op("Split", [ctx.input(node, 0)], outs=outs, axis=axis, split=[int(s) for s in sizes])


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
              "circular": "wrap"}


def onnx_pads(torch_pads, rank: int) -> list[int]:
    """torch's (last_lo, last_hi, prev_lo, ...) as ONNX's (all begins..., all ends...)."""
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(torch_pads) // 2):
        axis = rank - 1 - i
        begins[axis], ends[axis] = int(torch_pads[2 * i]), int(torch_pads[2 * i + 1])
    return begins + ends


@register_lowering("onnx", "pad")
def _pad(ctx, node):
    x = node.inputs[0]
    if absorbable_pad(node):  # every user is a conv that takes this padding over
        ctx.alias(node, ctx.input(node, 0))
        return
    mode = node.attrs["mode"]
    if mode not in _PAD_MODES or (mode == "circular" and ctx.opset < 19):
        raise ctx.fail(f"pad mode '{mode}' has no ONNX equivalent at opset {ctx.opset}")
    pads = ctx.ints(onnx_pads(node.attrs["pads"], x.type.rank))
    args = [ctx.input(node, 0), pads]
    if mode == "constant":
        args.append(ctx.scalar(node.attrs["value"], x.dtype))
    ctx.op("Pad", args, out=ctx.output(node), mode=_PAD_MODES[mode])


@register_lowering("onnx", "flip")
def _flip(ctx, node):
    rank = node.inputs[0].type.rank
    axes = list(norm_axes(node.attrs["axes"], rank))
    if not axes:
        ctx.alias(node, ctx.input(node, 0))
        return
    n = len(axes)
    ctx.op("Slice", [ctx.input(node, 0), ctx.ints([-1] * n), ctx.ints([INT64_MIN] * n),
                     ctx.ints(axes), ctx.ints([-1] * n)], out=ctx.output(node))


@register_lowering("onnx", "tile")
def _tile(ctx, node):
    reps = [int(r) for r in node.attrs["repeats"]]
    x = ctx.input(node, 0)
    extra = len(reps) - node.inputs[0].type.rank
    if extra > 0:
        x = unsqueeze(ctx, x, list(range(extra)))
    ctx.op("Tile", [x, ctx.ints(reps)], out=ctx.output(node))


@register_lowering("onnx", "roll")
def _roll(ctx, node):
    x_type = node.inputs[0].type
    shifts, axes = node.attrs["shifts"], node.attrs["axes"]
    x = ctx.input(node, 0)
    shape = list(x_type.shape)
    flat = not axes
    if flat:  # torch.roll without dims rolls the flattened tensor
        numel = x_type.numel
        x = reshape(ctx, x, [numel])
        shape, axes = [numel], (0,)
    for shift, axis in zip(shifts, axes):
        axis = norm_axis(axis, len(shape))
        size = shape[axis]
        if not isinstance(size, int):
            raise ctx.fail(f"roll along symbolic dim {size} is not supported")
        s = int(shift) % size if size else 0
        if s:
            tail = slice_(ctx, x, axis, size - s, size)
            head = slice_(ctx, x, axis, 0, size - s)
            x = ctx.op("Concat", [tail, head], axis=axis)
    if flat:
        reshape(ctx, x, x_type.shape, out=ctx.output(node))
    else:
        ctx.finish(node, x)
