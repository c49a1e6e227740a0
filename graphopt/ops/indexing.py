"""Indexing and tensor-creation ops: embedding, gather, index_select, advanced index, cumsum,
arange/full (kept as ops only when their shape is symbolic; static ones become constants)."""

from __future__ import annotations

import torch

from graphopt.errors import TypeInferenceError
from graphopt.ir.dtypes import DType
from graphopt.ir.types import TensorType
from graphopt.ops._infer import broadcast_shapes, ceildiv, expect_rank, norm_axis
from graphopt.ops.registry import PURE, QUANTIZABLE, TABLE, AttrSpec, WeightSpec, register_op


def _expect_index(t: TensorType, what: str) -> None:
    if t.dtype not in (DType.int64, DType.int32):
        raise TypeInferenceError(f"{what} must be int32/int64 indices, got {t}")


def _embedding_infer(types, attrs):
    weight, indices = types
    expect_rank(weight, 2, "embedding weight")
    _expect_index(indices, "embedding indices")
    return TensorType(indices.shape + (weight.shape[1],), weight.dtype)


# A gather moves rows: 0 FLOPs in the cost model, like the other gathers below.
@register_op("embedding", inputs=("weight", "indices"), attrs={"padding_idx": -1},
             traits={PURE, QUANTIZABLE}, weights=WeightSpec(slot=0, layout=TABLE),
             flops_per_element=0, infer=_embedding_infer)
def embedding(weight, indices, padding_idx=-1):
    """Rows of ``weight`` picked by ``indices`` (padding_idx only matters for training)."""
    return torch.nn.functional.embedding(indices, weight)


def _gather_infer(types, attrs):
    x, index = types
    _expect_index(index, "gather index")
    if x.rank != index.rank:
        raise TypeInferenceError(f"gather: index {index} must have the rank of {x}")
    norm_axis(attrs["axis"], x.rank)
    return TensorType(index.shape, x.dtype)


@register_op("gather", inputs=("x", "index"), attrs={"axis": AttrSpec(int)}, flops_per_element=0,
             infer=_gather_infer)
def gather(x, index, axis):
    """out[i][j] = x[index[i][j]][j] for axis 0 (torch.gather semantics)."""
    return torch.gather(x, axis, index)


def _index_select_infer(types, attrs):
    x, index = types
    _expect_index(index, "index_select index")
    expect_rank(index, (0, 1), "index_select index")
    axis = norm_axis(attrs["axis"], x.rank)
    shape = list(x.shape)
    if index.rank == 0:
        del shape[axis]
    else:
        shape[axis] = index.shape[0]
    return x.with_shape(shape)


@register_op("index_select", inputs=("x", "index"), attrs={"axis": AttrSpec(int)},
             flops_per_element=0, infer=_index_select_infer)
def index_select(x, index, axis):
    """Take entries of ``index`` (1-D, or 0-D which drops the axis) along ``axis``."""
    if index.dim() == 0:
        return x.index_select(axis, index.reshape(1)).squeeze(axis)
    return x.index_select(axis, index)


def _index_infer(types, attrs):
    x, *indices = types
    axes = attrs["axes"]
    if len(axes) != len(indices) or list(axes) != sorted(set(axes)):
        raise TypeInferenceError(f"index: axes {axes} must be increasing, one per index tensor")
    for t in indices:
        if t.dtype not in (DType.int64, DType.int32, DType.bool):
            raise TypeInferenceError(f"index tensors must be int or bool, got {t}")
        if t.dtype is DType.bool:
            raise TypeInferenceError("boolean-mask indexing has a data-dependent shape")
    for a in axes:
        norm_axis(a, x.rank)
    bshape = broadcast_shapes(*(t.shape for t in indices))
    adjacent = list(axes) == list(range(axes[0], axes[0] + len(axes)))
    rest_before = list(x.shape[: axes[0]])
    rest_after = [d for i, d in enumerate(x.shape) if i > axes[0] and i not in axes]
    if adjacent:
        shape = rest_before + list(bshape) + rest_after
    else:  # numpy rule: non-adjacent advanced indices move the result dims to the front
        shape = list(bshape) + [d for i, d in enumerate(x.shape) if i not in axes]
    return x.with_shape(shape)


@register_op("index", inputs=("x", "indices*"), attrs={"axes": AttrSpec(tuple)},
             flops_per_element=0, infer=_index_infer)
def index(x, *indices, axes):
    """Advanced indexing x[..., idx0, ..., idx1, ...]: ``axes[k]`` is where ``indices[k]`` goes."""
    key = [slice(None)] * (max(axes) + 1)
    for a, idx in zip(axes, indices):
        key[a] = idx
    return x[tuple(key)]


@register_op("cumsum", inputs=("x",), attrs={"axis": AttrSpec(int), "dtype": AttrSpec((DType, type(None)), None)},
             infer=lambda types, attrs: types[0].with_dtype(
                 attrs["dtype"] or (DType.int64 if not types[0].dtype.is_floating else types[0].dtype)))
def cumsum(x, axis, dtype=None):
    """Inclusive prefix sum along ``axis`` (ints accumulate in int64, as torch does)."""
    return torch.cumsum(x, axis, dtype=None if dtype is None else dtype.torch)


def _arange_infer(types, attrs):
    length = ceildiv(attrs["end"] - attrs["start"], attrs["step"])
    return TensorType((length,), attrs["dtype"])


@register_op("arange", inputs=(),
             attrs={"start": AttrSpec((int, float), 0), "end": AttrSpec(object),
                    "step": AttrSpec((int, float), 1), "dtype": DType.int64},
             traits=frozenset({PURE}), flops_per_element=0, infer=_arange_infer)
def arange(start=0, end=None, step=1, dtype=DType.int64):
    """[start, start+step, ...) up to end; kept as an op when ``end`` is a size symbol."""
    return torch.arange(start, end, step, dtype=dtype.torch)


@register_op("full", inputs=(),
             attrs={"shape": AttrSpec(tuple), "value": AttrSpec(object), "dtype": AttrSpec(DType)},
             traits=frozenset({PURE}), flops_per_element=0,
             infer=lambda types, attrs: TensorType(attrs["shape"], attrs["dtype"]))
def full(shape, value, dtype):
    """A tensor of ``shape`` filled with ``value``; kept as an op when the shape is symbolic."""
    return torch.full(shape, value, dtype=dtype.torch)


@register_op("triu", inputs=("x",), attrs={"diagonal": 0}, infer=lambda t, a: t[0])
def triu(x, diagonal=0):
    """Upper triangle of the last two dims (others zeroed)."""
    return torch.triu(x, diagonal)


@register_op("tril", inputs=("x",), attrs={"diagonal": 0}, infer=lambda t, a: t[0])
def tril(x, diagonal=0):
    """Lower triangle of the last two dims (others zeroed)."""
    return torch.tril(x, diagonal)
