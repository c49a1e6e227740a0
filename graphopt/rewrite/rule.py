"""Rules: pattern + check + rewrite, as a class (like onnxscript's rewrite rules) or via ``rule()``.

As a class::

    class MatMulAddToLinear(Rule):
        '''add(matmul(x, w), b) -> linear(x, transpose(w), b) for 2-D constant w.'''
        name = "matmul-add-to-linear"

        def pattern(self):
            return op.add(op.matmul(Var("x"), Const("w")), Const("b"))

        def check(self, match):
            if match["w"].type.rank != 2:
                return f"weight %{match['w'].name} has rank {match['w'].type.rank}, not 2"
            return None

        def rewrite(self, match, rw):
            wt = rw.op.permute(match["w"], perm=(1, 0))
            return rw.op.linear(match["x"], wt, match["b"])

Or in one call: ``rule("neg-neg", op.neg(op.neg(Var("x"))), lambda m, rw: m["x"])``.

``check`` returns None when the rewrite is valid, else a human-readable reason (the tracer
shows it). ``rewrite`` returns the value(s) replacing the root's outputs, or None to decline.
Interior nodes (matched, not the root) whose outputs are used outside the match make the match
fail, since removing the root would not remove them; set ``allow_shared = True`` on rules whose
replacement never duplicates work (e.g. ``reshape(reshape(x))``), and those nodes are kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from graphopt.ir.graph import Value
from graphopt.rewrite.matcher import Match
from graphopt.rewrite.pattern import Pattern
from graphopt.rewrite.rewriter import Rewriter

RewriteResult = Value | Sequence[Value] | None


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


class Rule:
    """Base class of rewrite rules; override ``pattern``, optionally ``check``, and ``rewrite``.

    Class attributes:
        name: rule name used in stats, logs and explanations (default: kebab-case class name).
        allow_shared: keep interior nodes that have users outside the match instead of
            rejecting the match.
    """

    name: str = ""
    allow_shared: bool = False

    def __init__(self) -> None:
        if not self.name:
            self.name = _kebab(type(self).__name__)
        self._pattern: Pattern | None = None

    def pattern(self) -> Pattern:
        raise NotImplementedError(f"rule {self.name} defines no pattern()")

    def check(self, match: Match) -> str | None:
        """None if the matched subgraph may be rewritten, else the reason why not."""
        return None

    def rewrite(self, match: Match, rw: Rewriter) -> RewriteResult:
        raise NotImplementedError(f"rule {self.name} defines no rewrite()")

    def get_pattern(self) -> Pattern:
        """The pattern, built once."""
        if self._pattern is None:
            pattern = self.pattern
            self._pattern = pattern() if callable(pattern) else pattern
            if self._pattern.root_ops() is None:
                raise TypeError(f"rule {self.name}: the pattern root must be an op pattern")
        return self._pattern

    def root_ops(self) -> set[str]:
        return self.get_pattern().root_ops()

    @property
    def doc(self) -> str:
        return (type(self).__doc__ or "").strip().splitlines()[0] if type(self).__doc__ else ""

    def __repr__(self) -> str:
        return f"<Rule {self.name}: {self.get_pattern()!r}>"


class _FunctionRule(Rule):
    def __init__(
        self,
        name: str,
        pattern: Pattern,
        rewrite: Callable[[Match, Rewriter], RewriteResult],
        check: Callable[[Match], str | None] | None,
        allow_shared: bool,
        doc: str,
    ):
        self.name = name
        super().__init__()
        self._pattern_value = pattern
        self._rewrite = rewrite
        self._check = check
        self.allow_shared = allow_shared
        self._doc = doc

    def pattern(self) -> Pattern:
        return self._pattern_value

    def check(self, match: Match) -> str | None:
        return self._check(match) if self._check is not None else None

    def rewrite(self, match: Match, rw: Rewriter) -> RewriteResult:
        return self._rewrite(match, rw)

    @property
    def doc(self) -> str:
        return self._doc


def rule(
    name: str,
    pattern: Pattern,
    rewrite: Callable[[Match, Rewriter], RewriteResult],
    *,
    check: Callable[[Match], str | None] | None = None,
    allow_shared: bool = False,
    doc: str = "",
) -> Rule:
    """Build a rule from a pattern and functions ``rewrite(match, rw)`` / ``check(match)``."""
    return _FunctionRule(name, pattern, rewrite, check, allow_shared, doc)
