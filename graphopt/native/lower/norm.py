"""Normalisations and softmax -> "layer_norm", "group_norm", "channel_affine", "softmax"
(csrc/rt_norm.cpp). Inference batch norm with constant statistics becomes a per-channel affine
map whose scale and shift are computed when the plan is built."""

from __future__ import annotations

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.native.codes import BINARY_CODES, DTYPE_CODES, UNARY_CODES
from graphopt.native.lower._common import norm_axis, require_float32
from graphopt.native.refs import numel
from graphopt.ops.registry import register_lowering


@register_lowering("native", "layer_norm")
def lower_layer_norm(ctx) -> None:
    require_float32(ctx, 0, 1, 2)
    x = ctx.contiguous(0)
    cols = numel(tuple(ctx.attrs["normalized_shape"]))
    rows = x.numel // max(cols, 1)
    out = ctx.output(0, inplace=(0,))
    ctx.emit("layer_norm", [out, x, ctx.contiguous(1), ctx.contiguous(2)], [rows, cols],
             [ctx.attrs["eps"]])


@register_lowering("native", "group_norm")
def lower_group_norm(ctx) -> None:
    require_float32(ctx, 0, 1, 2)
    x = ctx.contiguous(0)
    shape = x.shape
    inner = numel(shape[2:])
    out = ctx.output(0, inplace=(0,))
    ctx.emit("group_norm", [out, x, ctx.contiguous(1), ctx.contiguous(2)],
             [shape[0], shape[1], inner, ctx.attrs["groups"]], [ctx.attrs["eps"]])


@register_lowering("native", "batch_norm")
def lower_batch_norm(ctx) -> None:
    """A per-channel affine map: scale = weight / sqrt(var + eps), shift = bias - mean * scale,
    computed at plan time from constant statistics (in double), else by five small steps on
    the [C] vectors before the "channel_affine" step."""
    require_float32(ctx, 0, 1, 2, 3, 4)
    stats = [ctx.const(i) for i in range(1, 5)]
    b = ctx.builder
    if stats[0] is not None and stats[1] is not None and all(
            not ctx.has(i) or stats[i - 1] is not None for i in (3, 4)):
        mean, var = stats[0].astype(np.float64), stats[1].astype(np.float64)
        weight = stats[2].astype(np.float64) if stats[2] is not None else 1.0
        bias = stats[3].astype(np.float64) if stats[3] is not None else 0.0
        scale = weight / np.sqrt(var + ctx.attrs["eps"])
        shift = bias - mean * scale
        scale_ref = b.const_ref(np.ascontiguousarray(scale, dtype=np.float32), DType.float32)
        shift_ref = b.const_ref(np.ascontiguousarray(shift, dtype=np.float32), DType.float32)
    else:
        scale_ref, shift_ref = _runtime_affine(ctx)
    x = ctx.contiguous(0)
    out = ctx.output(0, inplace=(0,))
    ctx.emit("channel_affine", [out, x, scale_ref, shift_ref],
             [x.shape[0], x.shape[1], numel(x.shape[2:])])


def _runtime_affine(ctx):
    channels = ctx.in_shape(0)[1]
    if any(ctx.has(i) and ctx.in_shape(i) != (channels,) for i in range(1, 5)):
        ctx.invalid(f"batch_norm statistics must have shape ({channels},)")
    f32 = DTYPE_CODES[DType.float32]

    def vec(label):
        return ctx.temp((channels,), DType.float32, label)

    def binary(op, out, a, b_):
        ctx.emit("binary", [out, a, b_], [BINARY_CODES[op], f32, 1, channels, a.strides[0],
                                          b_.strides[0]])

    eps = ctx.builder.const_ref(np.array([ctx.attrs["eps"]], dtype=np.float32),
                                DType.float32).expanded((channels,))
    scale = vec("scale")
    binary("add", scale, ctx.contiguous(2), eps)
    ctx.emit("unary", [scale, scale], [UNARY_CODES["rsqrt"], f32, channels], [])
    if ctx.has(3):
        binary("mul", scale, scale, ctx.contiguous(3))
    shift = vec("shift")
    binary("mul", shift, ctx.contiguous(1), scale)
    if ctx.has(4):
        binary("sub", shift, ctx.contiguous(4), shift)
    else:
        ctx.emit("unary", [shift, shift], [UNARY_CODES["neg"], f32, channels], [])
    return scale, shift


def _softmax(ctx, log: bool) -> None:
    """float32 -> "softmax" (vectorized); float64 -> "softmax_f64" (csrc/rt_wide.cpp)."""
    f64 = ctx.in_dtype(0) == DType.float64 and ctx.out_dtype(0) == DType.float64
    if not f64 and ctx.in_dtype(0) != DType.float32:
        ctx.unsupported(f"softmax of {ctx.in_dtype(0)}")
    if not f64:
        require_float32(ctx, 0)
    x = ctx.contiguous(0)
    shape = x.shape or (1,)
    axis = norm_axis(ctx.attrs["axis"], len(shape))
    # log_softmax reads its input after writing exp values: not in place.
    out = ctx.output(0, inplace=() if log else (0,))
    around = [numel(shape[:axis]), shape[axis], numel(shape[axis + 1:]), int(log)]
    if f64:
        ctx.emit("softmax_f64", [out, x], around)
    else:
        ctx.emit("softmax", [out, x], around)


@register_lowering("native", "softmax")
def lower_softmax(ctx) -> None:
    _softmax(ctx, log=False)


@register_lowering("native", "log_softmax")
def lower_log_softmax(ctx) -> None:
    _softmax(ctx, log=True)


@register_lowering("native", "rms_norm")
def lower_rms_norm(ctx) -> None:
    require_float32(ctx, 0, 1)
    x = ctx.contiguous(0)
    axis = norm_axis(ctx.attrs["axis"], len(x.shape))
    cols = numel(x.shape[axis:])
    rows = numel(x.shape[:axis])
    weight = None
    if ctx.has(1):
        if ctx.in_shape(1) != x.shape[axis:]:  # weight broadcast another way: not a row scale
            ctx.unsupported(f"rms_norm weight of shape {ctx.in_shape(1)} for rows of "
                            f"{x.shape[axis:]}")
        weight = ctx.contiguous(1)
    out = ctx.output(0, inplace=(0,))
    if out.numel == 0:
        return
    ctx.emit("rms_norm", [out, x, weight], [rows, cols], [ctx.attrs["eps"]])


@register_lowering("native", "lrn")
def lower_lrn(ctx) -> None:
    require_float32(ctx, 0)
    x = ctx.contiguous(0)
    if len(x.shape) < 2:
        ctx.invalid(f"lrn input of rank {len(x.shape)} has no channel axis")
    size = ctx.attrs["size"]
    if size < 1:
        ctx.invalid(f"lrn size {size} is not positive")
    out = ctx.output(0)  # never in place: each output reads a window of input channels
    if out.numel == 0:
        return
    a = ctx.attrs
    ctx.emit("lrn", [out, x], [x.shape[0], x.shape[1], numel(x.shape[2:]), size],
             [a["alpha"], a["beta"], a["bias"]])
