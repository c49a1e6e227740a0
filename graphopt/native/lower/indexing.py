"""Indexing ops -> "take" and "gather" (csrc/rt_index.cpp).

embedding, index_select and advanced indexing with one index tensor are all "take" along one
axis; several constant index tensors on adjacent axes are one "take" along those axes flattened.
torch.gather is "gather". Index tensors may be int32 or int64 (no conversion).
codebook_decode (a shared weight) is "codebook_decode" (csrc/rt_codebook.cpp).
"""

from __future__ import annotations

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.native.errors import NativeIndexError
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
        return _lower_multi_index(ctx)
    x = ctx.contiguous(0)
    axis = norm_axis(ctx.attrs["axes"][0], len(x.shape))
    _take(ctx, x, axis, _index_ref(ctx, 1), allow_negative=True)


def _lower_multi_index(ctx) -> None:
    """x[..., i0, i1, ...] with constant index tensors on adjacent axes (what HF's attention
    masks produce): the indexed axes are one flattened axis of the contiguous x, so the row-major
    combination of the (broadcast, normalized) indices is a single constant "take" index and the
    output, [before, *broadcast(indices), after], is exactly take's [outer, n_index, inner]."""
    x = ctx.contiguous(0)
    axes = [norm_axis(a, len(x.shape)) for a in ctx.attrs["axes"]]
    if axes != list(range(axes[0], axes[0] + len(axes))):
        ctx.unsupported(f"advanced indexing on non-adjacent axes {tuple(axes)}")
    indices = [ctx.const(i) for i in range(1, ctx.num_inputs)]
    if any(idx is None for idx in indices):
        ctx.unsupported("advanced indexing with several non-constant index tensors")
    if any(ctx.in_dtype(i) not in (DType.int32, DType.int64) for i in range(1, ctx.num_inputs)):
        ctx.unsupported("advanced indexing with non-integer index tensors")
    dims = [x.shape[a] for a in axes]
    flat = np.zeros(np.broadcast_shapes(*(idx.shape for idx in indices)), dtype=np.int64)
    for k, (idx, dim) in enumerate(zip(indices, dims)):
        idx = np.asarray(idx, dtype=np.int64)
        bad = idx[(idx < -dim) | (idx >= dim)]
        if bad.size:
            raise NativeIndexError(f"%{ctx.name} ({ctx.node.op}): index {int(bad[0])} is out "
                                   f"of bounds for axis {axes[k]} of size {dim}")
        flat = flat * dim + np.where(idx < 0, idx + dim, idx)
    index = ctx.builder.const_ref(np.ascontiguousarray(flat), DType.int64)
    pre = numel(x.shape[: axes[0]])
    post = numel(x.shape[axes[-1] + 1:])
    ctx.emit("take", [ctx.output(0), x, index],
             [pre, numel(dims), post, index.numel, dtype_code(ctx, DType.int64), x.itemsize, 0])


def emit_gather(ctx, allow_negative: bool) -> None:
    """torch.gather of input 0 at index input 1 along attribute ``axis`` (one "gather" step);
    with ``allow_negative`` a negative index counts from the end (ONNX GatherElements)."""
    x = ctx.contiguous(0)
    index = _index_ref(ctx, 1)
    axis = norm_axis(ctx.attrs["axis"], len(x.shape))
    out = ctx.output(0)
    if out.numel == 0:
        return
    ctx.emit("gather", [out, x, index],
             [len(index.shape), *index.shape, *x.strides, axis, x.shape[axis],
              dtype_code(ctx, index.dtype), x.itemsize, int(allow_negative)])


@register_lowering("native", "gather")
def lower_gather(ctx) -> None:
    emit_gather(ctx, allow_negative=False)


@register_lowering("native", "codebook_decode")
def lower_codebook_decode(ctx) -> None:
    """A shared weight read through its codebook (one "codebook_decode" step). With constant
    indices and codebook (the usual case) the builder decodes it once at plan time instead."""
    if ctx.in_dtype(1) != DType.float32:
        ctx.unsupported(f"codebook_decode with {ctx.in_dtype(1).name} centroids (float32 only)")
    indices = ctx.contiguous(0)
    centroids = ctx.contiguous(1)
    out = ctx.output(0)
    if out.numel == 0:
        return
    ctx.emit("codebook_decode", [out, indices, centroids],
             [out.numel, dtype_code(ctx, ctx.in_dtype(0)), centroids.numel])
