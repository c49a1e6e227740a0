"""ONNX lowerings of the ops in ``graphopt.ops.onnx_extra`` (mostly one ONNX node each)."""

from __future__ import annotations

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Node
from graphopt.onnx._common import TO_ONNX_DTYPE
from graphopt.onnx.export import OnnxLowering
from graphopt.onnx.lower_reduce import reduce
from graphopt.ops.registry import register_lowering


def _direct(ir_op: str, onnx_op: str, float_input: bool = False, **fixed) -> None:
    """``ir_op`` is ``onnx_op`` on the same operands; attrs are passed as-is (or ``fixed``)."""

    @register_lowering("onnx", ir_op)
    def lower(ctx: OnnxLowering, node: Node) -> None:
        if float_input:
            args = [ctx.input_as(node, 0, node.outputs[0].dtype)]
        else:
            args = [ctx.input(node, i) for i in range(len(node.inputs))]
        while args and args[-1] == "":
            args.pop()
        attrs = {k: _attr(v) for k, v in node.attrs.items()}
        attrs.update(fixed)
        outs = [ctx.output(node, i) for i in range(len(node.outputs))]
        ctx.op(onnx_op, args, outs=outs, **attrs)


def _attr(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, tuple):
        return list(v)
    return v


for _ir in ("acos", "asin", "acosh", "asinh", "atanh", "cosh", "sinh"):
    _direct(_ir, _ir.capitalize(), float_input=True)
_direct("fmod", "Mod", fmod=1)


@register_lowering("onnx", "bitshift")
def _bitshift(ctx, node):
    if node.inputs[0].dtype not in (DType.uint8, DType.uint16, DType.uint32, DType.uint64):
        raise ctx.fail(f"ONNX BitShift is defined for unsigned types, not "
                       f"{node.inputs[0].dtype}")
    ctx.op("BitShift", [ctx.input(node, 0), ctx.input(node, 1)], out=ctx.output(node),
           direction=node.attrs["direction"])


_direct("prelu", "PRelu")
_direct("thresholded_relu", "ThresholdedRelu")
_direct("shrink", "Shrink")
_direct("hardmax", "Hardmax")
_direct("lrn", "LRN")
_direct("gather_elements", "GatherElements")
_direct("gather_nd", "GatherND")
_direct("einsum", "Einsum")
_direct("det", "Det")


@register_lowering("onnx", "shape")
def _shape(ctx, node):
    start, end = node.attrs["start"], node.attrs["end"]
    if ctx.opset >= 15:
        ctx.op("Shape", [ctx.input(node, 0)], out=ctx.output(node), start=start or None, end=end)
        return
    s = ctx.op("Shape", [ctx.input(node, 0)])
    rank = node.inputs[0].type.rank
    ctx.op("Slice", [s, ctx.ints([start]), ctx.ints([rank if end is None else end])],
           out=ctx.output(node))


@register_lowering("onnx", "isinf")
def _isinf(ctx, node):
    ctx.op("IsInf", [ctx.input(node, 0)], out=ctx.output(node),
           detect_positive=int(node.attrs["detect_positive"]),
           detect_negative=int(node.attrs["detect_negative"]))


def _scatter(onnx_op: str):
    def lower(ctx: OnnxLowering, node: Node) -> None:
        reduction = node.attrs["reduction"]
        attrs = {"reduction": reduction} if reduction != "none" else {}
        if "axis" in node.attrs:
            attrs["axis"] = node.attrs["axis"]
        ctx.op(onnx_op, [ctx.input(node, i) for i in range(3)], out=ctx.output(node), **attrs)

    return lower


register_lowering("onnx", "scatter_elements")(_scatter("ScatterElements"))
register_lowering("onnx", "scatter_nd")(_scatter("ScatterND"))


@register_lowering("onnx", "topk")
def _topk(ctx, node):
    a = node.attrs
    ctx.op("TopK", [ctx.input(node, 0), ctx.ints([a["k"]])],
           outs=[ctx.output(node, 0), ctx.output(node, 1)], axis=a["axis"],
           largest=int(a["largest"]), sorted=int(a["sorted"]))


@register_lowering("onnx", "cumprod")
def _cumprod(ctx, node):
    if ctx.opset < 26:
        raise ctx.fail(f"CumProd needs opset 26 (the model is opset {ctx.opset})")
    ctx.op("CumProd", [ctx.input(node, 0), ctx.scalar(node.attrs["axis"], DType.int64)],
           out=ctx.output(node))


@register_lowering("onnx", "rms_norm")
def _rms_norm(ctx, node):
    x_type = node.inputs[0].type
    axis = node.attrs["axis"] % x_type.rank
    eps = float(node.attrs["eps"])
    x = ctx.input(node, 0)
    if ctx.opset >= 23:
        scale = ctx.input(node, 1)
        if not scale:
            scale = ctx.scalar(1.0, x_type.dtype)
        ctx.op("RMSNormalization", [x, scale], out=ctx.output(node), axis=axis, epsilon=eps)
        return
    dtype = x_type.dtype
    ms = reduce(ctx, "ReduceMean", ctx.op("Mul", [x, x]), list(range(axis, x_type.rank)), True)
    inv = ctx.op("Reciprocal", [ctx.op("Sqrt", [ctx.op("Add", [ms, ctx.scalar(eps, dtype)])])])
    if node.inputs[1] is None:
        ctx.op("Mul", [x, inv], out=ctx.output(node))
    else:
        ctx.op("Mul", [ctx.op("Mul", [x, inv]), ctx.input(node, 1)], out=ctx.output(node))


_GRID_MODES_20 = {"bilinear": "linear", "nearest": "nearest", "bicubic": "cubic"}


@register_lowering("onnx", "grid_sample")
def _grid_sample(ctx, node):
    a = node.attrs
    mode = _GRID_MODES_20[a["mode"]] if ctx.opset >= 20 else a["mode"]
    ctx.op("GridSample", [ctx.input(node, 0), ctx.input(node, 1)], out=ctx.output(node),
           mode=mode, padding_mode=a["padding_mode"], align_corners=int(a["align_corners"]))


@register_lowering("onnx", "nll_loss")
def _nll_loss(ctx, node):
    args = [ctx.input(node, 0), ctx.input(node, 1)]
    if node.inputs[2] is not None:
        args.append(ctx.input(node, 2))
    ctx.op("NegativeLogLikelihoodLoss", args, out=ctx.output(node),
           reduction=node.attrs["reduction"], ignore_index=node.attrs["ignore_index"])


@register_lowering("onnx", "affine_grid")
def _affine_grid(ctx, node):
    if ctx.opset < 20:
        raise ctx.fail(f"AffineGrid needs opset 20 (the model is opset {ctx.opset})")
    ctx.op("AffineGrid", [ctx.input(node, 0), ctx.ints(node.attrs["size"])],
           out=ctx.output(node), align_corners=int(node.attrs["align_corners"]))


@register_lowering("onnx", "onnx_resize")
def _onnx_resize(ctx, node):
    import numpy as np

    a = node.attrs
    ctm = a["coordinate_transformation_mode"]
    if a["antialias"] and ctx.opset < 18 or ctm == "half_pixel_symmetric" and ctx.opset < 19:
        raise ctx.fail(f"Resize with these attributes needs a newer opset than {ctx.opset}")
    roi = ctx.const(np.array(a["roi"]), DType.float32, "roi") if a["roi"] is not None else ""
    attrs = dict(mode=a["mode"], coordinate_transformation_mode=ctm,
                 nearest_mode=a["nearest_mode"], cubic_coeff_a=float(a["cubic_coeff_a"]),
                 exclude_outside=int(a["exclude_outside"]),
                 extrapolation_value=float(a["extrapolation_value"]))
    if a["antialias"]:
        attrs["antialias"] = 1
    if a["keep_aspect_ratio_policy"] != "stretch":
        attrs["keep_aspect_ratio_policy"] = a["keep_aspect_ratio_policy"]
        attrs["axes"] = list(a["axes"])
        args = [ctx.input(node, 0), roi, "", ctx.ints(a["requested_sizes"])]
    elif a["by_sizes"]:
        args = [ctx.input(node, 0), roi, "", ctx.ints(a["sizes"])]
    else:
        args = [ctx.input(node, 0), roi, ctx.const(np.array(a["scales"]), DType.float32,
                                                   "scales")]
    ctx.op("Resize", args, out=ctx.output(node), **attrs)


@register_lowering("onnx", "onnx_rnn")
def _onnx_rnn(ctx, node):
    a = node.attrs
    cell = a["cell"]
    count = 8 if cell == "LSTM" else 6
    args = [ctx.input(node, i) for i in range(count)]
    while args and args[-1] == "":
        args.pop()
    batch_first = a["layout"] == 1
    if batch_first:  # onnxruntime only implements layout 0: transpose around the node
        for i in (0, 5, 6):
            if i < len(args) and args[i]:
                args[i] = ctx.op("Transpose", [args[i]], perm=[1, 0, 2])
    attrs = {"hidden_size": a["hidden_size"], "direction": a["direction"], "clip": a["clip"]}
    if a["activations"]:
        attrs["activations"] = list(a["activations"])
    if a["activation_alpha"]:
        attrs["activation_alpha"] = [float(v) for v in a["activation_alpha"]]
    if a["activation_beta"]:
        attrs["activation_beta"] = [float(v) for v in a["activation_beta"]]
    if cell == "LSTM" and a["input_forget"]:
        attrs["input_forget"] = 1
    if cell == "GRU" and a["linear_before_reset"]:
        attrs["linear_before_reset"] = 1
    outs = [ctx.output(node, i) for i in range(len(node.outputs))]
    if not batch_first:
        ctx.op(cell, args, outs=outs, **attrs)
        return
    temps = ctx.op(cell, args, outs=len(outs), **attrs)
    ctx.op("Transpose", [temps[0]], out=outs[0], perm=[2, 0, 1, 3])
    for temp, out in zip(temps[1:], outs[1:]):
        ctx.op("Transpose", [temp], out=out, perm=[1, 0, 2])


@register_lowering("onnx", "bitcast")
def _bitcast(ctx, node):
    if ctx.opset < 26:
        raise ctx.fail(f"ONNX BitCast needs opset 26 or later; this export targets opset "
                       f"{ctx.opset} (pass opset=26 to to_onnx)")
    ctx.op("BitCast", [ctx.input(node, 0)], out=ctx.output(node),
           to=TO_ONNX_DTYPE[node.attrs["dtype"]])
