"""Converters of the ONNX quantization ops: Quantize/DequantizeLinear and integer arithmetic.

Quantization parameters are where a malformed model goes silently wrong rather than failing: a
zero, negative or NaN scale gives inf/NaN outputs, a zero point of another type or shape is
broadcast somewhere unintended. Scales and zero points are therefore checked (type, shape along
the quantized axis, and, when known at import time, finite and > 0) before anything is emitted.
"""

from __future__ import annotations

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Value
from graphopt.onnx.importer import ImportContext, OnnxNode, onnx_converter


def _per_axis(ctx: ImportContext, param: Value, x: Value, axis: int) -> Value:
    """A per-channel (1-D) quantization parameter shaped to broadcast along ``axis``
    (``axis`` already normalized)."""
    if param.type.rank != 1 or x.type.rank == 0:
        return param
    shape = [1] * x.type.rank
    shape[axis] = param.shape[0]
    return ctx.emit("reshape", [param], {"shape": tuple(shape)})


def _quant_params(ctx: ImportContext, node: OnnxNode, x: Value, scale: Value,
                  zero: Value | None) -> int:
    """Check a Q/DQ node's scale and zero point; returns the normalized ``axis``.

    Scales must be floating-point, scalar or 1-D along ``axis`` (with the zero point of the
    same shape), and, when known at import time, finite and > 0: a zero or NaN scale does not
    fail, it silently yields inf/NaN everywhere downstream.
    """
    if not scale.dtype.is_floating:
        raise GraphoptError(f"scale must be floating-point, got {scale.dtype}")
    if scale.type.rank > 1:
        raise GraphoptError(f"scale {scale.type} must be a scalar or 1-D (per-axis)")
    # A one-element 1-D scale is per-tensor (exporters write it so; onnxruntime agrees).
    per_axis = scale.type.rank == 1 and scale.shape[0] != 1
    axis = 0
    if per_axis:
        if x.type.rank == 0:
            raise GraphoptError(f"a per-axis scale {scale.type} for a 0-d input")
        axis = node.axis_attr("axis", 1, x.type.rank)
        size, channels = scale.shape[0], x.shape[axis]
        if isinstance(size, int) and isinstance(channels, int) and size != channels:
            raise GraphoptError(f"scale {scale.type} has {size} entries for the {channels} "
                                f"channels of axis {axis} of {x.type}")
    if zero is not None and not zero.type.same_as(zero.type.with_shape(scale.shape)):
        raise GraphoptError(f"zero point {zero.type} must have the shape of scale "
                            f"{scale.type}")
    _check_scale_values(ctx, scale)
    return axis


def _check_scale_values(ctx: ImportContext, scale: Value, what: str = "scale") -> None:
    """A scale known at import time must be finite and > 0."""
    if not scale.dtype.is_floating:
        raise GraphoptError(f"{what} must be floating-point, got {scale.dtype}")
    known = ctx.known_value(scale)
    if known is not None and known.dtype != object:
        values = known.astype(np.float64)
        if not (np.isfinite(values).all() and (values > 0).all()):
            raise GraphoptError(f"{what} {values.reshape(-1)[:8].tolist()} must be finite and "
                                "> 0; re-export the quantized model")


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
        if node.attr("output_dtype", 0) and ir_dtype(node.attr("output_dtype"), "output_dtype"
                                                     ) != dtype:
            raise GraphoptError(f"output_dtype disagrees with the zero point's type {dtype}")
    elif node.has_attr("output_dtype") and node.attr("output_dtype"):
        dtype = ir_dtype(node.attr("output_dtype"), "QuantizeLinear output_dtype")
    else:
        dtype = DType.uint8
    if dtype not in _QUANT_RANGE:
        raise GraphoptError(f"QuantizeLinear to {dtype}")
    axis = _quant_params(ctx, node, x, scale, zero)
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
    if zero is not None and zero.dtype != x.dtype:
        raise GraphoptError(f"zero point type {zero.dtype} differs from the input's {x.dtype}")
    axis = _quant_params(ctx, node, x, scale, zero)
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
    if x.dtype not in (DType.int8, DType.uint8):
        raise GraphoptError(f"integer-arithmetic operands must be int8 or uint8, got {x.type}")
    y = ctx.cast(x, DType.float64)
    if zero is None:
        return y
    if zero.dtype != x.dtype or zero.type.rank > 1:
        raise GraphoptError(f"zero point {zero.type} must be a scalar or 1-D of {x.dtype}")
    z = ctx.cast(zero, DType.float64)
    if zero_axis is not None and zero.type.rank == 1 and zero.shape[0] != 1:
        if x.type.rank < 2:
            raise GraphoptError(f"a per-axis zero point {zero.type} for operand {x.type}")
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
    for scale, what in ((a_scale, "a_scale"), (b_scale, "b_scale"), (y_scale, "y_scale")):
        _check_scale_values(ctx, scale, what)
    a = _centered(ctx, ctx.value(node, 0), ctx.value(node, 2))
    b = _centered(ctx, ctx.value(node, 3), ctx.value(node, 5))
    acc = ctx.emit("matmul", [a, b])
    factor = ctx.emit("div", [ctx.emit("mul", [a_scale, b_scale]), y_scale])
    y = ctx.emit("mul", [acc, ctx.cast(factor, DType.float64)])
    dtype = y_zero.dtype if y_zero is not None else ctx.value(node, 0).dtype
    if dtype not in _QUANT_RANGE:
        raise GraphoptError(f"QLinearMatMul output type {dtype}")
    if y_zero is not None:
        y = ctx.emit("add", [y, ctx.cast(y_zero, DType.float64)])
    lo, hi = _QUANT_RANGE[dtype]
    y = ctx.emit("clamp", [ctx.emit("round", [y])], {"min": float(lo), "max": float(hi)})
    return ctx.cast(y, dtype)
