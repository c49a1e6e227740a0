"""Converters of ONNX attention, onnxruntime contrib ops, losses and window generators."""

from __future__ import annotations

import math

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Value
from graphopt.ir.types import normalize_dim
from graphopt.limits import check_shape
from graphopt.onnx._common import MICROSOFT
from graphopt.onnx.importer import ImportContext, OnnxNode, onnx_converter
from graphopt.rewrite import Var, match_at, op


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
        if len(params) != 2:
            raise GraphoptError(f"fused activation Clip needs 2 parameters, got {params}")
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
    if mapped is not None and match_at(op.linear(Var("x"), Var("w"), Var("b", optional=True)),
                                       linear):
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
    if mapped is not None and match_at(op.conv(Var("x"), Var("w"), Var("b", optional=True)),
                                       conv) and (
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
_LOSS_REDUCTIONS = ("none", "sum", "mean")


def _loss_operands(node: OnnxNode, scores: Value, target: Value) -> None:
    if scores.type.rank < 2 or target.type.rank != scores.type.rank - 1:
        raise GraphoptError(f"scores {scores.type} must be (N, C, ...) and target "
                            f"{target.type} (N, ...)")
    if target.dtype not in (DType.int32, DType.int64):
        raise GraphoptError(f"target must be int32 or int64, got {target.dtype}")


@onnx_converter("NegativeLogLikelihoodLoss")
def _nll(ctx, node):
    _loss_operands(node, ctx.value(node, 0), ctx.value(node, 1))
    return ctx.emit("nll_loss", [ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)],
                    {"reduction": node.choice("reduction", "mean", _LOSS_REDUCTIONS),
                     "ignore_index": node.attr("ignore_index", None)})


@onnx_converter("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(ctx, node):
    scores = ctx.value(node, 0)
    _loss_operands(node, scores, ctx.value(node, 1))
    log_prob = ctx.emit("log_softmax", [scores], {"axis": 1})
    loss = ctx.emit("nll_loss", [log_prob, ctx.value(node, 1), ctx.value(node, 2)],
                    {"reduction": node.choice("reduction", "mean", _LOSS_REDUCTIONS),
                     "ignore_index": node.attr("ignore_index", None)})
    return [loss, log_prob]


# --------------------------------------------------------------------------------- windows
def _window(ctx: ImportContext, node: OnnxNode, fn) -> Value:
    from graphopt.onnx.import_elementwise import ir_dtype

    size = ctx.scalar_const(node, 0, "size")
    dtype = ir_dtype(node.attr("output_datatype", 1), "window dtype")
    if size < 0 or not dtype.is_floating:
        raise GraphoptError(f"a window of size {size} and type {dtype}: the size must be >= 0 "
                            "and the type floating-point")
    check_shape((size,), 8, f"{node.op_type} of size {size}")
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
    x, grid = ctx.value(node, 0), ctx.value(node, 1)
    mode = _GRID_MODES.get(node.attr("mode", "bilinear" if node.opset < 20 else "linear"))
    if mode is None or x.type.rank not in (4, 5) or (mode == "bicubic" and x.type.rank == 5):
        raise GraphoptError(f"GridSample mode {node.attr('mode', '')} on rank {x.type.rank}")
    if grid.type.rank != x.type.rank or grid.shape[-1] not in (x.type.rank - 2,):
        raise GraphoptError(f"grid {grid.type} must be (N, *out, {x.type.rank - 2}) for input "
                            f"{x.type}")
    return ctx.emit("grid_sample", [x, grid], {
        "mode": mode, "padding_mode": node.choice("padding_mode", "zeros",
                                                  ("zeros", "border", "reflection")),
        "align_corners": bool(node.attr("align_corners", 0))})


@onnx_converter("AffineGrid")
def _affine_grid(ctx, node):
    size = tuple(ctx.ints(node, 1, "size"))
    theta = ctx.value(node, 0)
    if len(size) not in (4, 5) or any(s < 0 for s in size) or theta.type.rank != 3:
        raise GraphoptError(f"AffineGrid needs theta (N, 2|3, 3|4) and a size (N, C, H, W[, D]) "
                            f"of sizes >= 0, got {theta.type} and {list(size)}")
    return ctx.emit("affine_grid", [theta], {
        "size": size, "align_corners": bool(node.attr("align_corners", 0))})


@onnx_converter("CenterCropPad")
def _center_crop_pad(ctx, node):
    x = ctx.value(node, 0)
    rank = x.type.rank
    target = ctx.ints(node, 1, "shape")
    axes = node.ints("axes", None)
    axes = list(range(rank)) if axes is None else node.axes(axes, rank)
    if len(target) != len(axes) or any(t < 0 for t in target):
        raise GraphoptError(f"shape {target} must give one size >= 0 per axis of {axes}")
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


@onnx_converter("RotaryEmbedding")
def _rotary_embedding(ctx, node):
    x, cos, sin, pos = (ctx.value(node, i) for i in range(4))
    rank = x.type.rank
    if rank not in (3, 4):
        raise GraphoptError(f"input {x.type} must be (B, H, S, D) or (B, S, H*D)")
    if rank == 4:  # (B, H, S, D) -> (B, S, H, D)
        xs = ctx.emit("permute", [x], {"perm": (0, 2, 1, 3)})
    else:
        b, s, hidden = x.shape
        heads = node.positive_int("num_heads")
        if isinstance(hidden, int) and hidden % heads:
            raise GraphoptError(f"num_heads {heads} does not divide the hidden size {hidden}")
        xs = ctx.emit("reshape", [x], {"shape": (b, s, heads, normalize_dim(hidden // heads))})
    head = xs.shape[3]
    dim = node.attr("rotary_embedding_dim", 0) or head
    if isinstance(dim, int) and (dim < 0 or dim % 2 or isinstance(head, int) and dim > head):
        raise GraphoptError(f"rotary_embedding_dim {dim} must be even and at most the head "
                            f"size {head}")
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
    if clip is not None and not (math.isfinite(clip) and clip > 0):
        raise GraphoptError(f"attribute 'clip' = {clip} must be finite and > 0")
    if node.attr("layout", 0) not in (0, 1):
        raise GraphoptError(f"attribute 'layout' = {node.attr('layout')} must be 0 or 1")
    outs = ctx.emit("onnx_rnn", inputs, {
        "cell": node.op_type, "hidden_size": node.positive_int("hidden_size"),
        "direction": node.choice("direction", "forward",
                                 ("forward", "reverse", "bidirectional")),
        "activations": tuple(node.attr("activations", [])),
        "activation_alpha": tuple(node.attr("activation_alpha", [])),
        "activation_beta": tuple(node.attr("activation_beta", [])),
        "clip": None if clip is None else float(clip),
        "input_forget": bool(node.attr("input_forget", 0)),
        "linear_before_reset": bool(node.attr("linear_before_reset", 0)),
        "layout": node.attr("layout", 0)})
    return list(outs)
