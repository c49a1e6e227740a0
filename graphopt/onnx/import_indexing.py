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


def _along(ctx, v: Value, axis: int, rank: int) -> Value:
    """A 1-D ``v`` as a rank-``rank`` tensor whose only non-1 dim is ``axis`` (to broadcast)."""
    return ctx.emit("reshape", [v], {"shape": tuple(v.shape[0] if a == axis else 1
                                                     for a in range(rank))})


def _steps_along(ctx, steps: int, axis: int, rank: int) -> Value:
    """0 .. steps - 1 (int64) laid along ``axis``."""
    return _along(ctx, ctx.emit("arange", [], {"start": 0, "end": steps, "step": 1,
                                               "dtype": DType.int64}), axis, rank)


@onnx_converter("ReverseSequence")
def _reverse_sequence(ctx, node):
    """Each batch element's first sequence_lens[b] steps reversed, the rest kept: a
    gather_elements along the time axis whose index is lens - 1 - t where t < lens, else t
    (built from arange / where; a constant when the lengths are)."""
    x, lens = ctx.value(node, 0), ctx.value(node, 1)
    _index_operand(lens, "sequence_lens")
    rank = x.type.rank
    if rank < 2:
        raise GraphoptError(f"the input must have rank >= 2, got {rank}")
    batch_axis = node.axis_attr("batch_axis", 1, rank)
    time_axis = node.axis_attr("time_axis", 0, rank)
    if {batch_axis, time_axis} != {0, 1} or lens.type.rank != 1 or \
            lens.shape[0] != x.shape[batch_axis]:
        raise GraphoptError(f"batch_axis {batch_axis} and time_axis {time_axis} must be 0 and "
                            f"1, and sequence_lens {list(lens.shape)} hold one length per batch "
                            f"element ({x.shape[batch_axis]})")
    steps = x.shape[time_axis]
    if not isinstance(steps, int):
        raise GraphoptError("ReverseSequence over a symbolic time dim")

    t = _steps_along(ctx, steps, time_axis, rank)
    n = _along(ctx, ctx.cast(lens, DType.int64), batch_axis, rank)
    reversed_t = ctx.emit("sub", [ctx.emit("sub", [n, ctx.scalar(1, DType.int64)]), t])
    index = ctx.emit("where", [ctx.emit("lt", [t, n]), reversed_t, t])
    index = ctx.emit("expand", [index], {"shape": tuple(x.shape)})
    return ctx.emit("gather_elements", [x, index], {"axis": time_axis})


@onnx_converter("TensorScatter")
def _tensor_scatter(ctx, node):
    """The update written into the cache along ``axis`` from write_indices[b] on (modulo the
    cache length in "circular" mode): a scatter_elements whose index is write_indices[b] + i
    along the axis (an index past the cache in "linear" mode is an error at run time)."""
    cache, update = ctx.value(node, 0), ctx.value(node, 1)
    rank = cache.type.rank
    axis = node.axis_attr("axis", -2, rank)
    mode = node.attr("mode", "linear")
    if mode not in ("linear", "circular") or axis == 0 or update.type.rank != rank or any(
            a != axis and cache.shape[a] != update.shape[a] for a in range(rank)):
        raise GraphoptError(f"mode '{mode}' (linear or circular), axis {axis} (not the batch "
                            f"axis) and update {list(update.shape)} must fit the cache "
                            f"{list(cache.shape)} outside the axis")
    steps, length = update.shape[axis], cache.shape[axis]
    if not isinstance(steps, int) or not isinstance(length, int) or steps > length:
        raise GraphoptError(f"the update's {steps} steps must be a static size <= the cache's "
                            f"{length}")

    i = _steps_along(ctx, steps, axis, rank)
    if node.has_input(2):
        start = ctx.value(node, 2)
        _index_operand(start, "write_indices")
        i = ctx.emit("add", [i, _along(ctx, ctx.cast(start, DType.int64), 0, rank)])
    if mode == "circular":
        i = ctx.emit("remainder", [i, ctx.scalar(length, DType.int64)])
    index = ctx.emit("expand", [i], {"shape": tuple(update.shape)})
    return ctx.emit("scatter_elements", [cache, index, update], {"axis": axis,
                                                                 "reduction": "none"})


# ---------------------------------------------------------------------------- ai.onnx.ml
@onnx_converter("ArrayFeatureExtractor", domain="ai.onnx.ml")
def _array_feature_extractor(ctx, node):
    """X[..., indices] (a 1-D X gives [1, len(indices)])."""
    x, index = ctx.value(node, 0), ctx.value(node, 1)
    _index_operand(index, "Y (indices)")
    if x.type.rank == 0:
        raise GraphoptError("ArrayFeatureExtractor of a 0-d tensor")
    flat = index if index.type.rank == 1 else ctx.emit("reshape", [index],
                                                       {"shape": (index.type.numel,)})
    if x.type.rank == 1:
        x = ctx.emit("reshape", [x], {"shape": (1, x.shape[0])})
    return ctx.emit("index", [x, flat], {"axes": (x.type.rank - 1,)})


@onnx_converter("Binarizer", domain="ai.onnx.ml")
def _binarizer(ctx, node):
    """1 where x > threshold, else 0, in x's dtype."""
    x = ctx.value(node, 0)
    above = ctx.emit("gt", [x, ctx.scalar(node.attr("threshold", 0.0), x.dtype)])
    return ctx.cast(above, x.dtype)
