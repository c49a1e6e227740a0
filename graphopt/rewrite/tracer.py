"""Why did a rule not fire? ``explain(graph, rule)`` reports the closest partial matches.

For every node that could be the pattern's root, the matcher runs with a failure tracker; the
deepest failure (most pattern ops matched) is kept with the pattern position and the condition
that failed: op mismatch, attribute mismatch, non-constant where ``Const`` is required, an
interior value used outside the match, or the reason returned by ``check()``::

    >>> for e in explain(graph, FuseMatMulAdd()): print(e)
    fuse-matmul-add at %add = add: matched 2/2 pattern ops, failed at check(): weight %w has rank 3
    fuse-matmul-add at %add_1 = add: matched 1/2 pattern ops, failed at add.a: expected op
        'matmul', found 'linear' (%lin)
"""

from __future__ import annotations

from dataclasses import dataclass

from graphopt.ir.graph import Graph
from graphopt.rewrite.driver import find_match
from graphopt.rewrite.matcher import FailureTracker
from graphopt.rewrite.rule import Rule


@dataclass
class Explanation:
    """The outcome of trying ``rule`` at one root candidate.

    Attributes:
        rule: the rule's name.
        node: the candidate root (``%name = op``), or None when no node has a root op.
        fired: True if the rule would fire here (then ``reason`` is empty).
        matched: pattern ops matched before the failure; ``total`` ops in the pattern.
        where: the pattern position that failed (``add.a -> matmul.b``, ``check()``, ...).
        reason: what was found instead / the check's reason.
    """

    rule: str
    node: str | None
    fired: bool
    matched: int
    total: int
    where: str = ""
    reason: str = ""

    def __str__(self) -> str:
        if self.node is None:
            return f"{self.rule}: {self.reason}"
        head = f"{self.rule} at {self.node}"
        if self.fired:
            return f"{head}: matches (would fire)"
        return (
            f"{head}: matched {self.matched}/{self.total} pattern ops, failed at "
            f"{self.where}: {self.reason}"
        )


def explain(graph: Graph, rule: Rule, *, limit: int | None = 5) -> list[Explanation]:
    """Explain, per root candidate, whether ``rule`` matches and if not why (closest first).

    Args:
        graph: the graph to inspect (not modified).
        rule: the rule.
        limit: keep at most this many explanations (None: all). Candidates where the rule
            would fire come first, then the deepest partial matches.
    """
    pattern = rule.get_pattern()
    total = pattern.num_ops()
    roots = rule.root_ops()
    out: list[Explanation] = []
    for node in graph.nodes:
        if node.op not in roots:
            continue
        tracker = FailureTracker()
        if find_match(rule, node, tracker) is not None:
            out.append(Explanation(rule.name, node.describe(), True, total, total))
            continue
        best = tracker.best
        if best is None:  # cannot happen: a failed match always reports
            out.append(Explanation(rule.name, node.describe(), False, 0, total, "?", "no match"))
        else:
            out.append(
                Explanation(
                    rule.name, node.describe(), False, best.matched, total, best.where, best.reason
                )
            )
    if not out:
        ops = " or ".join(f"'{o}'" for o in sorted(roots))
        return [
            Explanation(
                rule.name,
                None,
                False,
                0,
                total,
                "root",
                f"no node in graph {graph.name} has op {ops} (the pattern root)",
            )
        ]
    out.sort(key=lambda e: (not e.fired, -e.matched))
    return out if limit is None else out[:limit]


def explain_text(graph: Graph, rule: Rule, *, limit: int | None = 5) -> str:
    """``explain`` as a multi-line report (what ``graphopt explain`` prints)."""
    lines = [f"rule {rule.name}: {rule.get_pattern()!r}"]
    if rule.doc:
        lines.append(f"  {rule.doc}")
    lines += [f"  - {e}" for e in explain(graph, rule, limit=limit)]
    return "\n".join(lines)
