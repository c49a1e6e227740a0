"""Scans and selections along one axis -> "scan", "topk" (csrc/rt_scan.cpp), hardmax.

Each op works on the contiguous input viewed as [outer, R, inner] around its axis, so no
transpose is needed: the kernels stride over ``inner``.
"""

from __future__ import annotations

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.native.codes import BINARY_CODES, DTYPE_CODES, REDUCE_CODES
from graphopt.native.lower._common import dtype_code, norm_axis
from graphopt.native.refs import numel
from graphopt.ops.registry import register_lowering

_SCAN_DTYPES = (DType.float32, DType.float64, DType.int32, DType.int64, DType.int8, DType.int16,
                DType.uint8)


def _around(shape, axis: int) -> tuple[int, int, int]:
    """(outer, R, inner) of ``shape`` around ``axis`` (a 0-d tensor is [1, 1, 1])."""
    if not shape:
        return 1, 1, 1
    return numel(shape[:axis]), shape[axis], numel(shape[axis + 1:])


def _scan(ctx, product: bool) -> None:
    dtype = ctx.out_dtype(0)
    if dtype not in _SCAN_DTYPES:
        ctx.unsupported(f"{ctx.node.op} in {dtype}")
    shape = ctx.in_shape(0)
    axis = norm_axis(ctx.attrs["axis"], len(shape))
    x = ctx.cast(0, dtype)  # torch accumulates integers in int64: the result dtype says so
    out = ctx.output(0, inplace=(0,))
    if out.numel == 0:
        return
    ctx.emit("scan", [out, x], [int(product), dtype_code(ctx, dtype), *_around(shape, axis)])


@register_lowering("native", "cumsum")
def lower_cumsum(ctx) -> None:
    _scan(ctx, product=False)


@register_lowering("native", "cumprod")
def lower_cumprod(ctx) -> None:
    _scan(ctx, product=True)


@register_lowering("native", "topk")
def lower_topk(ctx) -> None:
    dtype = ctx.in_dtype(0)
    if dtype not in _SCAN_DTYPES:
        ctx.unsupported(f"topk of {dtype}")
    shape = ctx.in_shape(0)
    axis = norm_axis(ctx.attrs["axis"], len(shape))
    outer, r, inner = _around(shape, axis)
    k = ctx.attrs["k"]
    if not 0 <= k <= r:
        ctx.invalid(f"k = {k} is outside [0, {r}] (the size of axis {axis})")
    x = ctx.contiguous(0)
    values, indices = ctx.output(0), ctx.output(1)
    if values.numel == 0:
        return
    ctx.emit("topk", [values, indices, x],
             [dtype_code(ctx, dtype), outer, r, inner, k, int(ctx.attrs["largest"])])


@register_lowering("native", "hardmax")
def lower_hardmax(ctx) -> None:
    """argmax along the axis ("reduce", the first maximum, NaN counting as the maximum), then
    one-hot: eq(positions, argmax) broadcast over [outer, R, inner] and cast to the dtype."""
    dtype = ctx.in_dtype(0)
    if dtype not in (DType.float32, DType.float64):
        ctx.unsupported(f"hardmax of {dtype}")
    shape = ctx.in_shape(0)
    axis = norm_axis(ctx.attrs["axis"], len(shape))
    outer, r, inner = _around(shape, axis)
    out = ctx.output(0)
    if out.numel == 0:
        return
    x = ctx.contiguous(0)
    argmax = ctx.temp((outer, 1, inner), DType.int64, "argmax")
    ctx.emit("reduce", [argmax, x], [REDUCE_CODES["argmax"], dtype_code(ctx, dtype), outer, r,
                                     inner], [0.0])
    positions = ctx.builder.const_ref(np.arange(r, dtype=np.int64).reshape(1, r, 1), DType.int64)
    hot = ctx.temp((outer, r, inner), DType.bool, "onehot")
    ctx.emit("binary", [hot, positions, argmax],
             [BINARY_CODES["eq"], DTYPE_CODES[DType.int64], 3, outer, r, inner,
              0, 1, 0, inner, 0, 1])
    ctx.emit("cast", [out, hot], [DTYPE_CODES[DType.bool], DTYPE_CODES[dtype], out.numel])
