"""The worklist driver: apply a rule set to a fixpoint, and ``RewritePass`` (a pass = rules).

``apply_rules`` visits nodes in graph order; for each node it tries the rules whose pattern root
has the node's op, and applies the first match that passes the escape check and ``check()``.
After a rewrite, the new nodes, the users of the replacement values and the neighbours of the
matched operands go back on the worklist. When the worklist drains after a round that changed
something, one more full sweep confirms the fixpoint (so the result does not depend on which
neighbours a rewrite happened to re-queue).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from graphopt.errors import RewriteError
from graphopt.ir.graph import Graph, Node, Value
from graphopt.rewrite.matcher import FailureTracker, Match, escaping_values, match_pattern
from graphopt.rewrite.rewriter import Rewriter, RewriteStats
from graphopt.rewrite.rule import Rule
from graphopt.rewrite.tracking import active_log, allow_rewrite, rewriting


def find_match(rule: Rule, node: Node, tracker: FailureTracker | None = None) -> Match | None:
    """The first match of ``rule`` rooted at ``node`` that passes the escape check and check()."""
    for match in match_pattern(rule.get_pattern(), node, tracker):
        if not rule.allow_shared:
            escapes = escaping_values(match)
            if escapes:
                if tracker:
                    value, who = escapes[0]
                    tracker.fail(
                        match,
                        "escape check",
                        f"interior value %{value.name} ({value.producer.op}) is also "
                        f"used by {who}; rewriting would keep it alive (duplicate work)",
                    )
                continue
        reason = rule.check(match)
        if reason is not None:
            if tracker:
                tracker.fail(match, "check()", str(reason))
            continue
        return match
    return None


def _apply(rule: Rule, match: Match, rw: Rewriter, limit_reached: bool) -> str:
    """Rewrite one match: returns "applied", "declined" (rewrite returned None) or "denied"
    (the rewrite budget is spent; nothing was changed)."""
    root = match.root
    rw.begin(rule.name, root)
    with rewriting(root):
        result = rule.rewrite(match, rw)
        if result is None:
            rw.discard_created()
            return "declined"
        # Ask only now, so that declined rewrites do not use up the budget.
        if limit_reached or not allow_rewrite(rule.name, root):
            rw.discard_created()
            return "denied"
        new_values = [result] if isinstance(result, Value) else list(result)
        if len(new_values) != len(root.outputs):
            raise RewriteError(
                f"rule '{rule.name}' returned {len(new_values)} value(s) for "
                f"{root.describe()}, which has {len(root.outputs)} output(s)"
            )
        for old, new in zip(root.outputs, new_values):
            if new is not old:
                rw.replace_value(old, new)
        rw.erase_if_dead(match.matched_nodes, always=root)
    rw.stats.rule(rule.name).applied += 1
    return "applied"


def apply_rules(
    graph: Graph, rules: Sequence[Rule], *, max_rewrites: int | None = None, max_sweeps: int = 20
) -> RewriteStats:
    """Apply ``rules`` until none matches (or ``max_rewrites`` rewrites were done).

    Args:
        graph: rewritten in place.
        rules: tried in order at each node; the first one that fires wins.
        max_rewrites: stop after this many rewrites (in addition to the budget of an enclosing
            ``track_rewrites``, which ``graphopt.bisect`` uses).
        max_sweeps: safety limit on sweeps (a sweep also ends after ``10 * (nodes + 10)``
            rewrites); rules that undo each other raise RewriteError instead of looping.

    Returns:
        Per-rule counts; ``stats.changed`` says whether the graph changed. Inside a pass manager
        the counts also go into the pass report.
    """
    by_op: dict[str, list[Rule]] = {}
    for r in rules:
        for op_name in r.root_ops():
            by_op.setdefault(op_name, []).append(r)
    stats = RewriteStats()
    rw = Rewriter(graph, stats)
    done = 0
    for _ in range(max_sweeps):
        changed = False
        queue: deque[Node] = deque(n for n in graph.nodes if n.op in by_op)
        queued = {id(n) for n in queue}
        sweep_budget = 10 * (len(graph.nodes) + 10)
        while queue and sweep_budget > 0:
            node = queue.popleft()
            queued.discard(id(node))
            if node._erased:
                continue
            for r in by_op.get(node.op, ()):
                match = find_match(r, node)
                if match is None:
                    continue
                operands = [v for n in match.matched_nodes for v in n.inputs if v is not None]
                outcome = _apply(r, match, rw, max_rewrites is not None and done >= max_rewrites)
                if outcome == "denied":
                    return stats
                if outcome == "declined":
                    continue
                done += 1
                sweep_budget -= 1
                changed = True
                for n in _affected(rw, operands):
                    if n.op in by_op and id(n) not in queued and not n._erased:
                        queue.append(n)
                        queued.add(id(n))
                break
        if not changed:
            return stats
    last = ", ".join(f"{k} x{v}" for k, v in stats.applied().items())
    raise RewriteError(
        f"rules did not reach a fixpoint after {max_sweeps} sweeps "
        f"(rewrites so far: {last}); two rules probably undo each other"
    )


def _affected(rw: Rewriter, operands: Iterable[Value]) -> Iterable[Node]:
    yield from rw.created
    for value in list(rw.replaced) + list(operands):
        if value.producer is not None and not value.producer._erased:
            yield value.producer
        yield from value.users


class RewritePass:
    """Base for passes that are a rule set; subclasses list rules in ``RULES`` or ``rules()``.

    ::

        @register_pass("fuse-matmul-add")
        class FuseMatMulAdd(RewritePass):
            '''add(matmul(x, w), b) -> linear(...).'''
            RULES = (MatMulAddToLinear(),)

    Dataclass fields of the subclass are its options; ``rules()`` may read them.
    """

    RULES: Sequence[Rule] = ()

    def rules(self) -> Sequence[Rule]:
        return self.RULES

    def run(self, graph: Graph) -> bool:
        return apply_rules(graph, self.rules()).changed


def current_budget_left() -> int | None:
    """Rewrites left in the active budget (None: unlimited)."""
    log = active_log()
    if log is None or log.max_rewrites is None:
        return None
    return max(0, log.max_rewrites - log.count)
