"""Frozen, hashable node attributes.

Attributes are plain data: ints, floats, bools, strings, None, DTypes, sympy dims and tuples of
these. Freezing makes nodes safe to share between passes and lets CSE hash ``(op, inputs, attrs)``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Iterator

import sympy

from graphopt.ir.dtypes import DType
from graphopt.ir.types import normalize_dim


def freeze_attr(value: Any) -> Any:
    """Turn lists into tuples (recursively) and torch.SymInt into sympy; reject mutables."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze_attr(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str, DType)):
        return value
    if isinstance(value, sympy.Expr):
        return normalize_dim(value)
    if hasattr(value, "node") and hasattr(value.node, "expr"):  # torch.SymInt / SymFloat
        return normalize_dim(value.node.expr)
    raise TypeError(f"attribute value {value!r} of type {type(value).__name__} is not allowed")


def has_symbols(value: Any) -> bool:
    if isinstance(value, tuple):
        return any(has_symbols(v) for v in value)
    return isinstance(value, sympy.Expr)


def substitute_symbols(value: Any, bindings: Mapping[sympy.Symbol, int]) -> Any:
    """Replace size symbols by their run-time values (ints)."""
    if isinstance(value, tuple):
        return tuple(substitute_symbols(v, bindings) for v in value)
    if isinstance(value, sympy.Expr):
        return _substituted(value, tuple(bindings.items()))
    return value


@functools.lru_cache(maxsize=4096)
def _substituted(expr: sympy.Expr, bindings: tuple) -> int:
    # sympy's subs costs ~0.5 ms, and one run of a decoder step resolves the same few
    # expressions (its symbolic shapes) in hundreds of attributes.
    return int(expr.subs(dict(bindings)))


class Attrs(Mapping):
    """An immutable mapping of attribute name to frozen value, hashable and ordered by name."""

    __slots__ = ("_items", "_dict", "_hash")

    def __init__(self, items: Mapping[str, Any] | None = None, **kwargs: Any):
        merged = dict(items or {})
        merged.update(kwargs)
        self._items = tuple(sorted((k, freeze_attr(v)) for k, v in merged.items()))
        self._dict = dict(self._items)
        self._hash = None

    def __getitem__(self, key: str) -> Any:
        return self._dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple((k, _hash_key(v)) for k, v in self._items))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attrs):
            return self._items == other._items
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def replace(self, **changes: Any) -> "Attrs":
        merged = dict(self._dict)
        merged.update(changes)
        return Attrs(merged)

    def __repr__(self) -> str:
        return f"Attrs({self._dict!r})"


def _hash_key(value: Any) -> Any:
    # floats: -0.0 == 0.0 hash alike but nan != nan; use repr so CSE never merges differing floats.
    if isinstance(value, float):
        return ("f", repr(value))
    if isinstance(value, tuple):
        return tuple(_hash_key(v) for v in value)
    return value
