"""Ops with ONNX semantics that no torch-traced model produces but ONNX models use.

The ONNX importer maps each ONNX op to existing IR ops where the semantics agree; these ops
cover the rest (negative indices in GatherElements/GatherND/Scatter*, C's fmod, Shape as a
tensor, TopK, Einsum, ...). Each reference implementation follows the ONNX specification; the
ONNX backend node tests check them through ``benchmarks/onnx_backend_coverage.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from graphopt.errors import TypeInferenceError
from graphopt.ir.dtypes import DType
from graphopt.ir.types import TensorType
from graphopt.ops._infer import (
    broadcast_binary,
    broadcast_shapes,
    expect_rank,
    float_of_input,
    norm_axis,
    promote,
    same_as_input,
)
from graphopt.ops.registry import (
    ELEMENTWISE_BINARY,
    ELEMENTWISE_UNARY,
    LAYOUT_SENSITIVE,
    NORMALIZATION,
    PURE,
    AttrSpec,
    register_op,
)

INDEX_DTYPES = (DType.int32, DType.int64)


def _wrap_negative(index: torch.Tensor, size: int) -> torch.Tensor:
    return torch.where(index < 0, index + size, index)


# ----------------------------------------------------------------------------------- shapes
def _shape_infer(types, attrs):
    rank = types[0].rank
    end = attrs["end"]
    n = len(range(rank)[attrs["start"]:end])
    return TensorType((n,), DType.int64)


@register_op("shape", inputs=("x",), attrs={"start": 0, "end": AttrSpec((int, type(None)), None)},
             flops_per_element=0, infer=_shape_infer)
def shape(x, start=0, end=None):
    """x's dims[start:end] as an int64 tensor (ONNX Shape)."""
    return torch.tensor(x.shape[start:end], dtype=torch.int64)


# ------------------------------------------------------------------------------ elementwise
_EXTRA_FLOAT_UNARY = {
    "acos": torch.acos, "asin": torch.asin, "acosh": torch.acosh, "asinh": torch.asinh,
    "atanh": torch.atanh, "cosh": torch.cosh, "sinh": torch.sinh,
}


def _declare_unary(name, fn):
    def reference(x):
        return fn(x)

    reference.__name__ = name
    reference.__doc__ = f"Elementwise {name}(x)."
    register_op(name, inputs=("x",), traits=ELEMENTWISE_UNARY, infer=float_of_input)(reference)


for _name, _fn in _EXTRA_FLOAT_UNARY.items():
    _declare_unary(_name, _fn)


@register_op("fmod", inputs=("a", "b"), traits=ELEMENTWISE_BINARY, infer=broadcast_binary)
def fmod(a, b):
    """C's fmod: the remainder has the sign of the dividend (ONNX Mod with fmod=1)."""
    return torch.fmod(a, b)


@register_op("bitshift", inputs=("a", "b"),
             attrs={"direction": AttrSpec(str, choices=("LEFT", "RIGHT"))},
             traits=ELEMENTWISE_BINARY, infer=broadcast_binary)
def bitshift(a, b, direction):
    """a << b ("LEFT") or a >> b ("RIGHT") on unsigned integers."""
    if direction == "LEFT":
        return torch.bitwise_left_shift(a, b)
    return torch.bitwise_right_shift(a, b)


@register_op("isinf", inputs=("x",), attrs={"detect_positive": True, "detect_negative": True},
             traits=ELEMENTWISE_UNARY, infer=lambda t, a: t[0].with_dtype(DType.bool))
def isinf(x, detect_positive=True, detect_negative=True):
    """True at +inf (if detect_positive) and -inf (if detect_negative)."""
    if detect_positive and detect_negative:
        return torch.isinf(x)
    if detect_positive:
        return torch.isposinf(x)
    if detect_negative:
        return torch.isneginf(x)
    return torch.zeros_like(x, dtype=torch.bool)


@register_op("prelu", inputs=("x", "slope"), traits=ELEMENTWISE_BINARY,
             infer=lambda t, a: t[0].with_shape(broadcast_shapes(t[0].shape, t[1].shape)))
def prelu(x, slope):
    """x < 0 ? slope * x : x, with ``slope`` broadcast numpy-style (ONNX PRelu)."""
    return torch.where(x < 0, x * slope, x)


@register_op("thresholded_relu", inputs=("x",), attrs={"alpha": 1.0}, traits=ELEMENTWISE_UNARY,
             infer=same_as_input)
def thresholded_relu(x, alpha=1.0):
    """x > alpha ? x : 0."""
    return torch.where(x > alpha, x, torch.zeros_like(x))


@register_op("shrink", inputs=("x",), attrs={"bias": 0.0, "lambd": 0.5},
             traits=ELEMENTWISE_UNARY, infer=same_as_input)
def shrink(x, bias=0.0, lambd=0.5):
    """x < -lambd ? x + bias : (x > lambd ? x - bias : 0)."""
    zero = torch.zeros_like(x)
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero))


# --------------------------------------------------------------------------- normalizations
@register_op("hardmax", inputs=("x",), attrs={"axis": AttrSpec(int)}, infer=same_as_input)
def hardmax(x, axis):
    """1 at the first maximum along ``axis``, 0 elsewhere."""
    index = torch.argmax(x, axis, keepdim=True)
    return torch.zeros_like(x).scatter(axis, index, 1)


@register_op("lrn", inputs=("x",),
             attrs={"size": AttrSpec(int), "alpha": 1e-4, "beta": 0.75, "bias": 1.0},
             traits={PURE, LAYOUT_SENSITIVE}, infer=same_as_input)
def lrn(x, size, alpha=1e-4, beta=0.75, bias=1.0):
    """x / (bias + alpha/size * sum of x^2 over the channel window)^beta (ONNX LRN).

    The window is [c - floor((size-1)/2), c + ceil((size-1)/2)], which differs from
    torch's local_response_norm for even sizes.
    """
    lo = (size - 1) // 2
    channels = x.shape[1]
    sq = x * x
    pad = [0, 0] * (x.dim() - 2) + [lo, size - 1 - lo]
    padded = F.pad(sq, pad)
    window = sum(padded[:, i:i + channels] for i in range(size))
    return x / (bias + alpha / size * window) ** beta


def _rms_norm_infer(types, attrs):
    x, w = types
    norm_axis(attrs["axis"], x.rank)
    if w is not None:
        broadcast_shapes(x.shape, w.shape)
    return x


@register_op("rms_norm", inputs=("x", "weight?"), attrs={"axis": -1, "eps": 1e-5},
             traits={PURE, NORMALIZATION}, flops_per_element=5, infer=_rms_norm_infer)
def rms_norm(x, weight=None, axis=-1, eps=1e-5):
    """x / sqrt(mean(x^2 over dims >= axis) + eps) * weight, accumulated in float32."""
    axes = list(range(axis % x.dim(), x.dim()))
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(axes, keepdim=True) + eps)
    y = y.to(x.dtype)
    return y if weight is None else y * weight


# ---------------------------------------------------------------------------------- indexing
def _gather_elements_infer(types, attrs):
    x, index = types
    if index.dtype not in INDEX_DTYPES or index.rank != x.rank:
        raise TypeInferenceError(f"gather_elements index {index} must be int, rank of {x}")
    norm_axis(attrs["axis"], x.rank)
    return TensorType(index.shape, x.dtype)


@register_op("gather_elements", inputs=("x", "index"), attrs={"axis": AttrSpec(int)},
             flops_per_element=0, infer=_gather_elements_infer)
def gather_elements(x, index, axis):
    """torch.gather that also accepts negative indices (ONNX GatherElements)."""
    return torch.gather(x, axis, _wrap_negative(index.long(), x.shape[axis]))


def _gather_nd_infer(types, attrs):
    x, indices = types
    b = attrs["batch_dims"]
    k = indices.shape[-1]
    if indices.dtype not in INDEX_DTYPES or not isinstance(k, int) or b + k > x.rank:
        raise TypeInferenceError(f"gather_nd: bad indices {indices} for {x}")
    return x.with_shape(tuple(indices.shape[:-1]) + tuple(x.shape[b + k:]))


@register_op("gather_nd", inputs=("x", "indices"), attrs={"batch_dims": 0},
             flops_per_element=0, infer=_gather_nd_infer)
def gather_nd(x, indices, batch_dims=0):
    """ONNX GatherND: index tuples of length k on the last axis of ``indices``."""
    b = batch_dims
    k = indices.shape[-1]
    batch = x.shape[:b]
    nb = 1
    for d in batch:
        nb *= d
    xb = x.reshape((nb,) + x.shape[b:])
    ib = indices.long().reshape(nb, -1, k)
    rows = torch.arange(nb).view(nb, 1).expand(nb, ib.shape[1])
    key = [rows] + [_wrap_negative(ib[..., j], x.shape[b + j]) for j in range(k)]
    out = xb[tuple(key)]
    return out.reshape(tuple(indices.shape[:-1]) + x.shape[b + k:])


_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}
SCATTER_ATTRS = {"reduction": AttrSpec(str, "none", "none, add, mul, max or min")}


@register_op("scatter_elements", inputs=("x", "index", "updates"),
             attrs={"axis": AttrSpec(int), **SCATTER_ATTRS}, infer=same_as_input)
def scatter_elements(x, index, updates, axis, reduction="none"):
    """Write (or combine) ``updates`` into a copy of x at ``index`` along ``axis``."""
    index = _wrap_negative(index.long(), x.shape[axis])
    if reduction == "none":
        return x.scatter(axis, index, updates)
    return x.scatter_reduce(axis, index, updates, _SCATTER_REDUCE[reduction], include_self=True)


@register_op("scatter_nd", inputs=("x", "indices", "updates"), attrs=SCATTER_ATTRS,
             infer=same_as_input)
def scatter_nd(x, indices, updates, reduction="none"):
    """ONNX ScatterND: ``updates`` slices written at the index tuples of ``indices``."""
    k = indices.shape[-1]
    idx = indices.long().reshape(-1, k)
    idx = torch.stack([_wrap_negative(idx[:, j], x.shape[j]) for j in range(k)], 1)
    upd = updates.reshape((idx.shape[0],) + x.shape[k:])
    out = x.clone()
    if reduction == "none":
        out[tuple(idx.t())] = upd
        return out
    for i in range(idx.shape[0]):
        key = tuple(idx[i].tolist())
        if reduction == "add":
            out[key] = out[key] + upd[i]
        elif reduction == "mul":
            out[key] = out[key] * upd[i]
        elif reduction == "max":
            out[key] = torch.maximum(out[key], upd[i])
        else:
            out[key] = torch.minimum(out[key], upd[i])
    return out


def _topk_infer(types, attrs):
    x = types[0]
    axis = norm_axis(attrs["axis"], x.rank)
    shape = list(x.shape)
    shape[axis] = attrs["k"]
    return [x.with_shape(shape), TensorType(tuple(shape), DType.int64)]


@register_op("topk", inputs=("x",),
             attrs={"k": AttrSpec(int), "axis": -1, "largest": True, "sorted": True},
             infer=_topk_infer)
def topk(x, k, axis=-1, largest=True, sorted=True):
    """The k largest (or smallest) entries along ``axis`` and their indices; ties keep the
    lower index first (ONNX TopK)."""
    # A stable sort gives ONNX's tie order; torch.topk does not promise one.
    order = torch.sort(x, dim=axis, descending=largest, stable=True).indices
    index = order.narrow(axis, 0, k)
    return torch.gather(x, axis, index), index


# ------------------------------------------------------------------------------ linear algebra
def _parse_einsum(equation: str, ranks: list[int]):
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise TypeInferenceError(f"einsum '{equation}' has {len(terms)} operands, got "
                                 f"{len(ranks)}")
    if not arrow:
        counts = {}
        for t in terms:
            for c in t.replace("...", ""):
                counts[c] = counts.get(c, 0) + 1
        rhs = ("..." if any("..." in t for t in terms) else "") + "".join(
            sorted(c for c, n in counts.items() if n == 1))
    return terms, rhs


def _einsum_infer(types, attrs):
    terms, rhs = _parse_einsum(attrs["equation"], [t.rank for t in types])
    sizes: dict[str, object] = {}
    ellipsis = []
    for term, t in zip(terms, types):
        letters = term.replace("...", "")
        n_ell = t.rank - len(letters)
        if "..." in term:
            pos = term.index("...")
            ellipsis.append(tuple(t.shape[pos:pos + n_ell]))
            dims = list(t.shape[:pos]) + list(t.shape[pos + n_ell:])
        elif n_ell:
            raise TypeInferenceError(f"einsum term '{term}' does not match {t}")
        else:
            dims = list(t.shape)
        for c, d in zip(letters, dims):
            if c in sizes and sizes[c] != d and d != 1:
                if sizes[c] == 1:
                    sizes[c] = d
                    continue
                raise TypeInferenceError(f"einsum '{attrs['equation']}': {c} is {sizes[c]} "
                                         f"and {d}")
            sizes.setdefault(c, d)
    ell = broadcast_shapes(*ellipsis) if ellipsis else ()
    out = []
    for part in rhs.split("..."):
        out.append([sizes[c] for c in part])
    shape = out[0] + (list(ell) + out[1] if len(out) > 1 else [])
    return TensorType(tuple(shape), promote(*types))


@register_op("einsum", inputs=("xs*",), attrs={"equation": AttrSpec(str)}, infer=_einsum_infer)
def einsum(*xs, equation):
    """Einstein summation (numpy/ONNX equation syntax, implicit output allowed)."""
    return torch.einsum(equation, *xs)


@register_op("det", inputs=("x",), infer=lambda t, a: t[0].with_shape(t[0].shape[:-2]))
def det(x):
    """Determinant of the trailing square matrices."""
    return torch.linalg.det(x)


@register_op("cumprod", inputs=("x",), attrs={"axis": AttrSpec(int)}, infer=same_as_input)
def cumprod(x, axis):
    """Inclusive prefix product along ``axis`` (in x's dtype)."""
    return torch.cumprod(x, axis, dtype=x.dtype)


# ------------------------------------------------------------------------------------ vision
def _grid_sample_infer(types, attrs):
    x, grid = types
    expect_rank(x, (4, 5), "grid_sample input")
    return x.with_shape((x.shape[0], x.shape[1]) + tuple(grid.shape[1:-1]))


@register_op("grid_sample", inputs=("x", "grid"),
             attrs={"mode": "bilinear", "padding_mode": "zeros", "align_corners": False},
             infer=_grid_sample_infer)
def grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False):
    """Sample x at normalized grid locations (torch's grid_sample)."""
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode,
                         align_corners=align_corners)


# -------------------------------------------------------------------------------------- loss
def _nll_infer(types, attrs):
    x, target, weight = types
    if attrs["reduction"] == "none":
        return x.with_shape(target.shape)
    return x.with_shape(())


@register_op("nll_loss", inputs=("x", "target", "weight?"),
             attrs={"reduction": "mean", "ignore_index": AttrSpec((int, type(None)), None)},
             infer=_nll_infer)
def nll_loss(x, target, weight=None, reduction="mean", ignore_index=None):
    """Negative log-likelihood of log-probabilities x (N, C, ...) at class ``target``."""
    ignore = -100 if ignore_index is None else ignore_index
    return F.nll_loss(x, target.long(), weight, ignore_index=ignore, reduction=reduction)



def _affine_grid_infer(types, attrs):
    size = attrs["size"]
    n, spatial = size[0], tuple(size[2:])
    return types[0].with_shape((n, *spatial, len(spatial)))


@register_op("affine_grid", inputs=("theta",),
             attrs={"size": AttrSpec(tuple), "align_corners": False}, infer=_affine_grid_infer)
def affine_grid(theta, size, align_corners=False):
    """Sampling grid (N, *spatial, n) of the affine maps ``theta`` (N, n, n+1)."""
    return F.affine_grid(theta, list(size), align_corners=align_corners)


def _bitcast_infer(types, attrs):
    x, to = types[0], attrs["dtype"]
    if to.itemsize != x.dtype.itemsize:
        raise TypeInferenceError(f"bitcast from {x.dtype} to {to}: the element sizes differ "
                                 f"({x.dtype.itemsize} vs {to.itemsize} bytes); a bitcast keeps "
                                 "the shape and needs equal sizes")
    return x.with_dtype(to)


@register_op("bitcast", inputs=("x",), attrs={"dtype": AttrSpec(DType)}, infer=_bitcast_infer,
             flops_per_element=0)
def bitcast(x, dtype):
    """The bits of ``x`` read as ``dtype`` of the same element size (ONNX BitCast-26): no value
    conversion, the shape kept."""
    return x.contiguous().view(dtype.torch)
