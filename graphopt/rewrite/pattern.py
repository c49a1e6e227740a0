"""Patterns: the left-hand side of a rewrite rule, written like the expression it matches.

::

    from graphopt.rewrite import Attr, Const, Var, op

    x, w, b = Var("x"), Const("w"), Var("b")
    op.add(op.matmul(x, w), b)                  # add(matmul(x, <constant w>), b), either add order
    op.permute(x, perm=(0, 2, 1, 3))            # attribute equal to a value
    op.permute(x, perm=Attr("p"))               # attribute captured as match.attrs["p"]
    op.clamp(x, min=lambda v: v is not None)    # attribute predicate
    op.relu(x) | op.gelu(x)                     # alternatives, tried in order
    op.linear(x, w)                             # == op.linear(x, w, None): the bias must be absent
    op.linear(x, w, Var("b", optional=True))    # bias present or absent
    op.mul(x, x)                                # the same var twice: one value in both places
    op.matmul(x, w).named("mm")                 # the matched node as match.nodes["mm"]

Pattern building is pure data: op names are checked against the registry when the op pattern is
built, so a typo fails at import time, not silently at match time. Operands of ops with the
COMMUTATIVE trait match in both orders automatically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphopt.ir.attrs import freeze_attr
from graphopt.ir.graph import Value
from graphopt.ops.registry import get_op


class Pattern:
    """Base class of pattern nodes. Combine alternatives with ``|``."""

    def __or__(self, other: Pattern) -> AnyOf:
        left = self.alternatives if isinstance(self, AnyOf) else (self,)
        right = other.alternatives if isinstance(other, AnyOf) else (other,)
        return AnyOf(left + right)

    def num_ops(self) -> int:
        """Number of op patterns on the largest alternative (the tracer's "k of n")."""
        return 0

    def root_ops(self) -> set[str] | None:
        """Op names a matching root node may have (None: any value, not usable as a root)."""
        return None


class Var(Pattern):
    """A pattern variable: matches any value (or, with ``optional=True``, an absent operand).

    Args:
        name: the key under which the match stores the value (``match["x"]``). A name used twice
            in one pattern requires both positions to hold the same value.
        optional: also match an absent operand (``None``).
        where: extra predicate on the value, e.g. ``lambda v: v.type.rank == 2``.
        doc: how to describe ``where`` in explanations ("rank 2").
    """

    def __init__(
        self,
        name: str,
        *,
        optional: bool = False,
        where: Callable[[Value], bool] | None = None,
        doc: str = "",
    ):
        self.name = name
        self.optional = optional
        self.where = where
        self.doc = doc

    def __repr__(self) -> str:
        return self.name


class Const(Var):
    """Matches a graph constant only (weights, literals), optionally with every element == value.

    ``Const("one", value=1)`` matches constants of any shape whose elements are all exactly 1.
    """

    def __init__(
        self,
        name: str,
        *,
        value: float | bool | None = None,
        where: Callable[[Value], bool] | None = None,
        doc: str = "",
    ):
        super().__init__(name, where=where, doc=doc)
        self.value = value

    def __repr__(self) -> str:
        return f"Const({self.name})" if self.value is None else f"Const({self.name}={self.value})"


@dataclass(frozen=True)
class Attr:
    """An attribute constraint that captures the value as ``match.attrs[name]``.

    ``where`` optionally restricts it; ``doc`` describes ``where`` in explanations.
    """

    name: str
    where: Callable[[Any], bool] | None = None
    doc: str = ""


class OpPattern(Pattern):
    """Matches a node with op ``op`` whose operands match ``inputs`` and attributes ``attrs``.

    Operands beyond ``len(inputs)`` must be absent (None) in the node. ``attrs`` values are an
    exact value, a predicate (any callable), or an :class:`Attr` capture. Use ``.named(key)`` to
    get the matched node as ``match.nodes[key]`` and ``.output(i)`` to match output ``i`` of a
    multi-output op (by default a node must have exactly one output).
    """

    def __init__(
        self,
        op: str,
        inputs: tuple[Pattern | None, ...],
        attrs: dict[str, Any],
        name: str | None = None,
        output_index: int | None = None,
    ):
        opdef = get_op(op)  # fails early on a typo
        unknown = sorted(set(attrs) - set(opdef.attrs))
        if unknown:
            raise ValueError(f"pattern for '{op}' constrains unknown attribute(s) {unknown}")
        self.op = op
        self.inputs = inputs
        self.attrs = {
            k: v if callable(v) or isinstance(v, Attr) else freeze_attr(v) for k, v in attrs.items()
        }
        self.name = name
        self.output_index = output_index
        self.commutative = "commutative" in opdef.traits and len(inputs) == 2
        self.operand_names = [n.rstrip("?*") for n in opdef.inputs]

    def named(self, name: str) -> OpPattern:
        return OpPattern(self.op, self.inputs, self.attrs, name, self.output_index)

    def output(self, index: int) -> OpPattern:
        return OpPattern(self.op, self.inputs, self.attrs, self.name, index)

    def operand_name(self, slot: int) -> str:
        names = self.operand_names
        if not names:
            return str(slot)
        if slot < len(names):
            return names[slot]
        return f"{names[-1]}[{slot - len(names) + 1}]"  # variadic tail

    def num_ops(self) -> int:
        return 1 + sum(p.num_ops() for p in self.inputs if p is not None)

    def root_ops(self) -> set[str]:
        return {self.op}

    def __repr__(self) -> str:
        args = [repr(p) for p in self.inputs]
        for key, v in self.attrs.items():
            if isinstance(v, Attr):
                args.append(f"{key}=<{v.name}>")
            elif callable(v):
                args.append(f"{key}=<predicate>")
            else:
                args.append(f"{key}={v!r}")
        text = f"{self.op}({', '.join(args)})"
        if self.output_index is not None:
            text += f"[{self.output_index}]"
        return text


class AnyOf(Pattern):
    """Matches if any alternative does (tried in order; the first full match wins)."""

    def __init__(self, alternatives: tuple[Pattern, ...]):
        self.alternatives = tuple(alternatives)

    def num_ops(self) -> int:
        return max(p.num_ops() for p in self.alternatives)

    def root_ops(self) -> set[str] | None:
        ops: set[str] = set()
        for p in self.alternatives:
            sub = p.root_ops()
            if sub is None:
                return None
            ops |= sub
        return ops

    def __repr__(self) -> str:
        return " | ".join(repr(p) for p in self.alternatives)


class _OpBuilder:
    """``op.NAME(*operands, **attr_constraints)`` builds an :class:`OpPattern`."""

    def __getattr__(self, name: str) -> Callable[..., OpPattern]:
        if name.startswith("__"):
            raise AttributeError(name)
        get_op(name)  # unknown op: UnknownOpError listing the registered ones

        def build(*inputs: Pattern | None, **attrs: Any) -> OpPattern:
            for p in inputs:
                if p is not None and not isinstance(p, Pattern):
                    raise TypeError(
                        f"operands of op.{name}(...) must be patterns (Var, Const, op.*) or None, "
                        f"got {p!r}"
                    )
            return OpPattern(name, tuple(inputs), attrs)

        build.__name__ = name
        return build

    def __call__(self, name: str, *inputs: Pattern | None, **attrs: Any) -> OpPattern:
        """``op("slice", x, axis=0)``: for op names that are not Python identifiers."""
        return getattr(self, name)(*inputs, **attrs)


op = _OpBuilder()
