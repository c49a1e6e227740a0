"""Shared shape/dtype rules for op declarations.

Rules receive the operand types (None for an absent optional operand) and the attrs, and return
the output type(s). They raise ``TypeInferenceError`` with the offending dims in the message.
"""

from __future__ import annotations

import sympy
import torch

from graphopt.errors import TypeInferenceError
from graphopt.ir.dtypes import DType
from graphopt.ir.types import Dim, TensorType, dims_equal, normalize_dim


def norm_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise TypeInferenceError(f"{what} {axis} is out of range for rank {rank}")
    return axis % max(rank, 1)


def norm_axes(axes, rank: int) -> tuple[int, ...]:
    out = tuple(sorted(norm_axis(a, rank) for a in axes))
    if len(set(out)) != len(out):
        raise TypeInferenceError(f"repeated axes {tuple(axes)}")
    return out


def broadcast_shapes(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...]:
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        dim: Dim = 1
        for shape in shapes:
            j = i - (rank - len(shape))
            if j < 0:
                continue
            d = shape[j]
            if d == 1:
                continue
            if dim == 1:
                dim = d
            elif not dims_equal(dim, d):
                text = " and ".join(str(list(s)) for s in shapes)
                raise TypeInferenceError(f"shapes {text} do not broadcast (dim {i}: {dim} vs {d})")
        out.append(dim)
    return tuple(out)


def promote(*types: TensorType) -> DType:
    """torch's type promotion (0-d tensors act like scalars within a dtype category)."""
    probes = [torch.empty((1,) * min(t.rank, 1), dtype=t.dtype.torch) for t in types]
    result = probes[0]
    dtype = result.dtype
    for probe in probes[1:]:
        try:
            dtype = torch.result_type(result, probe)
        except RuntimeError as exc:  # uint16/32/64 promote only with themselves and floats
            raise TypeInferenceError(f"dtypes {', '.join(str(t.dtype) for t in types)} do not "
                                     f"promote: {exc}") from None
        # keep rank information: the promoted probe is 0-d only if both were.
        result = torch.empty((1,) * max(result.dim(), probe.dim()), dtype=dtype)
    return DType.from_torch(dtype)


def same_as_input(types, attrs) -> TensorType:
    return types[0]


def float_of_input(types, attrs) -> TensorType:
    """Unary math that turns ints into the default float dtype (torch.exp on int64 -> f32)."""
    t = types[0]
    return t if t.dtype.is_floating else t.with_dtype(DType.float32)


def broadcast_binary(types, attrs) -> TensorType:
    a, b = types
    return TensorType(broadcast_shapes(a.shape, b.shape), promote(a, b))


def broadcast_compare(types, attrs) -> TensorType:
    a, b = types
    return TensorType(broadcast_shapes(a.shape, b.shape), DType.bool)


def broadcast_true_divide(types, attrs) -> TensorType:
    a, b = types
    dtype = promote(a, b)
    if not dtype.is_floating and attrs.get("rounding_mode") is None:
        dtype = DType.float32
    return TensorType(broadcast_shapes(a.shape, b.shape), dtype)


def reduce_shape(shape, axes, keepdim: bool) -> tuple[Dim, ...]:
    rank = len(shape)
    axes = norm_axes(axes, rank) if axes else tuple(range(rank))
    if keepdim:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def prod(dims) -> Dim:
    out: Dim = 1
    for d in dims:
        out = out * d
    return normalize_dim(out)


def floordiv(a: Dim, b: int) -> Dim:
    if isinstance(a, int):
        return a // b
    return normalize_dim(sympy.floor(a / b))


def ceildiv(a: Dim, b: int) -> Dim:
    if isinstance(a, int):
        return -(-a // b)
    return normalize_dim(sympy.ceiling(a / b))


def pool_out_dim(size: Dim, kernel: int, stride: int, pad_lo: int, pad_hi: int, dilation: int,
                 ceil_mode: bool) -> Dim:
    """Output length of a conv/pool window (torch semantics, incl. ceil_mode's last-window rule)."""
    span = size + pad_lo + pad_hi - dilation * (kernel - 1) - 1
    if not ceil_mode:
        return normalize_dim(floordiv(span, stride) + 1)
    out = ceildiv(span, stride) + 1
    if isinstance(out, int) and (out - 1) * stride >= size + pad_lo:
        out -= 1  # the last window must start inside the input or left padding
    return normalize_dim(out)


def expect_rank(t: TensorType, ranks, what: str) -> None:
    if t.rank not in (ranks if isinstance(ranks, (tuple, list, set)) else (ranks,)):
        raise TypeInferenceError(f"{what} must have rank {ranks}, got {t}")


def expect_dim(a: Dim, b: Dim, what: str) -> None:
    if not dims_equal(a, b):
        raise TypeInferenceError(f"{what}: {a} != {b}")
