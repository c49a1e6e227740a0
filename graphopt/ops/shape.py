"""Data-movement ops: reshape, permute, expand, squeeze/unsqueeze, slice, concat, split, pad, ..."""

from __future__ import annotations

import sympy
import torch
import torch.nn.functional as F

from graphopt.errors import TypeInferenceError
from graphopt.ir.types import TensorType, dim_expr, dims_equal, normalize_dim
from graphopt.ops._infer import expect_dim, norm_axes, norm_axis, prod
from graphopt.ops.registry import PURE, QDQ_TRANSPARENT, SHAPE_ONLY, AttrSpec, register_op

MOVE = frozenset({PURE, SHAPE_ONLY})
# Q/DQ move through these unchanged (a quantized value reshaped is the reshaped value quantized)
QDQ_MOVE = MOVE | {QDQ_TRANSPARENT}


def _reshape_infer(types, attrs):
    x = types[0]
    shape = list(attrs["shape"])
    if shape.count(-1) > 1:
        raise TypeInferenceError(f"reshape shape {shape} has more than one -1")
    if -1 in shape:
        known = prod(d for d in shape if not (isinstance(d, int) and d == -1))
        numel = x.numel
        if known == 0:
            inferred = 0
        elif isinstance(numel, int) and isinstance(known, int):
            inferred = numel // known
        else:
            inferred = normalize_dim(sympy.simplify(dim_expr(numel) / known))
        shape[shape.index(-1)] = inferred
    if not dims_equal(prod(shape), x.numel):
        raise TypeInferenceError(f"cannot reshape {x} ({x.numel} elements) to {attrs['shape']}")
    return x.with_shape(shape)


@register_op("reshape", inputs=("x",), attrs={"shape": AttrSpec(tuple)}, traits=QDQ_MOVE,
             infer=_reshape_infer)
def reshape(x, shape):
    """Row-major reshape; one -1 dim is inferred."""
    return torch.reshape(x, shape)


def _permute_infer(types, attrs):
    x = types[0]
    perm = attrs["perm"]
    if sorted(perm) != list(range(x.rank)):
        raise TypeInferenceError(f"perm {perm} is not a permutation of {x.rank} axes")
    return x.with_shape([x.shape[p] for p in perm])


@register_op("permute", inputs=("x",), attrs={"perm": AttrSpec(tuple)}, traits=QDQ_MOVE,
             infer=_permute_infer)
def permute(x, perm):
    """Reorder axes: out.shape[i] = x.shape[perm[i]] (transpose is a permute)."""
    return torch.permute(x, perm)


def _expand_infer(types, attrs):
    x = types[0]
    shape = attrs["shape"]
    if len(shape) < x.rank:
        raise TypeInferenceError(f"cannot expand {x} to fewer dims {shape}")
    lead = len(shape) - x.rank
    out = list(shape[:lead])
    for d_in, d_out in zip(x.shape, shape[lead:]):
        if isinstance(d_out, int) and d_out == -1:
            out.append(d_in)
        elif d_in == 1 or dims_equal(d_in, d_out):
            out.append(d_out)
        else:
            raise TypeInferenceError(f"cannot expand {x} to {shape}")
    return x.with_shape(out)


@register_op("expand", inputs=("x",), attrs={"shape": AttrSpec(tuple)}, traits=MOVE,
             infer=_expand_infer)
def expand(x, shape):
    """Broadcast size-1 dims to ``shape`` (-1 keeps a dim); new leading dims allowed."""
    return x.expand(shape)


def _squeeze_infer(types, attrs):
    x = types[0]
    axes = norm_axes(attrs["axes"], x.rank)
    return x.with_shape([d for i, d in enumerate(x.shape) if not (i in axes and d == 1)])


@register_op("squeeze", inputs=("x",), attrs={"axes": AttrSpec(tuple)}, traits=QDQ_MOVE,
             infer=_squeeze_infer)
def squeeze(x, axes):
    """Drop the listed axes that have size 1 (others are kept, as in torch)."""
    return torch.squeeze(x, axes)


def _unsqueeze_infer(types, attrs):
    x = types[0]
    axis = norm_axis(attrs["axis"], x.rank + 1)
    shape = list(x.shape)
    shape.insert(axis, 1)
    return x.with_shape(shape)


@register_op("unsqueeze", inputs=("x",), attrs={"axis": AttrSpec(int)}, traits=QDQ_MOVE,
             infer=_unsqueeze_infer)
def unsqueeze(x, axis):
    """Insert a size-1 axis at ``axis``."""
    return torch.unsqueeze(x, axis)


def _slice_bounds(size, start, end, step):
    """Clamp like Python slicing; symbolic sizes keep end=INT_MAX meaning 'to the end'."""
    big = 2**62
    if isinstance(size, int):
        s, e, _ = slice(start, min(end, big), step).indices(size)
        return s, e, max(0, -(-(e - s) // step))
    if start < 0 or (end < big and end < 0):
        raise TypeInferenceError("negative slice bounds on a symbolic dim are not supported")
    e = size if end >= big else end
    return start, e, normalize_dim((e - start + step - 1) // step)


def _slice_infer(types, attrs):
    x = types[0]
    axis = norm_axis(attrs["axis"], x.rank)
    if attrs["step"] < 1:
        raise TypeInferenceError(f"slice step must be >= 1, got {attrs['step']}")
    _, _, length = _slice_bounds(x.shape[axis], attrs["start"], attrs["end"], attrs["step"])
    shape = list(x.shape)
    shape[axis] = length
    return x.with_shape(shape)


@register_op("slice", inputs=("x",),
             attrs={"axis": AttrSpec(int), "start": 0, "end": 2**63 - 1, "step": 1},
             traits=MOVE, infer=_slice_infer)
def slice_(x, axis, start=0, end=2**63 - 1, step=1):
    """x[..., start:end:step, ...] along ``axis`` (Python clamping of out-of-range bounds)."""
    index = [slice(None)] * x.dim()
    index[axis] = slice(start, end, step)
    return x[tuple(index)]


def _select_infer(types, attrs):
    x = types[0]
    axis = norm_axis(attrs["axis"], x.rank)
    size = x.shape[axis]
    if isinstance(size, int) and not -size <= attrs["index"] < size:
        raise TypeInferenceError(f"index {attrs['index']} out of range for dim {axis} of {x}")
    return x.with_shape([d for i, d in enumerate(x.shape) if i != axis])


@register_op("select", inputs=("x",), attrs={"axis": AttrSpec(int), "index": AttrSpec(int)},
             traits=MOVE, infer=_select_infer)
def select(x, axis, index):
    """x[..., index, ...]: removes ``axis``."""
    return torch.select(x, axis, index)


def _concat_infer(types, attrs):
    first = types[0]
    axis = norm_axis(attrs["axis"], first.rank)
    total = 0
    for t in types:
        if t.rank != first.rank:
            raise TypeInferenceError(f"concat operands differ in rank: {first} vs {t}")
        for i, (a, b) in enumerate(zip(first.shape, t.shape)):
            if i != axis:
                expect_dim(a, b, f"concat operands differ on dim {i}")
        total = total + t.shape[axis]
    shape = list(first.shape)
    shape[axis] = normalize_dim(total)
    dtype = first.dtype
    for t in types[1:]:
        if t.dtype != dtype:
            raise TypeInferenceError(f"concat operands differ in dtype: {first} vs {t}")
    return first.with_shape(shape)


@register_op("concat", inputs=("xs*",), attrs={"axis": AttrSpec(int)}, traits=MOVE,
             infer=_concat_infer)
def concat(*xs, axis):
    """Concatenate along ``axis`` (operands share dtype and all other dims)."""
    return torch.cat(xs, axis)


def _split_infer(types, attrs):
    x = types[0]
    axis = norm_axis(attrs["axis"], x.rank)
    sizes = attrs["sizes"]
    expect_dim(normalize_dim(sum(sizes)), x.shape[axis], f"split sizes {sizes} must sum to dim")
    outs = []
    for size in sizes:
        shape = list(x.shape)
        shape[axis] = size
        outs.append(x.with_shape(shape))
    return outs


@register_op("split", inputs=("x",), attrs={"axis": AttrSpec(int), "sizes": AttrSpec(tuple)},
             traits=MOVE, infer=_split_infer)
def split(x, axis, sizes):
    """Split along ``axis`` into pieces of the given sizes (one output per piece)."""
    return tuple(torch.split(x, list(sizes), axis))


def _pad_infer(types, attrs):
    x = types[0]
    pads = attrs["pads"]
    if len(pads) % 2 or len(pads) // 2 > x.rank:
        raise TypeInferenceError(f"pads {pads} must be (lo, hi) pairs for at most {x.rank} dims")
    shape = list(x.shape)
    for i in range(len(pads) // 2):
        axis = x.rank - 1 - i  # torch order: last dim first
        shape[axis] = normalize_dim(shape[axis] + pads[2 * i] + pads[2 * i + 1])
    return x.with_shape(shape)


@register_op("pad", inputs=("x",),
             attrs={"pads": AttrSpec(tuple, doc="torch order: (last_lo, last_hi, prev_lo, ...)"),
                    "mode": "constant", "value": 0.0},
             traits=QDQ_MOVE, infer=_pad_infer)
def pad(x, pads, mode="constant", value=0.0):
    """Pad trailing dims; mode constant/reflect/replicate/circular. Negative pads crop."""
    if mode == "constant":
        return F.pad(x, pads, mode="constant", value=value)
    return F.pad(x, pads, mode=mode)


@register_op("flip", inputs=("x",), attrs={"axes": AttrSpec(tuple)}, traits=MOVE,
             infer=lambda types, attrs: types[0])
def flip(x, axes):
    """Reverse the order of elements along ``axes``."""
    return torch.flip(x, axes)


def _tile_infer(types, attrs):
    x = types[0]
    reps = attrs["repeats"]
    if len(reps) < x.rank:
        raise TypeInferenceError(f"repeats {reps} shorter than rank of {x}")
    shape = [1] * (len(reps) - x.rank) + list(x.shape)
    return x.with_shape([normalize_dim(d * r) for d, r in zip(shape, reps)])


@register_op("tile", inputs=("x",), attrs={"repeats": AttrSpec(tuple)}, traits=MOVE,
             infer=_tile_infer)
def tile(x, repeats):
    """Repeat the whole tensor along each dim (torch.Tensor.repeat semantics)."""
    return x.repeat(repeats)


def _roll_infer(types, attrs):
    return types[0]


@register_op("roll", inputs=("x",), attrs={"shifts": AttrSpec(tuple), "axes": AttrSpec(tuple)},
             traits=MOVE, infer=_roll_infer)
def roll(x, shifts, axes):
    """Circular shift along axes."""
    return torch.roll(x, shifts, axes)
