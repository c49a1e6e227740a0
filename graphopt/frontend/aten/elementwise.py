"""Converters for elementwise ATen ops (math, activations, comparisons, casts, where)."""

from __future__ import annotations

import torch

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Value
from graphopt.frontend.torch_export import converter

UNARY = {
    "abs": "abs", "neg": "neg", "exp": "exp", "log": "log", "log1p": "log1p", "expm1": "expm1",
    "sqrt": "sqrt", "rsqrt": "rsqrt", "reciprocal": "reciprocal", "sin": "sin", "cos": "cos",
    "tan": "tan", "atan": "atan", "tanh": "tanh", "sigmoid": "sigmoid", "erf": "erf",
    "relu": "relu", "silu": "silu", "mish": "mish", "hardswish": "hardswish",
    "hardsigmoid": "hardsigmoid", "floor": "floor", "ceil": "ceil", "round": "round",
    "sign": "sign", "bitwise_not": "bitwise_not", "logical_not": "logical_not", "isnan": "isnan",
}


def _unary(op):
    return lambda ctx, x: ctx.emit(op, [x])


for _aten, _op in UNARY.items():
    converter(f"aten.{_aten}.default")(_unary(_op))


@converter("aten.gelu.default")
def _gelu(ctx, x, approximate="none"):
    return ctx.emit("gelu", [x], {"approximate": approximate})


@converter("aten.hardtanh.default")
def _hardtanh(ctx, x, min_val=-1.0, max_val=1.0):
    return ctx.emit("clamp", [x], {"min": float(min_val), "max": float(max_val)})


@converter("aten.relu6.default")
def _relu6(ctx, x):
    return ctx.emit("clamp", [x], {"min": 0.0, "max": 6.0})


@converter("aten.clamp.default")
def _clamp(ctx, x, min=None, max=None):
    return ctx.emit("clamp", [x], {"min": min, "max": max})


@converter("aten.clamp_min.default")
def _clamp_min(ctx, x, min):
    return ctx.emit("clamp", [x], {"min": min})


@converter("aten.clamp_max.default")
def _clamp_max(ctx, x, max):
    return ctx.emit("clamp", [x], {"max": max})


@converter("aten.clamp.Tensor")
def _clamp_tensor(ctx, x, min=None, max=None):
    out = x
    if min is not None:
        out = ctx.emit("maximum", [out, ctx.as_value(min, x)])
    if max is not None:
        out = ctx.emit("minimum", [out, ctx.as_value(max, x)])
    return out


@converter("aten.leaky_relu.default")
def _leaky_relu(ctx, x, negative_slope=0.01):
    return ctx.emit("leaky_relu", [x], {"negative_slope": float(negative_slope)})


@converter("aten.elu.default")
def _elu(ctx, x, alpha=1.0, scale=1.0, input_scale=1.0):
    return ctx.emit("elu", [x], {"alpha": float(alpha), "scale": float(scale),
                                 "input_scale": float(input_scale)})


@converter("aten.selu.default")
def _selu(ctx, x):
    return ctx.emit("elu", [x], {"alpha": 1.6732632423543772, "scale": 1.0507009873554805})


@converter("aten.softplus.default")
def _softplus(ctx, x, beta=1.0, threshold=20.0):
    return ctx.emit("softplus", [x], {"beta": float(beta), "threshold": float(threshold)})


# -------------------------------------------------------------------------------- casts
def _cast(ctx, x, dtype):
    if dtype is None:
        return x
    dtype = DType.from_torch(dtype)
    return x if dtype == x.dtype else ctx.emit("cast", [x], {"dtype": dtype})


@converter("aten._to_copy.default", "aten.to.dtype_layout", "aten.to.device")
def _to_copy(ctx, x, *args, dtype=None, **kwargs):
    if dtype is None:
        dtype = next((a for a in args if isinstance(a, torch.dtype)), None)
    return _cast(ctx, x, dtype)


@converter("aten.to.dtype")
def _to_dtype(ctx, x, dtype, *args, **kwargs):
    return _cast(ctx, x, dtype)


@converter("aten.type_as.default")
def _type_as(ctx, x, other):
    return _cast(ctx, x, other.dtype.torch)


@converter("aten.clone.default", "aten.contiguous.default", "aten.alias.default",
           "aten.detach.default", "aten.lift_fresh_copy.default")
def _identity(ctx, x, *args, **kwargs):
    return x


@converter("aten.dropout.default", "aten.feature_dropout.default")
def _dropout(ctx, x, p, train):
    if not train or p == 0:
        return x
    from graphopt.errors import GraphoptError

    raise GraphoptError("training-mode dropout is random; call model.eval() before tracing")


# --------------------------------------------------------------------------------- binary
BINARY = {
    "mul": "mul", "maximum": "maximum", "minimum": "minimum", "remainder": "remainder",
    "eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge", "atan2": "atan2",
    "logical_and": "logical_and", "logical_or": "logical_or", "logical_xor": "logical_xor",
    "bitwise_and": "bitwise_and", "bitwise_or": "bitwise_or", "bitwise_xor": "bitwise_xor",
    "__and__": "bitwise_and", "__or__": "bitwise_or", "__xor__": "bitwise_xor",
    "pow": "pow", "div": "div",
}


def _binary(op):
    def convert(ctx, a, b):
        if not isinstance(a, Value):  # pow.Scalar(self: Scalar, exponent: Tensor)
            a = ctx.as_value(a, b)
        return ctx.emit(op, [a, ctx.as_value(b, a)])

    return convert


for _aten, _op in BINARY.items():
    for _overload in ("Tensor", "Scalar", "Tensor_Tensor", "Tensor_Scalar", "default", "Self"):
        converter(f"aten.{_aten}.{_overload}")(_binary(_op))


def _scaled(ctx, b, alpha, like):
    b = ctx.as_value(b, like)
    if alpha == 1:
        return b
    return ctx.emit("mul", [b, ctx.as_value(alpha, like)])


@converter("aten.add.Tensor", "aten.add.Scalar")
def _add(ctx, a, b, alpha=1):
    return ctx.emit("add", [ctx.as_value(a), _scaled(ctx, b, alpha, a)])


@converter("aten.sub.Tensor", "aten.sub.Scalar")
def _sub(ctx, a, b, alpha=1):
    return ctx.emit("sub", [ctx.as_value(a), _scaled(ctx, b, alpha, a)])


@converter("aten.rsub.Scalar", "aten.rsub.Tensor")
def _rsub(ctx, a, b, alpha=1):
    return ctx.emit("sub", [ctx.as_value(b, a), _scaled(ctx, a, alpha, a)])


@converter("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def _div_mode(ctx, a, b, rounding_mode=None):
    return ctx.emit("div", [a, ctx.as_value(b, a)], {"rounding_mode": rounding_mode})


@converter("aten.floor_divide.default", "aten.floor_divide.Scalar")
def _floor_divide(ctx, a, b):
    return ctx.emit("div", [a, ctx.as_value(b, a)], {"rounding_mode": "floor"})


@converter("aten.where.self")
def _where(ctx, cond, a, b):
    return ctx.emit("where", [cond, ctx.as_value(a, b if isinstance(b, Value) else None),
                              ctx.as_value(b, a if isinstance(a, Value) else None)])


@converter("aten.where.ScalarOther", "aten.where.ScalarSelf", "aten.where.Scalar")
def _where_scalar(ctx, cond, a, b):
    return _where(ctx, cond, a, b)


@converter("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def _masked_fill(ctx, x, mask, value):
    if isinstance(value, Value):
        fill = value if value.dtype == x.dtype else ctx.emit("cast", [value], {"dtype": x.dtype})
    else:
        fill = ctx.constant(value, x.dtype, name="fill")
    return ctx.emit("where", [mask, fill, x])


@converter("aten.max.other", "aten.min.other")
def _max_other(ctx, a, b):
    op = "maximum" if "max" in str(ctx.fx_node.target) else "minimum"
    return ctx.emit(op, [a, ctx.as_value(b, a)])
