"""The one reshape/permute canonicalizer: layout rules shared by ``canonicalize`` and importers.

``reshape(reshape(x))`` becomes one reshape, ``permute(permute(x))`` one permute (perms
composed; the identity disappears), and a reshape or permute that gives back its input's type
disappears. The ``canonicalize`` pass runs these rules (with its other peepholes) on the whole
graph; the ONNX importer runs the same rules, restricted to the layout adapters it inserted,
through the same driver (``apply_rules``), so both count the same rewrites under the same names.
"""

from __future__ import annotations

from graphopt.ir.graph import Value
from graphopt.rewrite.matcher import Match
from graphopt.rewrite.pattern import Var, op
from graphopt.rewrite.rule import Rule


def same_type_reason(match: Match, x: Value) -> str | None:
    """None when the matched root's output has ``x``'s type (so ``x`` may replace it)."""
    out = match.root.output
    if out.type.same_as(x.type):
        return None
    return (
        f"output %{out.name}: {out.type} differs from %{x.name}: {x.type}; removing the "
        f"node would change the type"
    )


class IdentityReshape(Rule):
    """reshape(x) with the shape x already has -> x."""

    name = "identity-reshape"

    def pattern(self):
        return op.reshape(Var("x"))

    def check(self, match):
        return same_type_reason(match, match["x"])

    def rewrite(self, match, rw):
        return match["x"]


class IdentityPermute(IdentityReshape):
    """permute(x) with the identity perm -> x."""

    name = "identity-permute"

    def pattern(self):
        return op.permute(Var("x"), perm=lambda p: tuple(p) == tuple(range(len(p))))


class ReshapeReshape(Rule):
    """reshape(reshape(x, s1), s2) -> reshape(x, s2): both are row-major views of x's data."""

    name = "reshape-reshape"
    allow_shared = True  # the inner reshape may feed others; we never duplicate work

    def pattern(self):
        return op.reshape(op.reshape(Var("x")))

    def rewrite(self, match, rw):
        return rw.op.reshape(match["x"], shape=match.root.attrs["shape"])


class PermutePermute(Rule):
    """permute(permute(x, p), q) -> permute(x, r) with r[i] = p[q[i]]; x itself if r is identity."""

    name = "permute-permute"
    allow_shared = True

    def pattern(self):
        return op.permute(op.permute(Var("x")).named("inner"))

    def rewrite(self, match, rw):
        p, q = match.nodes["inner"].attrs["perm"], match.root.attrs["perm"]
        perm = tuple(p[i] for i in q)
        if perm == tuple(range(len(perm))):
            return match["x"]
        return rw.op.permute(match["x"], perm=perm)


def layout_rules() -> list[Rule]:
    """Fresh instances of the layout rules, in the order ``canonicalize`` tries them."""
    return [IdentityReshape(), IdentityPermute(), ReshapeReshape(), PermutePermute()]
