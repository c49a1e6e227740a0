"""Tensor types: shape (static or symbolic dims) and dtype, plus optional quantization info.

A dim is a Python ``int`` or a ``sympy`` expression over size symbols (``s0``, ``2*s0 + 1``).
Shape rules use ordinary arithmetic on dims, so the same rule serves static and dynamic shapes;
``normalize_dim`` folds expressions that became constant back into ints.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Union

import numpy as np
import sympy

from graphopt.errors import TypeInferenceError
from graphopt.ir import symexpr
from graphopt.ir.dtypes import DType

Dim = Union[int, sympy.Expr]
MAX_NUMEL = (1 << 63) - 1


def dim_expr(dim) -> sympy.Expr:
    """``dim`` (a Python/numpy number or a sympy expression) as a sympy expression.

    Never parses text: ``sympy.sympify`` would ``eval`` a string, so text dims are refused here
    and go through the size-expression grammar (``parse_dim``) where files are read.
    """
    if isinstance(dim, bool):
        raise TypeError("a dim cannot be a bool")
    if isinstance(dim, numbers.Integral):
        return sympy.Integer(int(dim))
    if isinstance(dim, numbers.Real):
        return sympy.Float(float(dim))
    if isinstance(dim, sympy.Expr):
        return dim
    if isinstance(dim, str):
        raise TypeError(f"dim {dim!r} is text; read it with graphopt.ir.types.parse_dim")
    raise TypeError(f"dim {dim!r} is not a number or a size expression")


def normalize_dim(dim) -> Dim:
    """An int for static dims, a simplified sympy expression for symbolic ones."""
    if isinstance(dim, bool):
        raise TypeError("a dim cannot be a bool")
    if isinstance(dim, int):
        return dim
    if hasattr(dim, "node") and hasattr(dim.node, "expr"):  # torch.SymInt
        dim = dim.node.expr
    expr = dim_expr(dim)
    if expr.is_Integer:
        return int(expr)
    if expr.is_Float:  # e.g. numel / known with Python's true division: 12.0 must print as 12
        if not float(expr).is_integer():
            raise TypeError(f"dim {dim} is not an integer")
        return int(expr)
    return _simplified(expr)


@lru_cache(maxsize=8192)
def _simplified(expr: sympy.Expr) -> sympy.Expr:
    """``sympy.simplify``, remembered: type inference (and the verifier after every pass)
    normalizes the same few symbolic dims thousands of times, at milliseconds each (a traced
    decoder's optimize spent 60 of 76 s here). Expressions are immutable and hashable."""
    return sympy.simplify(expr)


def is_static(dim: Dim) -> bool:
    return isinstance(dim, int)


def dim_str(dim: Dim) -> str:
    return str(dim) if isinstance(dim, int) else str(dim).replace(" ", "")


def parse_dim(text: str) -> Dim:
    """A dim read from text (IR files, artifacts): an int, or a size expression.

    The text goes through :mod:`graphopt.ir.symexpr`'s grammar, never through ``eval`` or
    ``sympify``; symbols are positive integers, as torch.export's. The expression is not
    re-simplified: printed dims already are, and ``simplify`` on a hostile expression is slow.

    Raises:
        SizeExprError: (a ``ParseError``) malformed text, a negative or non-integer constant dim.
    """
    text = text.strip()
    if text.isascii() and text.isdigit():  # str.isdigit() also takes '²' and other digits
        if len(text.lstrip("0")) > symexpr.MAX_DIGITS:
            raise symexpr.SizeExprError(f"dim {text[:24]}... is beyond the int64 range")
        return int(text)
    expr = symexpr.parse_size_expr(text)
    if expr.is_number:
        if not expr.is_Integer:
            raise symexpr.SizeExprError(f"dim {text!r} is not an integer ({expr})")
        if int(expr) < 0:
            raise symexpr.SizeExprError(f"dim {text!r} is negative ({expr})")
        return int(expr)
    return expr


def dims_equal(a: Dim, b: Dim) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if a == b:  # structurally equal: skip simplify (slow, and the common case)
        return True
    return _simplified(dim_expr(a) - dim_expr(b)) == 0


@dataclass(frozen=True)
class QuantInfo:
    """Affine quantization of a tensor: ``real = scale * (q - zero_point)``.

    ``axis`` is None for per-tensor, else the channel axis of per-channel ``scale``/``zero_point``
    tuples. ``bits`` may be below the storage dtype's width (int4 packed in int8).
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    bits: int = 8

    def __post_init__(self):
        if len(self.scale) != len(self.zero_point) or not self.scale:
            raise ValueError(f"quantization needs as many zero points as scales (>= 1), got "
                             f"{len(self.scale)} scale(s) and {len(self.zero_point)} zero point(s)")
        bad = [s for s in self.scale if not (math.isfinite(s) and s > 0)]
        if bad:
            raise ValueError(f"quantization scales must be finite and > 0, got {bad[0]!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or \
                not 1 <= self.bits <= 32:
            raise ValueError(f"quantization bits must be an int in 1..32, got {self.bits!r}")
        if self.axis is None and len(self.scale) != 1:
            raise ValueError(f"per-tensor quantization has one scale, got {len(self.scale)}")
        if self.axis is not None and (isinstance(self.axis, bool) or self.axis < 0):
            raise ValueError(f"quantization axis must be a non-negative int, got {self.axis!r}")

    def check_for(self, shape: tuple, dtype: DType) -> None:
        """Raise ValueError unless this quantization fits a tensor of ``shape`` and ``dtype``."""
        if self.axis is not None:
            if self.axis >= len(shape):
                raise ValueError(f"quantization axis {self.axis} is out of range for rank "
                                 f"{len(shape)}")
            channels = shape[self.axis]
            if isinstance(channels, int) and channels != len(self.scale):
                raise ValueError(f"{len(self.scale)} per-channel scales for {channels} channels "
                                 f"on axis {self.axis}")
        if not dtype.is_floating and dtype is not DType.bool:
            info = np.iinfo(dtype.numpy)
            lo, hi = int(info.min), int(info.max)
            if self.bits < info.bits:  # packed narrower codes: zero points in the code range
                lo, hi = (-(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1) if lo < 0 \
                    else (0, (1 << self.bits) - 1)
            bad = [z for z in self.zero_point if not lo <= z <= hi]
            if bad:
                raise ValueError(f"zero point {bad[0]} is out of range [{lo}, {hi}] for "
                                 f"{self.bits}-bit {dtype}")

    def __str__(self) -> str:
        if self.axis is None:
            return f"q<scale={self.scale[0]!r}, zp={self.zero_point[0]}, bits={self.bits}>"
        return f"q<axis={self.axis}, channels={len(self.scale)}, bits={self.bits}>"


@dataclass(frozen=True)
class TensorType:
    """Shape and dtype of an SSA value. Every value in the IR has one."""

    shape: tuple[Dim, ...]
    dtype: DType
    quant: QuantInfo | None = field(default=None, compare=True)

    def __post_init__(self):
        shape = tuple(normalize_dim(d) for d in self.shape)
        object.__setattr__(self, "shape", shape)
        if not isinstance(self.dtype, DType):
            raise TypeError(f"TensorType dtype must be a DType, got {self.dtype!r}")
        numel = 1
        for dim in shape:
            if isinstance(dim, int):
                if dim < 0:
                    raise TypeInferenceError(f"negative dim {dim} in shape {list(shape)}")
                numel *= dim
        if numel > MAX_NUMEL:
            raise TypeInferenceError(f"shape {list(shape)} has {numel} elements, more than any "
                                     f"backend can index (2**63 - 1)")
        if self.quant is not None:
            self.quant.check_for(shape, self.dtype)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> Dim:
        n: Dim = 1
        for d in self.shape:
            n = n * d
        return normalize_dim(n)

    @property
    def symbols(self) -> set[sympy.Symbol]:
        out: set[sympy.Symbol] = set()
        for d in self.shape:
            if not isinstance(d, int):
                out |= d.free_symbols
        return out

    def with_shape(self, shape) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(self.shape, dtype)

    def same_as(self, other: "TensorType") -> bool:
        return (
            self.dtype == other.dtype
            and self.rank == other.rank
            and all(dims_equal(a, b) for a, b in zip(self.shape, other.shape))
            and self.quant == other.quant
        )

    def __str__(self) -> str:
        text = f"{self.dtype}[{', '.join(dim_str(d) for d in self.shape)}]"
        if self.quant is not None:
            text += str(self.quant)
        return text
