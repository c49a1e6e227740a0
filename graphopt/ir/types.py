"""Tensor types: shape (static or symbolic dims) and dtype, plus optional quantization info.

A dim is a Python ``int`` or a ``sympy`` expression over size symbols (``s0``, ``2*s0 + 1``).
Shape rules use ordinary arithmetic on dims, so the same rule serves static and dynamic shapes;
``normalize_dim`` folds expressions that became constant back into ints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Union

import sympy

from graphopt.ir.dtypes import DType

Dim = Union[int, sympy.Expr]
_SYMBOL = re.compile(r"\b([A-Za-z_]\w*)\b(?!\s*\()")  # a name not followed by '(' (a call)


def normalize_dim(dim) -> Dim:
    """An int for static dims, a simplified sympy expression for symbolic ones."""
    if isinstance(dim, bool):
        raise TypeError("a dim cannot be a bool")
    if isinstance(dim, int):
        return dim
    if hasattr(dim, "node") and hasattr(dim.node, "expr"):  # torch.SymInt
        dim = dim.node.expr
    expr = sympy.sympify(dim)
    if expr.is_Integer:
        return int(expr)
    if expr.is_Float:  # e.g. numel / known with Python's true division: 12.0 must print as 12
        if not float(expr).is_integer():
            raise TypeError(f"dim {dim} is not an integer")
        return int(expr)
    return sympy.simplify(expr)


def is_static(dim: Dim) -> bool:
    return isinstance(dim, int)


def dim_str(dim: Dim) -> str:
    return str(dim) if isinstance(dim, int) else str(dim).replace(" ", "")


def parse_dim(text: str) -> Dim:
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    # Size symbols must carry torch's assumptions (integer, positive) to equal the frontend's
    # symbols and simplify alike (floor(2*s0/2) -> s0); binding every bare name also stops sympify
    # from reading names like E, I, N or S as sympy constants and functions.
    names = {n: sympy.Symbol(n, integer=True, positive=True) for n in _SYMBOL.findall(text)}
    return normalize_dim(sympy.sympify(text, locals=names))


def dims_equal(a: Dim, b: Dim) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return sympy.simplify(sympy.sympify(a) - sympy.sympify(b)) == 0


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
        object.__setattr__(self, "shape", tuple(normalize_dim(d) for d in self.shape))
        if not isinstance(self.dtype, DType):
            raise TypeError(f"TensorType dtype must be a DType, got {self.dtype!r}")

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
