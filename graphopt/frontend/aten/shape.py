"""Converters for data-movement, indexing and tensor-creation ATen ops."""

from __future__ import annotations

import sympy
import torch

from graphopt.errors import GraphoptError
from graphopt.frontend.torch_export import converter
from graphopt.ir.attrs import has_symbols
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Value
from graphopt.ir.types import normalize_dim
from graphopt.ops._infer import norm_axis


def _dims(values) -> tuple:
    return tuple(normalize_dim(v) for v in values)


@converter("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default")
def _reshape(ctx, x, shape):
    return ctx.emit("reshape", [x], {"shape": _dims(shape)})


@converter("aten.flatten.using_ints")
def _flatten(ctx, x, start_dim=0, end_dim=-1):
    if x.type.rank == 0:
        return ctx.emit("reshape", [x], {"shape": (1,)})
    start, end = norm_axis(start_dim, x.type.rank), norm_axis(end_dim, x.type.rank)
    shape = x.shape[:start] + (-1,) + x.shape[end + 1:]
    return ctx.emit("reshape", [x], {"shape": shape})


@converter("aten.unflatten.int")
def _unflatten(ctx, x, dim, sizes):
    axis = norm_axis(dim, x.type.rank)
    shape = x.shape[:axis] + _dims(sizes) + x.shape[axis + 1:]
    return ctx.emit("reshape", [x], {"shape": shape})


@converter("aten.permute.default")
def _permute(ctx, x, dims):
    rank = x.type.rank
    return ctx.emit("permute", [x], {"perm": tuple(norm_axis(d, rank) for d in dims)})


@converter("aten.transpose.int")
def _transpose(ctx, x, dim0, dim1):
    rank = x.type.rank
    perm = list(range(rank))
    a, b = norm_axis(dim0, rank), norm_axis(dim1, rank)
    perm[a], perm[b] = perm[b], perm[a]
    return ctx.emit("permute", [x], {"perm": tuple(perm)})


@converter("aten.t.default", "aten.numpy_T.default")
def _t(ctx, x):
    if x.type.rank < 2:
        return x
    return ctx.emit("permute", [x], {"perm": tuple(range(x.type.rank))[::-1]})


@converter("aten.expand.default")
def _expand(ctx, x, size, implicit=False):
    return ctx.emit("expand", [x], {"shape": _dims(size)})


@converter("aten.expand_as.default")
def _expand_as(ctx, x, other):
    return ctx.emit("expand", [x], {"shape": other.shape})


@converter("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def _squeeze(ctx, x, dims=None):
    if dims is None:
        dims = [i for i, d in enumerate(x.shape) if d == 1]
    elif isinstance(dims, int):
        dims = [dims]
    return ctx.emit("squeeze", [x], {"axes": tuple(dims)})


@converter("aten.unsqueeze.default")
def _unsqueeze(ctx, x, dim):
    return ctx.emit("unsqueeze", [x], {"axis": norm_axis(dim, x.type.rank + 1)})


@converter("aten.slice.Tensor")
def _slice(ctx, x, dim=0, start=None, end=None, step=1):
    start = 0 if start is None else start
    end = 2**63 - 1 if end is None else end
    if not has_symbols(start) and not has_symbols(end):
        start, end = int(start), int(end)
    return ctx.emit("slice", [x], {"axis": norm_axis(dim, x.type.rank), "start": start,
                                   "end": end, "step": step})


@converter("aten.narrow.default")
def _narrow(ctx, x, dim, start, length):
    return ctx.emit("slice", [x], {"axis": norm_axis(dim, x.type.rank), "start": start,
                                   "end": start + length})


@converter("aten.select.int")
def _select(ctx, x, dim, index):
    return ctx.emit("select", [x], {"axis": norm_axis(dim, x.type.rank), "index": int(index)})


@converter("aten.cat.default", "aten.concat.default")
def _cat(ctx, tensors, dim=0):
    tensors = [t for t in tensors if not (t.type.rank == 1 and t.shape[0] == 0)] or tensors[:1]
    if len(tensors) == 1:
        return tensors[0]
    return ctx.emit("concat", tensors, {"axis": norm_axis(dim, tensors[0].type.rank)})


@converter("aten.stack.default")
def _stack(ctx, tensors, dim=0):
    axis = norm_axis(dim, tensors[0].type.rank + 1)
    parts = [ctx.emit("unsqueeze", [t], {"axis": axis}) for t in tensors]
    return parts[0] if len(parts) == 1 else ctx.emit("concat", parts, {"axis": axis})


def _split_sizes(total, split_size):
    if not isinstance(total, int):
        raise GraphoptError("split of a symbolic dim by chunk size needs static sizes")
    sizes = [split_size] * (total // split_size)
    if total % split_size:
        sizes.append(total % split_size)
    return sizes


@converter("aten.split.Tensor")
def _split(ctx, x, split_size, dim=0):
    axis = norm_axis(dim, x.type.rank)
    sizes = _split_sizes(x.shape[axis], split_size)
    out = ctx.emit("split", [x], {"axis": axis, "sizes": tuple(sizes)})
    return out if isinstance(out, tuple) else (out,)


@converter("aten.split_with_sizes.default")
def _split_with_sizes(ctx, x, split_sizes, dim=0):
    axis = norm_axis(dim, x.type.rank)
    out = ctx.emit("split", [x], {"axis": axis, "sizes": _dims(split_sizes)})
    return out if isinstance(out, tuple) else (out,)


@converter("aten.chunk.default")
def _chunk(ctx, x, chunks, dim=0):
    axis = norm_axis(dim, x.type.rank)
    size = -(-x.shape[axis] // chunks)
    return _split(ctx, x, size, axis)


@converter("aten.unbind.int")
def _unbind(ctx, x, dim=0):
    axis = norm_axis(dim, x.type.rank)
    return tuple(ctx.emit("select", [x], {"axis": axis, "index": i}) for i in range(x.shape[axis]))


@converter("getitem")
def _getitem(ctx, seq, index):
    if not isinstance(seq, (tuple, list)):
        raise GraphoptError(f"getitem on a non-sequence {seq!r}")
    item = seq[index]
    if item is None:
        raise GraphoptError(
            f"output {index} of a multi-output op is used, but graphopt maps only the "
            "primary outputs of this op"
        )
    return item


@converter("aten.constant_pad_nd.default")
def _constant_pad(ctx, x, pad, value=0.0):
    return ctx.emit("pad", [x], {"pads": _dims(pad), "mode": "constant", "value": float(value)})


@converter("aten.pad.default")
def _pad(ctx, x, pad, mode="constant", value=None):
    return ctx.emit("pad", [x], {"pads": _dims(pad), "mode": mode,
                                 "value": float(value or 0.0)})


for _mode in ("reflection", "replication"):
    for _n in (1, 2, 3):
        converter(f"aten.{_mode}_pad{_n}d.default")(
            (lambda mode: lambda ctx, x, padding: ctx.emit(
                "pad", [x], {"pads": _dims(padding), "mode": mode}))(
                "reflect" if _mode == "reflection" else "replicate"))


@converter("aten.flip.default")
def _flip(ctx, x, dims):
    return ctx.emit("flip", [x], {"axes": tuple(norm_axis(d, x.type.rank) for d in dims)})


@converter("aten.repeat.default")
def _repeat(ctx, x, repeats):
    return ctx.emit("tile", [x], {"repeats": _dims(repeats)})


@converter("aten.roll.default")
def _roll(ctx, x, shifts, dims=()):
    if not dims:
        flat = ctx.emit("reshape", [x], {"shape": (-1,)})
        rolled = ctx.emit("roll", [flat], {"shifts": tuple(shifts), "axes": (0,)})
        return ctx.emit("reshape", [rolled], {"shape": x.shape})
    return ctx.emit("roll", [x], {"shifts": tuple(shifts), "axes": tuple(dims)})


# ------------------------------------------------------------------------------- indexing
@converter("aten.embedding.default")
def _embedding(ctx, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return ctx.emit("embedding", [weight, indices], {"padding_idx": padding_idx})


@converter("aten.gather.default")
def _gather(ctx, x, dim, index, sparse_grad=False):
    return ctx.emit("gather", [x, index], {"axis": norm_axis(dim, x.type.rank)})


@converter("aten.index_select.default")
def _index_select(ctx, x, dim, index):
    return ctx.emit("index_select", [x, index], {"axis": norm_axis(dim, x.type.rank)})


@converter("aten.index.Tensor")
def _index(ctx, x, indices):
    axes = tuple(i for i, idx in enumerate(indices) if idx is not None)
    tensors = [idx for idx in indices if idx is not None]
    if any(t.dtype is DType.bool for t in tensors):
        raise GraphoptError("boolean-mask indexing gives a data-dependent shape; use "
                            "torch.where or masked_fill instead")
    return ctx.emit("index", [x, *tensors], {"axes": axes})


@converter("aten.cumsum.default")
def _cumsum(ctx, x, dim, dtype=None):
    return ctx.emit("cumsum", [x], {"axis": norm_axis(dim, x.type.rank),
                                    "dtype": None if dtype is None else DType.from_torch(dtype)})


@converter("aten.diff.default")
def _diff(ctx, x, n=1, dim=-1, prepend=None, append=None):
    axis = norm_axis(dim, x.type.rank)
    parts = [p for p in (prepend, x, append) if p is not None]
    out = x if len(parts) == 1 else ctx.emit("concat", parts, {"axis": axis})
    for _ in range(n):
        hi = ctx.emit("slice", [out], {"axis": axis, "start": 1})
        lo = ctx.emit("slice", [out], {"axis": axis, "start": 0, "end": -1})
        out = ctx.emit("sub" if out.dtype is not DType.bool else "logical_xor", [hi, lo])
    return out


@converter("aten.triu.default")
def _triu(ctx, x, diagonal=0):
    return ctx.emit("triu", [x], {"diagonal": diagonal})


@converter("aten.tril.default")
def _tril(ctx, x, diagonal=0):
    return ctx.emit("tril", [x], {"diagonal": diagonal})


# ------------------------------------------------------------------------------ creation
CREATION = [
    "aten.arange.default", "aten.arange.start", "aten.arange.start_step", "aten.full.default",
    "aten.zeros.default", "aten.ones.default", "aten.scalar_tensor.default",
    "aten.zeros_like.default", "aten.ones_like.default", "aten.full_like.default",
    "aten.new_ones.default", "aten.new_zeros.default", "aten.new_full.default",
    "aten.empty_like.default", "aten.new_empty.default", "aten.empty.memory_format",
]


def _static(x) -> bool:
    if isinstance(x, Value):
        return x.type.is_static
    if isinstance(x, (list, tuple)):
        return all(_static(v) for v in x)
    if isinstance(x, sympy.Expr):
        return not x.free_symbols
    return True


def _creation(ctx, *args, **kwargs):
    """Static creation ops are evaluated now into constants; symbolic ones become ops."""
    target = str(ctx.fx_node.target)
    kwargs.pop("device", None)
    kwargs.pop("pin_memory", None)
    kwargs.pop("layout", None)
    if _static(list(args)) and _static(list(kwargs.values())):
        real = [torch.empty(a.shape, dtype=a.dtype.torch) if isinstance(a, Value) else a
                for a in args]
        result = ctx.fx_node.target(*real, **kwargs)
        if "empty" in target:
            result = torch.zeros_like(result)  # uninitialized memory has no meaning; zero it
        return ctx.constant(result, name=ctx.fx_node.name)
    meta = ctx.meta_type()
    if target.startswith("aten.arange"):
        nums = [a for a in args if not isinstance(a, Value)]
        start, end, step = (0, nums[0], 1) if len(nums) == 1 else (nums + [1])[:3]
        return ctx.emit("arange", [], {"start": start, "end": end, "step": step,
                                       "dtype": meta.dtype})
    fill = {"zeros": 0, "ones": 1, "empty": 0}
    value = next((v for k, v in fill.items() if k in target), None)
    if value is None:
        value = args[-1] if not isinstance(args[-1], (list, tuple)) else kwargs.get("fill_value")
    return ctx.emit("full", [], {"shape": meta.shape, "value": value, "dtype": meta.dtype})


for _target in CREATION:
    converter(_target)(_creation)
