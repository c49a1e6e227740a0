"""Converters of the ONNX gather/scatter ops.

Index operands must be int32/int64 and of the ranks the ONNX spec requires; axes are checked
against the data's rank (never wrapped), so a malformed model fails here with the node named
instead of in a shape rule or, worse, indexing another axis.
"""

from __future__ import annotations

from graphopt.errors import GraphoptError
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Value
from graphopt.onnx.importer import onnx_converter


@onnx_converter("Gather")
def _gather(ctx, node):
    x, index = ctx.value(node, 0), ctx.value(node, 1)
    _index_operand(index, "indices")
    if x.type.rank == 0:
        raise GraphoptError("Gather from a 0-d tensor")
    axis = node.axis_attr("axis", 0, x.type.rank)
    if axis == 0 and x.type.rank == 2 and x.kind == "const" and index.type.rank >= 1:
        known = ctx.maybe_const(node, 1)
        if known is None or (known >= 0).all():
            return ctx.emit("embedding", [x, index])
    return ctx.emit("index", [x, index], {"axes": (axis,)})


@onnx_converter("GatherElements")
def _gather_elements(ctx, node):
    x, index = ctx.value(node, 0), ctx.value(node, 1)
    _index_operand(index, "indices")
    if x.type.rank == 0 or index.type.rank != x.type.rank:
        raise GraphoptError(f"data {x.type} and indices {index.type} must have one rank >= 1")
    axis = node.axis_attr("axis", 0, x.type.rank)
    return ctx.emit("gather_elements", [x, index], {"axis": axis})


@onnx_converter("GatherND")
def _gather_nd(ctx, node):
    x, index = ctx.value(node, 0), ctx.value(node, 1)
    _index_operand(index, "indices")
    batch_dims = node.attr("batch_dims", 0)
    if not 0 <= batch_dims < min(x.type.rank, index.type.rank):
        raise GraphoptError(f"batch_dims {batch_dims} must be in [0, min(rank(data), "
                            f"rank(indices))) for {x.type} and {index.type}")
    last = index.shape[-1]
    if isinstance(last, int) and not 1 <= last <= x.type.rank - batch_dims:
        raise GraphoptError(f"indices {index.type} index {last} dims of data {x.type} "
                            f"after {batch_dims} batch dims")
    return ctx.emit("gather_nd", [x, index], {"batch_dims": batch_dims})


def _index_operand(index: Value, what: str) -> None:
    if index.dtype not in (DType.int32, DType.int64):
        raise GraphoptError(f"{what} must be int32 or int64, got {index.dtype}")


_REDUCTIONS = ("none", "add", "mul", "max", "min")


@onnx_converter("ScatterElements", "Scatter")
def _scatter_elements(ctx, node):
    x, index, updates = ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)
    _index_operand(index, "indices")
    if x.type.rank == 0 or not x.type.rank == index.type.rank == updates.type.rank:
        raise GraphoptError(f"data {x.type}, indices {index.type} and updates {updates.type} "
                            "must have one rank >= 1")
    if not index.type.same_as(updates.type.with_dtype(index.dtype)):
        raise GraphoptError(f"indices {index.type} and updates {updates.type} must have one "
                            "shape")
    axis = node.axis_attr("axis", 0, x.type.rank)
    return ctx.emit("scatter_elements", [x, index, updates], {
        "axis": axis, "reduction": node.choice("reduction", "none", _REDUCTIONS)})


@onnx_converter("ScatterND")
def _scatter_nd(ctx, node):
    x, index, updates = ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)
    _index_operand(index, "indices")
    last = index.shape[-1] if index.type.rank else None
    if x.type.rank == 0 or not isinstance(last, int) or not 1 <= last <= x.type.rank:
        raise GraphoptError(f"indices {index.type} must index 1 to {x.type.rank} dims of data "
                            f"{x.type} (a static last dim)")
    want = index.type.rank - 1 + x.type.rank - last
    if updates.type.rank != want:
        raise GraphoptError(f"updates {updates.type} must have rank {want} for data {x.type} "
                            f"and indices {index.type}")
    return ctx.emit("scatter_nd", [x, index, updates],
                    {"reduction": node.choice("reduction", "none", _REDUCTIONS)})
