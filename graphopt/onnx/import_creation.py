"""Converters of the ONNX ops that create tensors: Constant, ConstantOfShape, Range, EyeLike,
OneHot.

Their sizes come from the file (a shape tensor, a depth, the input's declared dims), so any
constant built here at import time is checked against the memory budget first, and value
attributes against their declared element count.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from graphopt.errors import GraphoptError
from graphopt.ir.dtypes import DType
from graphopt.limits import check_shape
from graphopt.onnx._common import tensor_to_array
from graphopt.onnx.import_nn import expect_rank
from graphopt.onnx.import_shape import _sizes
from graphopt.onnx.importer import OnnxNode, onnx_converter


def _value_attr(node: OnnxNode, default_dtype: DType):
    t = node.attr("value", None)
    if t is None:
        return 0.0, default_dtype
    if not isinstance(t, onnx.TensorProto):
        raise GraphoptError("attribute 'value' must be a tensor")
    array, dtype = tensor_to_array(t, "attribute 'value'")
    if array.size != 1:
        raise GraphoptError(f"attribute 'value' must hold one element, got shape "
                            f"{list(array.shape)}")
    return array.reshape(-1)[0].item(), dtype


@onnx_converter("ConstantOfShape")
def _constant_of_shape(ctx, node):
    shape = tuple(_sizes(ctx.dims(node, 0, "shape"), "shape"))
    value, dtype = _value_attr(node, DType.float32)
    return ctx.emit("full", [], {"shape": shape, "value": value, "dtype": dtype})


@onnx_converter("Range")
def _range(ctx, node):
    start = ctx.scalar_const(node, 0, "start", "iuf")
    delta = ctx.scalar_const(node, 2, "delta", "iuf")
    if ctx.maybe_const(node, 1) is None:
        limit = ctx.dims(node, 1, "limit")
        if len(limit) != 1:
            raise GraphoptError(f"input 'limit' must hold one value, got {limit}")
        limit = limit[0]
    else:
        limit = ctx.scalar_const(node, 1, "limit", "iuf")
    if delta == 0 or not all(math.isfinite(v) for v in (start, delta) + (
            (limit,) if isinstance(limit, (int, float)) else ())):
        raise GraphoptError(f"Range(start={start}, limit={limit}, delta={delta}) needs a "
                            "non-zero delta and finite bounds")
    dtype = ctx.value(node, 0).dtype
    if isinstance(limit, float) and not dtype.is_floating:
        limit = int(limit)
    return ctx.emit("arange", [], {"start": start, "end": limit, "step": delta, "dtype": dtype})


@onnx_converter("EyeLike")
def _eye_like(ctx, node):
    x = ctx.value(node, 0)
    from graphopt.onnx.import_elementwise import ir_dtype

    dtype = ir_dtype(node.attr("dtype"), "EyeLike dtype") if node.has_attr("dtype") else x.dtype
    expect_rank(x, 2, "EyeLike's input")
    if not x.type.is_static:
        raise GraphoptError(f"EyeLike of symbolic shape {x.type}")
    rows, cols = x.shape
    check_shape((rows, cols), dtype.itemsize, f"EyeLike constant {x.type}")
    return ctx.constant(np.eye(rows, cols, node.attr("k", 0), dtype=dtype.numpy), dtype, "eye")


@onnx_converter("OneHot")
def _one_hot(ctx, node):
    indices, values = ctx.value(node, 0), ctx.value(node, 2)
    depth = ctx.scalar_const(node, 1, "depth", "iuf")
    if not math.isfinite(depth) or int(depth) < 1:
        raise GraphoptError(f"depth {depth} must be a positive number")
    depth = int(depth)
    if values.type.rank != 1 or values.shape[0] != 2:
        raise GraphoptError(f"values {values.type} must hold [off_value, on_value]")
    out_rank = indices.type.rank + 1
    axis = node.axis_attr("axis", -1, out_rank)
    check_shape((depth,), 8, "OneHot's class constant")
    idx = ctx.cast(indices, DType.int64)
    negative = ctx.emit("lt", [idx, ctx.scalar(0, DType.int64)])
    idx = ctx.emit("where", [negative, ctx.emit("add", [idx, ctx.scalar(depth, DType.int64)]),
                             idx])
    idx = ctx.emit("unsqueeze", [idx], {"axis": axis})
    shape = [1] * out_rank
    shape[axis] = depth
    classes = ctx.constant(np.arange(depth, dtype=np.int64).reshape(shape), DType.int64, "cls")
    hot = ctx.emit("eq", [idx, classes])
    off = ctx.emit("select", [values], {"axis": 0, "index": 0})
    on = ctx.emit("select", [values], {"axis": 0, "index": 1})
    return ctx.emit("where", [hot, on, off])


@onnx_converter("Constant")
def _constant(ctx, node):
    if node.has_attr("value"):
        t = node.attr("value")
        if not isinstance(t, onnx.TensorProto):
            raise GraphoptError("attribute 'value' must be a tensor")
        array, dtype = tensor_to_array(t, "attribute 'value'")
        return ctx.constant(array, dtype, node.outputs[0])
    for key, dtype in (("value_float", DType.float32), ("value_int", DType.int64)):
        if node.has_attr(key):
            return ctx.constant(np.array(node.attr(key), dtype=dtype.numpy), dtype,
                                node.outputs[0])
    for key, dtype in (("value_floats", DType.float32), ("value_ints", DType.int64)):
        if node.has_attr(key):
            return ctx.constant(np.array(node.attr(key), dtype=dtype.numpy), dtype,
                                node.outputs[0])
    raise GraphoptError("Constant without a numeric value (sparse and string constants are not "
                        "supported)")
