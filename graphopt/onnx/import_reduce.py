"""Converters of the ONNX reductions, arg-reductions and softmax family."""

from __future__ import annotations

import math

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Value
from graphopt.onnx.importer import ImportContext, OnnxNode, onnx_converter
from graphopt.ops._infer import prod, reduce_shape


def reduce_axes(ctx: ImportContext, node: OnnxNode) -> list[int] | None:
    """The reduced axes (normalized); [] for all; None for "no reduction" (noop_with_empty)."""
    axes_as_input = node.opset >= (13 if node.op_type == "ReduceSum" else 18)
    if axes_as_input:
        axes = ctx.ints(node, 1, "axes") if node.has_input(1) else []
    else:
        axes = node.ints("axes", [])
    if not axes and node.attr("noop_with_empty_axes", 0):
        return None
    rank = ctx.value(node, 0).type.rank
    return sorted(node.axes(axes, rank))


# The result of reducing an empty set (ONNX defines it; torch's amax/amin refuse).
_EMPTY = {"sum": 0, "mean": math.nan, "amax": -math.inf, "amin": math.inf, "prod": 1,
          "logsumexp": -math.inf}


def _reduce(ctx: ImportContext, node: OnnxNode, ir_op: str, x: Value) -> Value | None:
    axes = reduce_axes(ctx, node)
    if axes is None:
        return None
    keepdim = bool(node.attr("keepdims", 1))
    if x.type.rank == 0:
        return x
    reduced = axes or range(x.type.rank)
    if any(isinstance(x.shape[a], int) and x.shape[a] == 0 for a in reduced):
        shape = reduce_shape(x.shape, tuple(axes), keepdim)
        return ctx.emit("full", [], {"shape": shape, "value": _empty_value(ir_op, x.dtype),
                                     "dtype": x.dtype})
    return ctx.emit(ir_op, [x], {"axes": tuple(axes), "keepdim": keepdim})


def _empty_value(ir_op: str, dtype: DType):
    value = _EMPTY[ir_op]
    if dtype is DType.bool:
        return bool(value > 0) if ir_op in ("amax", "amin") else bool(value)
    if not dtype.is_floating and math.isinf(value):
        info = np.iinfo(dtype.numpy)
        return int(info.min if value < 0 else info.max)
    return value


_REDUCE = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "amax", "ReduceMin": "amin",
           "ReduceProd": "prod", "ReduceLogSumExp": "logsumexp"}


def _declare_reduce(onnx_op: str, ir_op: str) -> None:
    @onnx_converter(onnx_op)
    def convert(ctx: ImportContext, node: OnnxNode):
        x = ctx.value(node, 0)
        source = x
        if ir_op == "mean" and not x.dtype.is_floating:
            source = ctx.cast(x, DType.float64)
        y = _reduce(ctx, node, ir_op, source)
        if y is None:
            return x
        return ctx.cast(y, x.dtype)  # torch sums ints in int64; ONNX keeps the type


for _onnx, _ir in _REDUCE.items():
    _declare_reduce(_onnx, _ir)


@onnx_converter("ReduceL1")
def _reduce_l1(ctx, node):
    x = ctx.value(node, 0)
    y = _reduce(ctx, node, "sum", ctx.emit("abs", [x]))
    return x if y is None else ctx.cast(y, x.dtype)


@onnx_converter("ReduceL2", "ReduceSumSquare")
def _reduce_l2(ctx, node):
    x = ctx.value(node, 0)
    y = _reduce(ctx, node, "sum", ctx.emit("mul", [x, x]))
    if y is None:
        return x
    if node.op_type == "ReduceL2":
        y = ctx.emit("sqrt", [ctx.cast(y, x.dtype) if x.dtype.is_floating else y])
    return ctx.cast(y, x.dtype)


@onnx_converter("ReduceLogSum")
def _reduce_log_sum(ctx, node):
    x = ctx.value(node, 0)
    y = _reduce(ctx, node, "sum", x)
    return x if y is None else ctx.cast(ctx.emit("log", [y]), x.dtype)


def _declare_arg(onnx_op: str, ir_op: str) -> None:
    @onnx_converter(onnx_op)
    def convert(ctx: ImportContext, node: OnnxNode):
        x = ctx.value(node, 0)
        rank = x.type.rank
        axis = node.axis_attr("axis", 0, rank)
        keepdim = bool(node.attr("keepdims", 1))
        if not node.attr("select_last_index", 0):
            return ctx.emit(ir_op, [x], {"axis": axis, "keepdim": keepdim})
        # last occurrence: arg-reduce the flipped tensor and mirror the index
        flipped = ctx.emit("flip", [x], {"axes": (axis,)})
        index = ctx.emit(ir_op, [flipped], {"axis": axis, "keepdim": keepdim})
        last = ctx.scalar(x.shape[axis] - 1, DType.int64) if isinstance(x.shape[axis], int) \
            else ctx.emit("sub", [ctx.emit("select", [ctx.emit("shape", [x]), ], {
                "axis": 0, "index": axis}), ctx.scalar(1, DType.int64)])
        return ctx.emit("sub", [last, index])


_declare_arg("ArgMax", "argmax")
_declare_arg("ArgMin", "argmin")


def _declare_softmax(onnx_op: str, ir_op: str) -> None:
    @onnx_converter(onnx_op)
    def convert(ctx: ImportContext, node: OnnxNode):
        x = ctx.value(node, 0)
        rank = x.type.rank
        if node.opset >= 13:
            axis = node.axis_attr("axis", -1, rank)
            return ctx.emit(ir_op, [x], {"axis": axis})
        # before opset 13: softmax over the flattened trailing dims [axis:]
        axis = node.axis_attr("axis", 1, rank)
        if axis == rank - 1:
            return ctx.emit(ir_op, [x], {"axis": axis})
        flat = ctx.emit("reshape", [x], {"shape": (prod(x.shape[:axis]), prod(x.shape[axis:]))})
        y = ctx.emit(ir_op, [flat], {"axis": 1})
        return ctx.emit("reshape", [y], {"shape": x.shape})


_declare_softmax("Softmax", "softmax")
_declare_softmax("LogSoftmax", "log_softmax")
_declare_softmax("Hardmax", "hardmax")


@onnx_converter("LpNormalization")
def _lp_normalization(ctx, node):
    x = ctx.value(node, 0)
    axis = node.axis_attr("axis", -1, x.type.rank)
    p = node.attr("p", 2)
    if p not in (1, 2):
        raise GraphoptError(f"attribute 'p' = {p} must be 1 or 2")
    if p == 1:
        norm = ctx.emit("sum", [ctx.emit("abs", [x])], {"axes": (axis,), "keepdim": True})
    else:
        norm = ctx.emit("sqrt", [ctx.emit("sum", [ctx.emit("mul", [x, x])],
                                          {"axes": (axis,), "keepdim": True})])
    zero = ctx.scalar(0, x.dtype)
    # a zero norm gives 0, not NaN (the ONNX reference)
    return ctx.emit("where", [ctx.emit("eq", [norm, zero]), zero, ctx.emit("div", [x, norm])])


@onnx_converter("MeanVarianceNormalization")
def _mvn(ctx, node):
    x = ctx.value(node, 0)
    axes = tuple(node.axes(node.ints("axes", [0, 2, 3]), x.type.rank))
    mean = ctx.emit("mean", [x], {"axes": axes, "keepdim": True})
    centered = ctx.emit("sub", [x, mean])
    var = ctx.emit("mean", [ctx.emit("mul", [centered, centered])], {"axes": axes,
                                                                     "keepdim": True})
    std = ctx.emit("sqrt", [var])
    return ctx.emit("div", [centered, ctx.emit("add", [std, ctx.scalar(1e-9, x.dtype)])])
