"""Indexing ops -> "take" and "gather" (csrc/rt_index.cpp).

embedding, index_select and advanced indexing with one index tensor are all "take" along one
axis; torch.gather is "gather". Index tensors may be int32 or int64 (no conversion).
"""

from __future__ import annotations

from graphopt.ir.dtypes import DType
from graphopt.native.lower._common import dtype_code, norm_axis
from graphopt.native.refs import numel
from graphopt.ops.registry import register_lowering


def _index_ref(ctx, i: int):
    if ctx.in_dtype(i) not in (DType.int32, DType.int64):
        ctx.unsupported(f"index tensor of dtype {ctx.in_dtype(i)}")
    return ctx.contiguous(i)


def _take(ctx, x, axis: int, index, allow_negative: bool) -> None:
    shape = x.shape
    out = ctx.output(0)
    ctx.emit("take", [out, x, index],
             [numel(shape[:axis]), shape[axis], numel(shape[axis + 1:]), index.numel,
              dtype_code(ctx, index.dtype), x.itemsize, int(allow_negative)])


@register_lowering("native", "embedding")
def lower_embedding(ctx) -> None:
    _take(ctx, ctx.contiguous(0), 0, _index_ref(ctx, 1), allow_negative=False)


@register_lowering("native", "index_select")
def lower_index_select(ctx) -> None:
    x = ctx.contiguous(0)
    _take(ctx, x, norm_axis(ctx.attrs["axis"], len(x.shape)), _index_ref(ctx, 1),
          allow_negative=False)


@register_lowering("native", "index")
def lower_index(ctx) -> None:
    if ctx.num_inputs != 2:
        ctx.unsupported("advanced indexing with several index tensors")
    x = ctx.contiguous(0)
    axis = norm_axis(ctx.attrs["axes"][0], len(x.shape))
    _take(ctx, x, axis, _index_ref(ctx, 1), allow_negative=True)


@register_lowering("native", "gather")
def lower_gather(ctx) -> None:
    x = ctx.contiguous(0)
    index = _index_ref(ctx, 1)
    axis = norm_axis(ctx.attrs["axis"], len(x.shape))
    out = ctx.output(0)
    if out.numel == 0:
        return
    ctx.emit("gather", [out, x, index],
             [len(index.shape), *index.shape, *x.strides, axis, x.shape[axis],
              dtype_code(ctx, index.dtype), x.itemsize])
