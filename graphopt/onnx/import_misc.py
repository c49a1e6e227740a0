"""Converters of ONNX attention, onnxruntime contrib ops, losses and window generators."""

from __future__ import annotations

import math

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Value
from graphopt.ir.types import normalize_dim
from graphopt.onnx._common import MICROSOFT
from graphopt.onnx.importer import ImportContext, OnnxNode, onnx_converter


# --------------------------------------------------------------------- onnxruntime contrib
@onnx_converter("Gelu", domain=MICROSOFT)
def _ms_gelu(ctx, node):
    return ctx.emit("gelu", [ctx.value(node, 0)])


@onnx_converter("FastGelu", domain=MICROSOFT)
def _ms_fast_gelu(ctx, node):
    x = ctx.value(node, 0)
    if node.has_input(1):
        x = ctx.emit("add", [x, ctx.value(node, 1)])
    return ctx.emit("gelu", [x], {"approximate": "tanh"})


@onnx_converter("BiasGelu", domain=MICROSOFT)
def _ms_bias_gelu(ctx, node):
    return ctx.emit("gelu", [ctx.emit("add", [ctx.value(node, 0), ctx.value(node, 1)])])


@onnx_converter("FusedMatMul", domain=MICROSOFT)
def _ms_fused_matmul(ctx, node):
    if node.attr("transBatchA", 0) or node.attr("transBatchB", 0):
        raise GraphoptError("FusedMatMul with transBatchA/transBatchB")
    return ctx.emit("fused_matmul", [ctx.value(node, 0), ctx.value(node, 1), None, None], {
        "trans_a": bool(node.attr("transA", 0)), "trans_b": bool(node.attr("transB", 0)),
        "alpha": node.attr("alpha", 1.0)})


_FLT_MAX = 3.4028234663852886e38


def fused_activation(name: str, params: list[float]) -> tuple[str, tuple] | None:
    """onnxruntime's fused-op activation as the IR fused ops' (activation, params)."""
    simple = {"": "none", "Identity": "none", "Relu": "relu", "Tanh": "tanh",
              "Sigmoid": "sigmoid"}
    if name in simple:
        return simple[name], ()
    if name == "LeakyRelu":
        return "leaky_relu", (params[0] if params else 0.01,)
    if name == "Clip" and len(params) == 2:
        if tuple(params) == (0.0, 6.0):
            return "relu6", ()
        return "clamp", tuple(-math.inf if p <= -_FLT_MAX else math.inf if p >= _FLT_MAX
                              else p for p in params)
    if name == "HardSigmoid" and len(params) == 2 and math.isclose(params[0], 1 / 6) \
            and params[1] == 0.5:
        return "hardsigmoid", ()
    return None


def apply_activation(ctx: ImportContext, y: Value, name: str, params: list[float]) -> Value:
    """The activation of onnxruntime's fused ops (FusedConv, FusedGemm)."""
    if name in ("", "Identity"):
        return y
    simple = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid"}
    if name in simple:
        return ctx.emit(simple[name], [y])
    if name == "LeakyRelu":
        return ctx.emit("leaky_relu", [y], {"negative_slope": params[0] if params else 0.01})
    if name == "Clip":
        return ctx.emit("clamp", [y], {"min": params[0], "max": params[1]})
    if name == "HardSigmoid":
        alpha, beta = (params + [0.2, 0.5][len(params):])[:2]
        z = ctx.emit("add", [ctx.emit("mul", [y, ctx.scalar(alpha, y.dtype)]),
                             ctx.scalar(beta, y.dtype)])
        return ctx.emit("clamp", [z], {"min": 0.0, "max": 1.0})
    raise GraphoptError(f"fused activation '{name}'")


@onnx_converter("FusedGemm", domain=MICROSOFT)
def _ms_fused_gemm(ctx, node):
    from graphopt.onnx.import_nn import _gemm

    name = node.attr("activation", "")
    params = [node.attr(k) for k in ("activation_alpha", "activation_beta")
              if node.has_attr(k)]
    mapped = fused_activation(name, params)
    y = _gemm(ctx, node)
    linear = y.producer
    if mapped is not None and linear is not None and linear.op == "linear":
        operands = list(linear.inputs) + [None]
        ctx.graph.erase_node(linear)
        return ctx.emit("fused_linear", operands, {"activation": mapped[0],
                                                   "activation_params": mapped[1]})
    return apply_activation(ctx, y, name, params)


@onnx_converter("QuickGelu", domain=MICROSOFT)
def _ms_quick_gelu(ctx, node):
    x = ctx.value(node, 0)
    alpha = node.attr("alpha", 1.702)
    if alpha == 1.0:
        return ctx.emit("silu", [x])
    scaled = ctx.emit("mul", [x, ctx.scalar(alpha, x.dtype)])
    return ctx.emit("mul", [x, ctx.emit("sigmoid", [scaled])])


@onnx_converter("FusedConv", domain=MICROSOFT)
def _ms_fused_conv(ctx, node):
    from graphopt.onnx.import_nn import _conv

    name, params = node.attr("activation", ""), node.attr("activation_params", [])
    mapped = fused_activation(name, params)
    y = _conv(ctx, node)
    conv = y.producer
    residual = ctx.value(node, 3)
    if mapped is not None and conv is not None and conv.op == "conv" and (
            residual is None or residual.type.same_as(y.type)):
        # one fused_conv node: the conv's operands and attributes plus the epilogue
        operands = list(conv.inputs) + [residual]
        ctx.graph.erase_node(conv)
        return ctx.emit("fused_conv", operands, {**dict(conv.attrs), "activation": mapped[0],
                                                 "activation_params": mapped[1]})
    if residual is not None:
        y = ctx.emit("add", [y, residual])
    return apply_activation(ctx, y, name, params)


# ------------------------------------------------------------------------------------ loss
@onnx_converter("NegativeLogLikelihoodLoss")
def _nll(ctx, node):
    return ctx.emit("nll_loss", [ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)],
                    {"reduction": node.attr("reduction", "mean"),
                     "ignore_index": node.attr("ignore_index", None)})


@onnx_converter("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(ctx, node):
    scores = ctx.value(node, 0)
    log_prob = ctx.emit("log_softmax", [scores], {"axis": 1})
    loss = ctx.emit("nll_loss", [log_prob, ctx.value(node, 1), ctx.value(node, 2)],
                    {"reduction": node.attr("reduction", "mean"),
                     "ignore_index": node.attr("ignore_index", None)})
    return [loss, log_prob]


# --------------------------------------------------------------------------------- windows
def _window(ctx: ImportContext, node: OnnxNode, fn) -> Value:
    from graphopt.onnx.import_elementwise import ir_dtype

    size = int(ctx.const(node, 0, "size").reshape(()))
    dtype = ir_dtype(node.attr("output_datatype", 1), "window dtype")
    n1 = size if node.attr("periodic", 1) else size - 1
    n = np.arange(size, dtype=np.float64)
    return ctx.constant(fn(n, n1).astype(dtype.numpy), dtype, "window")


@onnx_converter("HannWindow")
def _hann(ctx, node):
    return _window(ctx, node, lambda n, n1: np.sin(n * math.pi / n1) ** 2)


@onnx_converter("HammingWindow")
def _hamming(ctx, node):
    alpha = 25 / 46
    return _window(ctx, node, lambda n, n1: alpha - (1 - alpha) * np.cos(2 * math.pi * n / n1))


@onnx_converter("BlackmanWindow")
def _blackman(ctx, node):
    return _window(ctx, node, lambda n, n1: 0.42 - 0.5 * np.cos(2 * math.pi * n / n1)
                   + 0.08 * np.cos(4 * math.pi * n / n1))


# ------------------------------------------------------------------------ vision and quant
_GRID_MODES = {"linear": "bilinear", "bilinear": "bilinear", "nearest": "nearest",
               "cubic": "bicubic", "bicubic": "bicubic"}


@onnx_converter("GridSample")
def _grid_sample(ctx, node):
    x = ctx.value(node, 0)
    mode = _GRID_MODES.get(node.attr("mode", "bilinear" if node.opset < 20 else "linear"))
    if mode is None or x.type.rank not in (4, 5) or (mode == "bicubic" and x.type.rank == 5):
        raise GraphoptError(f"GridSample mode {node.attr('mode', '')} on rank {x.type.rank}")
    return ctx.emit("grid_sample", [x, ctx.value(node, 1)], {
        "mode": mode, "padding_mode": node.attr("padding_mode", "zeros"),
        "align_corners": bool(node.attr("align_corners", 0))})


@onnx_converter("AffineGrid")
def _affine_grid(ctx, node):
    size = tuple(int(s) for s in ctx.const(node, 1, "size"))
    return ctx.emit("affine_grid", [ctx.value(node, 0)], {
        "size": size, "align_corners": bool(node.attr("align_corners", 0))})


@onnx_converter("CenterCropPad")
def _center_crop_pad(ctx, node):
    x = ctx.value(node, 0)
    rank = x.type.rank
    target = [int(s) for s in ctx.const(node, 1, "shape")]
    axes = node.attr("axes", None)
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    y = x
    for axis, want in zip(axes, target):
        size = y.shape[axis]
        if not isinstance(size, int):
            raise GraphoptError("CenterCropPad of a symbolic dim")
        if want < size:
            start = (size - want) // 2
            y = ctx.emit("slice", [y], {"axis": axis, "start": start, "end": start + want})
        elif want > size:
            lo = (want - size) // 2
            pads = [0] * (2 * (rank - axis))
            pads[-2], pads[-1] = lo, want - size - lo
            y = ctx.emit("pad", [y], {"pads": tuple(pads), "mode": "constant",
                                      "value": 0.0 if y.dtype.is_floating else 0})
    return y


def _per_axis(ctx: ImportContext, param: Value, x: Value, axis: int) -> Value:
    """A per-channel (1-D) quantization parameter shaped to broadcast along ``axis``."""
    if param.type.rank != 1 or x.type.rank == 0:
        return param
    shape = [1] * x.type.rank
    shape[axis % x.type.rank] = param.shape[0]
    return ctx.emit("reshape", [param], {"shape": tuple(shape)})


_QUANT_RANGE = {DType.uint8: (0, 255), DType.int8: (-128, 127), DType.int16: (-32768, 32767),
                DType.int32: (-2**31, 2**31 - 1)}


@onnx_converter("QuantizeLinear")
def _quantize_linear(ctx, node):
    from graphopt.onnx.import_elementwise import ir_dtype

    x, scale, zero = ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)
    if node.attr("block_size", 0):
        raise GraphoptError("blocked QuantizeLinear")
    if zero is not None:
        dtype = zero.dtype
    elif node.has_attr("output_dtype") and node.attr("output_dtype"):
        dtype = ir_dtype(node.attr("output_dtype"), "QuantizeLinear output_dtype")
    else:
        dtype = DType.uint8
    if dtype not in _QUANT_RANGE:
        raise GraphoptError(f"QuantizeLinear to {dtype}")
    axis = node.attr("axis", 1)
    compute = x.dtype if x.dtype in (DType.float32, DType.float64) else DType.float32
    y = ctx.emit("div", [ctx.cast(x, compute), ctx.cast(_per_axis(ctx, scale, x, axis),
                                                         compute)])
    y = ctx.emit("round", [y])
    if zero is not None:
        y = ctx.emit("add", [y, ctx.cast(_per_axis(ctx, zero, x, axis), compute)])
    lo, hi = _QUANT_RANGE[dtype]
    y = ctx.emit("clamp", [y], {"min": float(lo), "max": float(hi)})
    return ctx.cast(y, dtype)


@onnx_converter("DequantizeLinear")
def _dequantize_linear(ctx, node):
    x, scale, zero = ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)
    if node.attr("block_size", 0):
        raise GraphoptError("blocked DequantizeLinear")
    axis = node.attr("axis", 1)
    compute = DType.float32 if scale.dtype is not DType.float64 else DType.float64
    y = ctx.cast(x, compute)
    if zero is not None:
        y = ctx.emit("sub", [y, ctx.cast(_per_axis(ctx, zero, x, axis), compute)])
    y = ctx.emit("mul", [y, ctx.cast(_per_axis(ctx, scale, x, axis), compute)])
    return ctx.cast(y, scale.dtype)


@onnx_converter("DynamicQuantizeLinear")
def _dynamic_quantize_linear(ctx, node):
    x = ctx.value(node, 0)
    f = DType.float32
    zero = ctx.scalar(0.0, f)
    lo = ctx.emit("minimum", [ctx.emit("amin", [x]), zero])
    hi = ctx.emit("maximum", [ctx.emit("amax", [x]), zero])
    scale = ctx.emit("div", [ctx.emit("sub", [hi, lo]), ctx.scalar(255.0, f)])
    zp = ctx.emit("clamp", [ctx.emit("round", [ctx.emit("div", [ctx.emit("neg", [lo]), scale])])],
                  {"min": 0.0, "max": 255.0})
    y = ctx.emit("add", [ctx.emit("round", [ctx.emit("div", [x, scale])]), zp])
    y = ctx.emit("clamp", [y], {"min": 0.0, "max": 255.0})
    return [ctx.cast(y, DType.uint8), scale, ctx.cast(zp, DType.uint8)]


def _centered(ctx: ImportContext, x: Value, zero: Value | None, zero_axis: int | None = None):
    """x - zero_point in float64 (exact for 8-bit integer arithmetic)."""
    y = ctx.cast(x, DType.float64)
    if zero is None:
        return y
    z = ctx.cast(zero, DType.float64)
    if zero_axis is not None and zero.type.rank == 1 and zero.shape[0] != 1:
        shape = [1] * x.type.rank
        shape[zero_axis % x.type.rank] = zero.shape[0]
        z = ctx.emit("reshape", [z], {"shape": tuple(shape)})
    return ctx.emit("sub", [y, z])


@onnx_converter("MatMulInteger")
def _matmul_integer(ctx, node):
    a = _centered(ctx, ctx.value(node, 0), ctx.value(node, 2), zero_axis=-2)
    b = _centered(ctx, ctx.value(node, 1), ctx.value(node, 3))
    return ctx.cast(ctx.emit("matmul", [a, b]), DType.int32)


@onnx_converter("ConvInteger")
def _conv_integer(ctx, node):
    from graphopt.onnx.import_nn import _conv_params, _spatial_pads, pad_spatial

    x = _centered(ctx, ctx.value(node, 0), ctx.value(node, 2))
    w = _centered(ctx, ctx.value(node, 1), ctx.value(node, 3), zero_axis=0)
    kernel, strides, dilations = _conv_params(node, w, x)
    begins, ends = _spatial_pads(node, x, kernel, strides, dilations)
    x = pad_spatial(ctx, x, begins, ends, 0.0)
    y = ctx.emit("conv", [x, w, None], {"stride": tuple(strides), "padding": (0,) * len(kernel),
                                        "dilation": tuple(dilations),
                                        "groups": node.attr("group", 1)})
    return ctx.cast(y, DType.int32)


@onnx_converter("QLinearMatMul")
def _qlinear_matmul(ctx, node):
    a_scale, b_scale, y_scale, y_zero = (ctx.value(node, i) for i in (1, 4, 6, 7))
    a = _centered(ctx, ctx.value(node, 0), ctx.value(node, 2))
    b = _centered(ctx, ctx.value(node, 3), ctx.value(node, 5))
    acc = ctx.emit("matmul", [a, b])
    factor = ctx.emit("div", [ctx.emit("mul", [a_scale, b_scale]), y_scale])
    y = ctx.emit("mul", [acc, ctx.cast(factor, DType.float64)])
    dtype = y_zero.dtype if y_zero is not None else ctx.value(node, 0).dtype
    if y_zero is not None:
        y = ctx.emit("add", [y, ctx.cast(y_zero, DType.float64)])
    lo, hi = _QUANT_RANGE[dtype]
    y = ctx.emit("clamp", [ctx.emit("round", [y])], {"min": float(lo), "max": float(hi)})
    return ctx.cast(y, dtype)


@onnx_converter("RotaryEmbedding")
def _rotary_embedding(ctx, node):
    x, cos, sin, pos = (ctx.value(node, i) for i in range(4))
    rank = x.type.rank
    if rank == 4:  # (B, H, S, D) -> (B, S, H, D)
        xs = ctx.emit("permute", [x], {"perm": (0, 2, 1, 3)})
    else:
        b, s, hidden = x.shape
        heads = node.attr("num_heads")
        xs = ctx.emit("reshape", [x], {"shape": (b, s, heads, normalize_dim(hidden // heads))})
    head = xs.shape[3]
    dim = node.attr("rotary_embedding_dim", 0) or head
    if pos is not None:
        cos = ctx.emit("index", [cos, pos], {"axes": (0,)})
        sin = ctx.emit("index", [sin, pos], {"axes": (0,)})
    cos = ctx.emit("unsqueeze", [cos], {"axis": -2})
    sin = ctx.emit("unsqueeze", [sin], {"axis": -2})
    rot = xs if dim == head else ctx.emit("slice", [xs], {"axis": 3, "start": 0, "end": dim})
    interleaved = bool(node.attr("interleaved", 0))
    if interleaved:
        x1 = ctx.emit("slice", [rot], {"axis": 3, "start": 0, "end": dim, "step": 2})
        x2 = ctx.emit("slice", [rot], {"axis": 3, "start": 1, "end": dim, "step": 2})
    else:
        x1, x2 = ctx.emit("split", [rot], {"axis": 3, "sizes": (dim // 2, dim // 2)})
    real = ctx.emit("sub", [ctx.emit("mul", [cos, x1]), ctx.emit("mul", [sin, x2])])
    imag = ctx.emit("add", [ctx.emit("mul", [sin, x1]), ctx.emit("mul", [cos, x2])])
    if interleaved:
        pair = ctx.emit("concat", [ctx.emit("unsqueeze", [real], {"axis": -1}),
                                   ctx.emit("unsqueeze", [imag], {"axis": -1})], {"axis": -1})
        rotated = ctx.emit("reshape", [pair], {"shape": rot.shape})
    else:
        rotated = ctx.emit("concat", [real, imag], {"axis": 3})
    if dim != head:
        rest = ctx.emit("slice", [xs], {"axis": 3, "start": dim, "end": head})
        rotated = ctx.emit("concat", [rotated, rest], {"axis": 3})
    if rank == 4:
        return ctx.emit("permute", [rotated], {"perm": (0, 2, 1, 3)})
    return ctx.emit("reshape", [rotated], {"shape": x.shape})


@onnx_converter("RNN", "GRU", "LSTM")
def _recurrent(ctx, node):
    count = 8 if node.op_type == "LSTM" else 6
    inputs = [ctx.value(node, i) for i in range(count)] + [None] * (8 - count)
    clip = node.attr("clip", None)
    outs = ctx.emit("onnx_rnn", inputs, {
        "cell": node.op_type, "hidden_size": node.attr("hidden_size"),
        "direction": node.attr("direction", "forward"),
        "activations": tuple(node.attr("activations", [])),
        "activation_alpha": tuple(node.attr("activation_alpha", [])),
        "activation_beta": tuple(node.attr("activation_beta", [])),
        "clip": None if clip is None else float(clip),
        "input_forget": bool(node.attr("input_forget", 0)),
        "linear_before_reset": bool(node.attr("linear_before_reset", 0)),
        "layout": node.attr("layout", 0)})
    return list(outs)
