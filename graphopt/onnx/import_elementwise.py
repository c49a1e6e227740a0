"""Converters of the ONNX elementwise ops: unary math, activations, arithmetic, logic, Cast."""

from __future__ import annotations

import math

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.dtypes import DType
from graphopt.onnx._common import FROM_ONNX_DTYPE, onnx_dtype_name
from graphopt.onnx.importer import ImportContext, OnnxNode, onnx_converter

_UNARY = {
    "Abs": "abs", "Neg": "neg", "Relu": "relu", "Floor": "floor", "Ceil": "ceil",
    "Round": "round", "Sign": "sign", "Exp": "exp", "Log": "log", "Sqrt": "sqrt",
    "Reciprocal": "reciprocal", "Sin": "sin", "Cos": "cos", "Tan": "tan", "Atan": "atan",
    "Asin": "asin", "Acos": "acos", "Sinh": "sinh", "Cosh": "cosh", "Asinh": "asinh",
    "Acosh": "acosh", "Atanh": "atanh", "Tanh": "tanh", "Sigmoid": "sigmoid", "Erf": "erf",
    "Softsign": "softsign", "IsNaN": "isnan", "Not": "logical_not", "BitwiseNot": "bitwise_not",
    "Mish": "mish", "HardSwish": "hardswish", "Softplus": "softplus",
}


def _declare_unary(onnx_op: str, ir_op: str) -> None:
    @onnx_converter(onnx_op)
    def convert(ctx: ImportContext, node: OnnxNode):
        x = ctx.value(node, 0)
        y = ctx.emit(ir_op, [x])
        # IR float math promotes ints to float32 (torch); ONNX keeps the input type.
        return ctx.cast(y, x.dtype) if y.dtype != x.dtype and ir_op != "isnan" and \
            ir_op != "logical_not" else y


for _onnx, _ir in _UNARY.items():
    _declare_unary(_onnx, _ir)


@onnx_converter("Identity", "Dropout")
def _identity(ctx, node):
    x = ctx.value(node, 0)
    if node.op_type == "Dropout" and node.has_input(2):
        training = ctx.maybe_const(node, 2)
        ratio = ctx.maybe_const(node, 1) if node.has_input(1) else np.array(0.5)
        if training is not None and training.size != 1 or ratio is not None and ratio.size != 1:
            raise GraphoptError("Dropout's ratio and training_mode must be scalars")
        if training is None or (bool(training.reshape(-1)[0]) and (
                ratio is None or float(ratio.reshape(-1)[0]) != 0.0)):
            raise GraphoptError("Dropout in training mode is random")
    mask = None
    if len(node.outputs) > 1 and node.outputs[1]:
        mask = ctx.emit("full", [], {"shape": x.shape, "value": True, "dtype": DType.bool})
    return [x, mask]


@onnx_converter("LeakyRelu")
def _leaky_relu(ctx, node):
    return ctx.emit("leaky_relu", [ctx.value(node, 0)],
                    {"negative_slope": node.attr("alpha", 0.01)})


@onnx_converter("Elu")
def _elu(ctx, node):
    return ctx.emit("elu", [ctx.value(node, 0)], {"alpha": node.attr("alpha", 1.0)})


@onnx_converter("Selu")
def _selu(ctx, node):
    return ctx.emit("elu", [ctx.value(node, 0)], {
        "alpha": node.attr("alpha", 1.67326319217681884765625),
        "scale": node.attr("gamma", 1.05070102214813232421875)})


@onnx_converter("Celu")
def _celu(ctx, node):
    alpha = node.attr("alpha", 1.0)  # max(0,x) + min(0, alpha*(exp(x/alpha)-1))
    if alpha == 0.0 or not math.isfinite(alpha):
        raise GraphoptError(f"attribute 'alpha' = {alpha} must be finite and non-zero")
    return ctx.emit("elu", [ctx.value(node, 0)], {"alpha": alpha, "input_scale": 1.0 / alpha})


@onnx_converter("HardSigmoid")
def _hard_sigmoid(ctx, node):
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    x = ctx.value(node, 0)
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5:
        return ctx.emit("hardsigmoid", [x])
    y = ctx.emit("add", [ctx.emit("mul", [x, ctx.scalar(alpha, x.dtype)]),
                         ctx.scalar(beta, x.dtype)])
    return ctx.emit("clamp", [y], {"min": 0.0, "max": 1.0})


@onnx_converter("ThresholdedRelu")
def _thresholded_relu(ctx, node):
    return ctx.emit("thresholded_relu", [ctx.value(node, 0)], {"alpha": node.attr("alpha", 1.0)})


@onnx_converter("Shrink")
def _shrink(ctx, node):
    return ctx.emit("shrink", [ctx.value(node, 0)], {"bias": node.attr("bias", 0.0),
                                                     "lambd": node.attr("lambd", 0.5)})


@onnx_converter("PRelu")
def _prelu(ctx, node):
    return ctx.emit("prelu", [ctx.value(node, 0), ctx.value(node, 1)])


@onnx_converter("Gelu")
def _gelu(ctx, node):
    return ctx.emit("gelu", [ctx.value(node, 0)], {
        "approximate": node.choice("approximate", "none", ("none", "tanh"))})


@onnx_converter("Swish")
def _swish(ctx, node):
    x = ctx.value(node, 0)
    alpha = node.attr("alpha", 1.0)
    if alpha == 1.0:
        return ctx.emit("silu", [x])
    scaled = ctx.emit("mul", [x, ctx.scalar(alpha, x.dtype)])
    return ctx.emit("mul", [x, ctx.emit("sigmoid", [scaled])])


@onnx_converter("IsInf")
def _isinf(ctx, node):
    return ctx.emit("isinf", [ctx.value(node, 0)], {
        "detect_positive": bool(node.attr("detect_positive", 1)),
        "detect_negative": bool(node.attr("detect_negative", 1))})


def _bound(ctx: ImportContext, node: OnnxNode, i: int, attr: str):
    """A Clip bound: (python number, None) when static, else (None, value)."""
    if node.opset < 11:
        return (node.attr(attr, None), None)
    if not node.has_input(i):
        return (None, None)
    known = ctx.maybe_const(node, i)
    if known is not None and known.size == 1:
        v = known.reshape(()).item()
        return (v, None)
    return (None, ctx.value(node, i))


@onnx_converter("Clip")
def _clip(ctx, node):
    x = ctx.value(node, 0)
    (lo, lo_v), (hi, hi_v) = _bound(ctx, node, 1, "min"), _bound(ctx, node, 2, "max")
    if lo_v is None and hi_v is None:
        if lo is None and hi is None:
            return x
        return ctx.emit("clamp", [x], {"min": lo, "max": hi})
    y = x
    if lo is not None or lo_v is not None:
        y = ctx.emit("maximum", [y, lo_v if lo_v is not None else ctx.scalar(lo, x.dtype)])
    if hi is not None or hi_v is not None:
        y = ctx.emit("minimum", [y, hi_v if hi_v is not None else ctx.scalar(hi, x.dtype)])
    return y


# ------------------------------------------------------------------------------------ binary
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Equal": "eq", "Less": "lt",
           "LessOrEqual": "le", "Greater": "gt", "GreaterOrEqual": "ge", "And": "logical_and",
           "Or": "logical_or", "Xor": "logical_xor", "BitwiseAnd": "bitwise_and",
           "BitwiseOr": "bitwise_or", "BitwiseXor": "bitwise_xor"}


def _declare_binary(onnx_op: str, ir_op: str) -> None:
    @onnx_converter(onnx_op)
    def convert(ctx: ImportContext, node: OnnxNode):
        return ctx.emit(ir_op, [ctx.value(node, 0), ctx.value(node, 1)])


for _onnx, _ir in _BINARY.items():
    _declare_binary(_onnx, _ir)


@onnx_converter("Div")
def _div(ctx, node):
    a, b = ctx.value(node, 0), ctx.value(node, 1)
    if a.dtype.is_floating:
        return ctx.emit("div", [a, b])
    return ctx.emit("div", [a, b], {"rounding_mode": "trunc"})  # integer Div truncates


@onnx_converter("Pow")
def _pow(ctx, node):
    a, b = ctx.value(node, 0), ctx.value(node, 1)
    if not a.dtype.is_floating and b.dtype.is_floating:
        y = ctx.emit("pow", [ctx.cast(a, b.dtype), b])
        return ctx.cast(y, a.dtype)
    return ctx.cast(ctx.emit("pow", [a, b]), a.dtype)


@onnx_converter("Mod")
def _mod(ctx, node):
    a, b = ctx.value(node, 0), ctx.value(node, 1)
    if node.attr("fmod", 0):
        return ctx.emit("fmod", [a, b])
    return ctx.emit("remainder", [a, b])


@onnx_converter("BitShift")
def _bitshift(ctx, node):
    direction = node.attr("direction")
    if direction not in ("LEFT", "RIGHT"):
        raise GraphoptError(f"attribute 'direction' = {direction!r} is not LEFT or RIGHT")
    return ctx.emit("bitshift", [ctx.value(node, 0), ctx.value(node, 1)],
                    {"direction": direction})


def _fold_variadic(ctx: ImportContext, node: OnnxNode, ir_op: str):
    values = ctx.values(node)
    out = values[0]
    for v in values[1:]:
        out = ctx.emit(ir_op, [out, v])
    return out


@onnx_converter("Max")
def _max(ctx, node):
    return _fold_variadic(ctx, node, "maximum")


@onnx_converter("Min")
def _min(ctx, node):
    return _fold_variadic(ctx, node, "minimum")


@onnx_converter("Sum")
def _sum(ctx, node):
    return _fold_variadic(ctx, node, "add")


@onnx_converter("Mean")
def _mean(ctx, node):
    total = _fold_variadic(ctx, node, "add")
    n = len(node.inputs)
    return total if n == 1 else ctx.emit("div", [total, ctx.scalar(float(n), total.dtype)])


@onnx_converter("Where")
def _where(ctx, node):
    return ctx.emit("where", [ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)])


def ir_dtype(code: int, what: str) -> DType:
    dtype = FROM_ONNX_DTYPE.get(code)
    if dtype is None:
        raise GraphoptError(f"{what} is {onnx_dtype_name(code)}, which graphopt does not support")
    return dtype


@onnx_converter("Cast")
def _cast(ctx, node):
    dtype = ir_dtype(node.attr("to"), "the Cast target type")
    return ctx.cast(ctx.value(node, 0), dtype)


@onnx_converter("CastLike")
def _cast_like(ctx, node):
    return ctx.cast(ctx.value(node, 0), ctx.value(node, 1).dtype)


@onnx_converter("BitCast")
def _bitcast(ctx, node):
    x = ctx.value(node, 0)
    dtype = ir_dtype(node.attr("to"), "the BitCast target type")
    return x if dtype is x.dtype else ctx.emit("bitcast", [x], {"dtype": dtype})
