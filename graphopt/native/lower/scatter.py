"""ONNX index-tuple ops -> "gather" (csrc/rt_index.cpp), "gather_nd", "scatter_elements",
"scatter_nd" (csrc/rt_scatter.cpp).

Negative indices count from the end of their axis (ONNX); out-of-range ones raise IndexError at
run time naming the node. Scatters write into their output after copying x there, so the output
may take x's buffer when x dies here (no copy at all).
"""

from __future__ import annotations

from graphopt.ir.dtypes import DType
from graphopt.native.lower._common import dtype_code, norm_axis
from graphopt.native.lower.indexing import emit_gather
from graphopt.native.refs import numel
from graphopt.ops.registry import register_lowering

_INDEX = (DType.int32, DType.int64)
_REDUCTIONS = {"none": 0, "add": 1, "mul": 2, "max": 3, "min": 4}


def _index(ctx, i: int):
    if ctx.in_dtype(i) not in _INDEX:
        ctx.unsupported(f"indices of dtype {ctx.in_dtype(i)}")
    return ctx.contiguous(i)


def _reduction(ctx) -> int:
    reduction = ctx.attrs["reduction"]
    if reduction not in _REDUCTIONS:
        ctx.invalid(f"reduction {reduction!r} is not one of {sorted(_REDUCTIONS)}")
    return _REDUCTIONS[reduction]


@register_lowering("native", "gather_elements")
def lower_gather_elements(ctx) -> None:
    emit_gather(ctx, allow_negative=True)


@register_lowering("native", "gather_nd")
def lower_gather_nd(ctx) -> None:
    x = ctx.contiguous(0)
    indices = _index(ctx, 1)
    b = ctx.attrs["batch_dims"]
    k = indices.shape[-1]
    batch = numel(x.shape[:b])
    inner = numel(x.shape[b + k:])
    count = numel(indices.shape[b:-1])
    out = ctx.output(0)
    if out.numel == 0:
        return
    ctx.emit("gather_nd", [out, x, indices],
             [batch, k, *x.shape[b:b + k], inner, count, dtype_code(ctx, indices.dtype),
              x.itemsize])


@register_lowering("native", "scatter_elements")
def lower_scatter_elements(ctx) -> None:
    dtype = ctx.out_dtype(0)
    x = ctx.contiguous(0)
    if not x.shape:
        ctx.unsupported("scatter_elements of a 0-d tensor")
    index = _index(ctx, 1)
    updates = ctx.cast(2, dtype)
    if updates.shape != index.shape:
        ctx.invalid(f"updates {updates.shape} and index {index.shape} differ in shape")
    reduction = _reduction(ctx)
    out = ctx.output(0, inplace=(0,))
    ctx.emit("scatter_elements", [out, x, index, updates],
             [len(x.shape), *x.shape, *index.shape, norm_axis(ctx.attrs["axis"], len(x.shape)),
              dtype_code(ctx, index.dtype), reduction, dtype_code(ctx, dtype)])


@register_lowering("native", "scatter_nd")
def lower_scatter_nd(ctx) -> None:
    dtype = ctx.out_dtype(0)
    x = ctx.contiguous(0)
    indices = _index(ctx, 1)
    updates = ctx.cast(2, dtype)
    k = indices.shape[-1] if indices.shape else 0
    if not indices.shape or k > len(x.shape):
        ctx.invalid(f"indices {indices.shape} do not index x {x.shape}")
    count = numel(indices.shape[:-1])
    inner = numel(x.shape[k:])
    if updates.numel != count * inner:
        ctx.invalid(f"updates {updates.shape} do not match {count} slices of {x.shape[k:]}")
    reduction = _reduction(ctx)
    out = ctx.output(0, inplace=(0,))
    ctx.emit("scatter_nd", [out, x, indices, updates],
             [k, *x.shape[:k], inner, count, dtype_code(ctx, indices.dtype), reduction,
              dtype_code(ctx, dtype)])
