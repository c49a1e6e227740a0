"""ONNX lowerings of indexing and creation ops: embedding, gather, advanced index, cumsum..."""

from __future__ import annotations

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.ir.types import dims_equal
from graphopt.onnx._common import TO_ONNX_DTYPE, array_to_tensor
from graphopt.onnx.export import OnnxLowering
from graphopt.onnx.lower_shape import slice_, unsqueeze
from graphopt.ops._infer import broadcast_shapes, norm_axis
from graphopt.ops.registry import register_lowering


@register_lowering("onnx", "embedding")
def _embedding(ctx, node):
    ctx.op("Gather", [ctx.input(node, 0), ctx.input(node, 1)], out=ctx.output(node), axis=0)


@register_lowering("onnx", "gather")
def _gather(ctx, node):
    x_type, index_type = node.inputs[0].type, node.inputs[1].type
    axis = norm_axis(node.attrs["axis"], x_type.rank)
    x = ctx.input(node, 0)
    # torch.gather allows an index smaller than x on the other dims; GatherElements does not.
    for d, (xd, idd) in enumerate(zip(x_type.shape, index_type.shape)):
        if d != axis and not dims_equal(xd, idd):
            x = slice_(ctx, x, d, 0, idd)
    ctx.op("GatherElements", [x, ctx.input(node, 1)], out=ctx.output(node), axis=axis)


@register_lowering("onnx", "index_select")
def _index_select(ctx, node):
    axis = norm_axis(node.attrs["axis"], node.inputs[0].type.rank)
    ctx.op("Gather", [ctx.input(node, 0), ctx.input(node, 1)], out=ctx.output(node), axis=axis)


@register_lowering("onnx", "index")
def _index(ctx, node):
    """x[..., i0, ..., i1, ...] with numpy's advanced-indexing result layout.

    One index is a Gather. Several are moved to the front, broadcast, stacked on a last axis
    and read with GatherND; the result dims then go where numpy puts them (in place of the
    indexed axes when these are adjacent, else first).
    """
    x_type = node.inputs[0].type
    rank = x_type.rank
    axes = [norm_axis(a, rank) for a in node.attrs["axes"]]
    index_types = [v.type for v in node.inputs[1:]]
    if len(axes) == 1:
        ctx.op("Gather", [ctx.input(node, 0), ctx.input(node, 1)], out=ctx.output(node),
               axis=axes[0])
        return
    others = [d for d in range(rank) if d not in axes]
    perm = axes + others
    x = ctx.input(node, 0)
    if perm != list(range(rank)):
        x = ctx.op("Transpose", [x], perm=perm)
    bshape = broadcast_shapes(*(t.shape for t in index_types))
    columns = []
    for i, t in enumerate(index_types):
        idx = ctx.input_as(node, 1 + i, DType.int64)
        if len(t.shape) != len(bshape) or not all(dims_equal(a, b)
                                                  for a, b in zip(t.shape, bshape)):
            idx = ctx.op("Expand", [idx, ctx.shape_tensor(bshape)])
        columns.append(unsqueeze(ctx, idx, [len(bshape)]))
    stacked = ctx.op("Concat", columns, axis=-1)
    adjacent = axes == list(range(axes[0], axes[0] + len(axes)))
    nb, before = len(bshape), axes[0]
    if not adjacent or before == 0:
        ctx.op("GatherND", [x, stacked], out=ctx.output(node))
        return
    g = ctx.op("GatherND", [x, stacked])
    out_rank = nb + len(others)
    out_perm = list(range(nb, nb + before)) + list(range(nb)) + list(range(nb + before, out_rank))
    ctx.op("Transpose", [g], out=ctx.output(node), perm=out_perm)


@register_lowering("onnx", "cumsum")
def _cumsum(ctx, node):
    x = ctx.input_as(node, 0, node.outputs[0].dtype)
    axis = norm_axis(node.attrs["axis"], max(node.inputs[0].type.rank, 1))
    ctx.op("CumSum", [x, ctx.scalar(axis, DType.int64)], out=ctx.output(node))


def scalar_of_dim(ctx: OnnxLowering, dim, dtype: DType) -> str:
    """A 0-d tensor of ``dtype`` holding a (possibly symbolic) size."""
    if isinstance(dim, (int, float)) or getattr(dim, "is_number", False):
        return ctx.scalar(dim if isinstance(dim, (int, float)) else float(dim), dtype)
    t = ctx.op("Squeeze", [ctx.dim_tensor(dim), ctx.ints([0])])
    return ctx.cast(t, DType.int64, dtype)


@register_lowering("onnx", "arange")
def _arange(ctx, node):
    dtype = node.attrs["dtype"]
    compute = dtype if dtype in (DType.float32, DType.float64, DType.int32, DType.int64) \
        else DType.int64
    a = node.attrs
    args = [scalar_of_dim(ctx, a[k], compute) for k in ("start", "end", "step")]
    if compute == dtype:
        ctx.op("Range", args, out=ctx.output(node))
    else:
        ctx.op("Cast", [ctx.op("Range", args)], out=ctx.output(node), to=TO_ONNX_DTYPE[dtype])


@register_lowering("onnx", "full")
def _full(ctx, node):
    import numpy as np

    dtype = node.attrs["dtype"]
    value = node.attrs["value"]
    if dtype is DType.bfloat16:
        import torch

        array = torch.tensor([value], dtype=torch.bfloat16).view(torch.int16).numpy()
        array = array.astype(np.uint16)
    else:
        array = np.array([value], dtype=dtype.numpy)
    ctx.op("ConstantOfShape", [ctx.shape_tensor(node.outputs[0].shape)], out=ctx.output(node),
           value=array_to_tensor(array, dtype, "value"))


def _declare_trilu(ir_op: str, upper: int) -> None:
    @register_lowering("onnx", ir_op)
    def lower(ctx: OnnxLowering, node) -> None:
        k = ctx.scalar(node.attrs["diagonal"], DType.int64)
        ctx.op("Trilu", [ctx.input(node, 0), k], out=ctx.output(node), upper=upper)


_declare_trilu("triu", 1)
_declare_trilu("tril", 0)


@register_lowering("onnx", "codebook_decode")
def _codebook_decode(ctx, node):
    """Gather from the codebook with a 0.0 entry in front (index 0 is a pruned weight); the
    indices stay uint8/uint16 initializers, cast to int32 for Gather."""
    centroids_type = node.inputs[1].type
    zero = ctx.const(np.zeros(1), centroids_type.dtype, "codebook_zero")
    table = ctx.op("Concat", [zero, ctx.input(node, 1)], axis=0)
    indices = ctx.input_as(node, 0, DType.int32)
    ctx.op("Gather", [table, indices], out=ctx.output(node), axis=0)
