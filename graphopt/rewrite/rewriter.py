"""The Rewriter: the only way rules mutate the graph, so every change is counted per rule.

A rule's ``rewrite(match, rw)`` builds its replacement with ``rw``; new nodes are inserted right
before the matched root, where every matched value is already defined::

    def rewrite(self, match, rw):
        y = rw.op.linear(match["x"], match["w"], match["b"])        # -> Value
        return rw.op.relu(y)

``rw.op.NAME(*operands, name=None, **attrs)`` returns the output value (a tuple for multi-output
ops); ``rw.constant(array)`` adds a constant. The driver then replaces the root's outputs with the
returned values (types must be identical) and erases matched nodes that became unused.

Passes that walk the graph themselves (dce, cse, fold-constants, and graphopt.quant /
graphopt.prune behind the quantize-* / prune-* passes) use the same object as an edit
API: ``rw.edit(rule_name, node)`` opens one individual rewrite (and says False when the rewrite
budget of ``graphopt.bisect`` is spent), after which ``replace_value``, ``erase_node``,
``constant`` and ``remove_constant`` are counted under that name, exactly like a rule's::

    rw = Rewriter(graph)
    for node in reversed(graph.nodes):
        if is_dead(node):
            if not rw.edit("dead-node", node):
                break                    # budget spent: leave the rest as it is
            rw.erase_node(node)
    changed = rw.stats.changed
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphopt.errors import RewriteError
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ops.registry import PURE
from graphopt.rewrite.tracking import allow_rewrite


@dataclass
class RuleStats:
    """Counts for one rule: rewrites applied, nodes inserted/removed, values replaced."""

    applied: int = 0
    inserted: int = 0
    removed: int = 0
    replaced: int = 0

    def __iadd__(self, other: RuleStats) -> RuleStats:
        self.applied += other.applied
        self.inserted += other.inserted
        self.removed += other.removed
        self.replaced += other.replaced
        return self


@dataclass
class RewriteStats:
    """What ``apply_rules`` did, per rule name."""

    per_rule: dict[str, RuleStats] = field(default_factory=dict)

    def rule(self, name: str) -> RuleStats:
        return self.per_rule.setdefault(name, RuleStats())

    @property
    def rewrites(self) -> int:
        return sum(s.applied for s in self.per_rule.values())

    @property
    def changed(self) -> bool:
        return self.rewrites > 0

    def applied(self) -> dict[str, int]:
        """Rule name -> number of rewrites, for rules that fired."""
        return {k: s.applied for k, s in self.per_rule.items() if s.applied}

    def merge(self, other: RewriteStats) -> RewriteStats:
        for name, stats in other.per_rule.items():
            self.rule(name).__iadd__(stats)
        return self

    def __str__(self) -> str:
        rows = [(k, s) for k, s in sorted(self.per_rule.items()) if s.applied]
        if not rows:
            return "no rewrites"
        width = max(len(k) for k, _ in rows)
        lines = [f"{'rule':<{width}}  applied  inserted  removed  replaced"]
        for name, s in rows:
            lines.append(
                f"{name:<{width}}  {s.applied:>7}  {s.inserted:>8}  {s.removed:>7}  {s.replaced:>8}"
            )
        return "\n".join(lines)


class _RewriterOps:
    def __init__(self, rewriter: Rewriter):
        self._rw = rewriter

    def __getattr__(self, op: str) -> Callable[..., Any]:
        if op.startswith("__"):
            raise AttributeError(op)

        def build(*inputs: Value | None, name: str | None = None, **attrs: Any):
            node = self._rw.create_node(op, inputs, attrs, name=name)
            return node.outputs[0] if len(node.outputs) == 1 else tuple(node.outputs)

        build.__name__ = op
        return build


class Rewriter:
    """Graph mutation API handed to ``Rule.rewrite``; counts everything into ``stats``."""

    def __init__(self, graph: Graph, stats: RewriteStats | None = None):
        self.graph = graph
        self.stats = stats if stats is not None else RewriteStats()
        self.op = _RewriterOps(self)
        self.rule_name = "<manual>"
        self.created: list[Node] = []
        self.created_constants: list[Value] = []
        self.replaced: list[Value] = []  # replacement values of the current rewrite
        self._anchor: Node | None = None

    # ------------------------------------------------------------------------- building
    def create_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: dict[str, Any] | None = None,
        *,
        name: str | None = None,
    ) -> Node:
        """Insert ``op(inputs){attrs}`` before the matched root (or at the end, outside rules)."""
        source = self._anchor.source if self._anchor is not None else None
        with self.graph.inserting_before(self._anchor):
            node = self.graph.create_node(op, list(inputs), attrs, name=name, source=source)
        self.created.append(node)
        self.stats.rule(self.rule_name).inserted += 1
        return node

    def constant(
        self, data: np.ndarray | float, name: str = "const", dtype: DType | None = None,
        like: Value | None = None,
    ) -> Value:
        """Add a graph constant (``dtype`` converts the data, e.g. a Python float to f32).

        ``like``: ``data`` is a zero-copy view of constant ``like``'s array (``w.data.T``): it is
        kept as that view (``Graph.add_constant(transposed_view=True)``) and borrows from the
        same owner, so a transposed weight costs no memory.
        """
        array = np.asarray(data)
        if dtype is not None and dtype is not DType.bfloat16:
            array = array.astype(dtype.numpy, copy=False)  # no second copy of a weight
        if like is not None:
            view = like.data is not None and np.may_share_memory(array, like.data)
            value = self.graph.add_constant(array, name=name, dtype=dtype,
                                            owner=like.owner if view else None,
                                            transposed_view=True)
        else:
            value = self.graph.add_constant(array, name=name, dtype=dtype)
        self.created_constants.append(value)
        return value

    # ------------------------------------------------------------------------- mutation
    def replace_value(self, old: Value, new: Value) -> None:
        """Make every user of ``old`` (and the graph output) use ``new``; types must match."""
        if not new.type.same_as(old.type):
            raise RewriteError(
                f"rule '{self.rule_name}' replaces %{old.name}: {old.type} with %{new.name}: "
                f"{new.type}; a replacement must have the identical type"
            )
        old.replace_all_uses_with(new)
        self.replaced.append(new)
        self.stats.rule(self.rule_name).replaced += 1

    def erase_node(self, node: Node) -> None:
        self.graph.erase_node(node)
        self.stats.rule(self.rule_name).removed += 1

    def remove_constant(self, value: Value) -> None:
        """Remove an unused graph constant."""
        self.graph.remove_constant(value)
        self.stats.rule(self.rule_name).removed += 1

    # ------------------------------------------------------------------------- edit API
    def edit(self, rule_name: str, where: Node | str, anchor: Node | None = None) -> bool:
        """Open one individual rewrite named ``rule_name`` at ``where`` (a node, or a label
        such as ``"const %w"``), for passes that find their rewrites with their own walk.

        Asks ``allow_rewrite`` first, so the rewrite is logged for the pass report and counted
        against the budget of ``graphopt.bisect``: on False (budget spent) the caller must leave
        the graph as it is from here on. New nodes go before ``anchor`` (default: ``where``
        when it is a node, else the end of the graph).
        """
        if not allow_rewrite(rule_name, where):
            return False
        if anchor is None and isinstance(where, Node):
            anchor = where
        self.begin(rule_name, anchor)
        self.stats.rule(rule_name).applied += 1
        return True

    def erase_if_dead(self, nodes: Sequence[Node], always: Node | None = None) -> list[Node]:
        """Erase nodes of ``nodes`` whose outputs are unused, repeating until none is left.

        Only PURE nodes are erased (plus ``always``, the replaced root); returns those erased.
        """
        pending = [n for n in nodes if not n._erased]
        erased = []
        progress = True
        while progress:
            progress = False
            for node in list(pending):
                if node._erased:
                    pending.remove(node)
                    continue
                dead = all(not out.uses and not out.is_graph_output for out in node.outputs)
                if dead and (node is always or PURE in node.opdef.traits):
                    self.erase_node(node)
                    pending.remove(node)
                    erased.append(node)
                    progress = True
        return erased

    # ------------------------------------------------------------------------- driver hooks
    def begin(self, rule_name: str, anchor: Node | None) -> None:
        self.rule_name = rule_name
        self._anchor = anchor
        self.created = []
        self.created_constants = []
        self.replaced = []

    def discard_created(self) -> None:
        """Undo what a rewrite built before it declined (returned None) or was denied."""
        for node in reversed(self.created):
            if not node._erased and all(not o.uses and not o.is_graph_output for o in node.outputs):
                self.graph.erase_node(node)
                self.stats.rule(self.rule_name).inserted -= 1
        for value in self.created_constants:
            if not value.uses and not value.is_graph_output and value.name in self.graph.constants:
                self.graph.remove_constant(value)
        self.created = []
        self.created_constants = []
