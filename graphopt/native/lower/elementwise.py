"""Elementwise ops -> "unary", "binary", "where", "cast" (csrc/rt_elementwise.cpp, rt_binary.cpp).

Operands are converted to one compute dtype first (torch promotion, already resolved by type
inference: the result dtype for arithmetic, the promoted input dtype for comparisons); constant
operands are converted at plan time. Binary ops and where read broadcast and strided views in
place; their output may take over an operand's buffer when that operand dies here.
"""

from __future__ import annotations

import math

from graphopt.ir.dtypes import DType
from graphopt.native import refs as R
from graphopt.native.codes import (
    BINARY_CODES,
    FLOAT_ONLY_BINARY,
    INT_ONLY_BINARY,
    INT_UNARY,
    PREDICATES,
    UNARY_CODES,
    UNARY_PREDICATES,
)
from graphopt.native.lower._common import dtype_code
from graphopt.ops._infer import promote
from graphopt.ops.registry import register_lowering

_FLOAT_DTYPES = (DType.float32, DType.float64)


# --------------------------------------------------------------------------------------- unary
def _unary(ctx, kernel_op: str, params=()) -> None:
    out_dtype = ctx.out_dtype(0)
    predicate = kernel_op in UNARY_PREDICATES
    compute = ctx.in_dtype(0) if predicate else out_dtype
    if compute not in _FLOAT_DTYPES and kernel_op not in INT_UNARY and not predicate:
        ctx.unsupported(f"{kernel_op} on {compute} has no native kernel")
    x = ctx.cast(0, compute)
    out = ctx.output(0, inplace=() if predicate else (0,))
    ctx.emit("unary", [out, x], [UNARY_CODES[kernel_op], dtype_code(ctx, compute), x.numel],
             [float(p) for p in params])


def _register_unary(op: str, kernel_op: str | None = None) -> None:
    @register_lowering("native", op)
    def lower(ctx, _k=kernel_op or op) -> None:
        _unary(ctx, _k)


for _op in ["neg", "abs", "relu", "floor", "ceil", "round", "sign", "bitwise_not", "exp", "log",
            "log1p", "expm1", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "tan", "atan", "tanh",
            "sigmoid", "erf", "silu", "mish", "hardswish", "hardsigmoid", "softsign",
            "logical_not", "isnan", "acos", "asin", "acosh", "asinh", "atanh", "cosh", "sinh"]:
    _register_unary(_op)


@register_lowering("native", "isinf")
def lower_isinf(ctx) -> None:
    pos, neg = ctx.attrs["detect_positive"], ctx.attrs["detect_negative"]
    if not (pos or neg):  # nothing to detect: all False
        out = ctx.output(0)
        ctx.emit("fill", [out], [1, out.numel, 0])
        return
    _unary(ctx, "isinf" if pos and neg else ("isposinf" if pos else "isneginf"))


@register_lowering("native", "thresholded_relu")
def lower_thresholded_relu(ctx) -> None:
    _unary(ctx, "thresholded_relu", (ctx.attrs["alpha"],))


@register_lowering("native", "shrink")
def lower_shrink(ctx) -> None:
    _unary(ctx, "shrink", (ctx.attrs["lambd"], ctx.attrs["bias"]))


@register_lowering("native", "gelu")
def lower_gelu(ctx) -> None:
    _unary(ctx, "gelu_tanh" if ctx.attrs["approximate"] == "tanh" else "gelu")


@register_lowering("native", "clamp")
def lower_clamp(ctx) -> None:
    lo, hi = ctx.attrs["min"], ctx.attrs["max"]
    if ctx.out_dtype(0) not in _FLOAT_DTYPES:
        if lo is None or hi is None:
            ctx.unsupported("integer clamp with an open bound")
        if lo == 0 and hi is None:
            return _unary(ctx, "relu")
    if lo == 0.0 and hi == 6.0 and ctx.out_dtype(0) == DType.float32:
        return _unary(ctx, "relu6")
    _unary(ctx, "clamp", (-math.inf if lo is None else lo, math.inf if hi is None else hi))


@register_lowering("native", "leaky_relu")
def lower_leaky_relu(ctx) -> None:
    _unary(ctx, "leaky_relu", (ctx.attrs["negative_slope"],))


@register_lowering("native", "elu")
def lower_elu(ctx) -> None:
    a = ctx.attrs
    _unary(ctx, "elu", (a["alpha"], a["scale"], a["input_scale"]))


@register_lowering("native", "softplus")
def lower_softplus(ctx) -> None:
    _unary(ctx, "softplus", (ctx.attrs["beta"], ctx.attrs["threshold"]))


@register_lowering("native", "cast")
def lower_cast(ctx) -> None:
    x = ctx.contiguous(0)
    src, dst = ctx.in_dtype(0), ctx.out_dtype(0)
    if src == dst:
        return ctx.set_output(0, x)
    out = ctx.output(0, inplace=(0,))
    ctx.emit("cast", [out, x], [dtype_code(ctx, src), dtype_code(ctx, dst), x.numel])


# -------------------------------------------------------------------------------------- binary
def _binary(ctx, kernel_op: str) -> None:
    a_val, b_val = ctx.node.inputs[0], ctx.node.inputs[1]
    predicate = kernel_op in PREDICATES
    compute = promote(a_val.type, b_val.type) if predicate else ctx.out_dtype(0)
    if kernel_op == "div" and compute not in _FLOAT_DTYPES:
        ctx.unsupported(f"true division in {compute}")
    if compute == DType.bool and kernel_op not in PREDICATES | INT_ONLY_BINARY | {
            "maximum", "minimum"}:
        ctx.unsupported(f"{kernel_op} on bool operands has no native kernel")
    if kernel_op in FLOAT_ONLY_BINARY and compute not in _FLOAT_DTYPES:
        ctx.unsupported(f"{kernel_op} on {compute}")
    if kernel_op in INT_ONLY_BINARY and compute in _FLOAT_DTYPES:
        ctx.unsupported(f"{kernel_op} on {compute}")
    shape = ctx.out_shape(0)
    a = ctx.cast(0, compute, contiguous=False).expanded(shape)
    b = ctx.cast(1, compute, contiguous=False).expanded(shape)
    out = ctx.output(0, inplace=() if predicate else (0, 1))
    if out.numel == 0:
        return
    dims, (sa, sb) = R.collapse_dims(shape, a.strides, b.strides)
    ctx.emit("binary", [out, a, b],
             [BINARY_CODES[kernel_op], dtype_code(ctx, compute), len(dims), *dims, *sa, *sb])


for _op in ["add", "sub", "mul", "pow", "maximum", "minimum", "remainder", "atan2",
            "bitwise_and", "bitwise_or", "bitwise_xor", "eq", "ne", "lt", "le", "gt", "ge",
            "logical_and", "logical_or", "logical_xor", "fmod", "prelu"]:
    register_lowering("native", _op)(lambda ctx, _k=_op: _binary(ctx, _k))


@register_lowering("native", "bitshift")
def lower_bitshift(ctx) -> None:
    direction = ctx.attrs["direction"]
    if direction not in ("LEFT", "RIGHT"):
        ctx.invalid(f"bitshift direction {direction!r} is not LEFT or RIGHT")
    _binary(ctx, "shift_left" if direction == "LEFT" else "shift_right")


@register_lowering("native", "div")
def lower_div(ctx) -> None:
    mode = ctx.attrs["rounding_mode"]
    _binary(ctx, {None: "div", "floor": "div_floor", "trunc": "div_trunc"}[mode])


@register_lowering("native", "where")
def lower_where(ctx) -> None:
    shape = ctx.out_shape(0)
    dtype = ctx.out_dtype(0)
    cond = ctx.cast(0, DType.bool, contiguous=False).expanded(shape)
    a = ctx.cast(1, dtype, contiguous=False).expanded(shape)
    b = ctx.cast(2, dtype, contiguous=False).expanded(shape)
    out = ctx.output(0, inplace=(1, 2))
    if out.numel == 0:
        return
    dims, (sc, sa, sb) = R.collapse_dims(shape, cond.strides, a.strides, b.strides)
    ctx.emit("where", [out, cond, a, b], [dtype.itemsize, len(dims), *dims, *sc, *sa, *sb])
