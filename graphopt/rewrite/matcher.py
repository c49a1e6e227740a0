"""Structural matching of patterns against the graph, with failure tracking for the tracer.

``match_pattern(pattern, node)`` yields every way the pattern matches with ``node`` as its root
(alternatives and commutative operand orders are backtracking points). Each failure is reported
to an optional :class:`FailureTracker` with how many pattern ops had matched and where, so the
tracer can show the closest partial match.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphopt.ir.graph import Graph, Node, Value
from graphopt.rewrite.pattern import AnyOf, Attr, Const, OpPattern, Pattern, Var


@dataclass
class Match:
    """A successful match.

    Attributes:
        root: the node matched by the pattern's root (its outputs get replaced).
        values: pattern variable name -> matched value (None for an absent optional operand).
        nodes: ``.named(key)`` op patterns -> matched node.
        attrs: ``Attr`` captures -> attribute value.
        matched_nodes: every node matched by an op pattern, root first, no duplicates.
    """

    root: Node
    values: dict[str, Value | None] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    matched_nodes: list[Node] = field(default_factory=list)

    def __getitem__(self, name: str) -> Value | None:
        try:
            return self.values[name]
        except KeyError:
            known = sorted(self.values)
            raise KeyError(f"pattern has no variable '{name}' (has: {known})") from None

    def const(self, name: str) -> np.ndarray:
        """The numpy data of the constant bound to ``name``."""
        value = self[name]
        if value is None or value.data is None:
            raise KeyError(f"'{name}' is not bound to a constant")
        return value.data

    @property
    def graph(self) -> Graph:
        return self.root.graph

    def copy(self) -> Match:
        return Match(
            self.root,
            dict(self.values),
            dict(self.nodes),
            dict(self.attrs),
            list(self.matched_nodes),
        )


@dataclass
class Failure:
    """Why a match attempt stopped: ``matched`` op patterns had matched; ``where`` is the pattern
    position (``add.a -> matmul.b``); ``reason`` says what was found instead."""

    matched: int
    where: str
    reason: str


class FailureTracker:
    """Keeps the closest failure: most pattern ops matched, then most variables bound, then
    "right kind, wrong value" (``near=True``: attribute, constant value, predicate) over a plain
    op/kind mismatch; the first one on ties."""

    def __init__(self) -> None:
        self.best: Failure | None = None
        self._score: tuple[int, int, int] = (-1, -1, -1)

    def fail(self, state: Match, where: str, reason: str, near: bool = False) -> None:
        score = (len(state.matched_nodes), len(state.values), int(near))
        if score > self._score:
            self._score = score
            self.best = Failure(score[0], where, reason)


def describe_value(value: Value | None) -> str:
    """``%h (output of relu)``, ``%w (constant f32[8, 16])``, ``%x (graph input)``."""
    if value is None:
        return "an absent operand (None)"
    if value.kind == "const":
        return f"%{value.name} (constant {value.type})"
    if value.kind == "input":
        return f"%{value.name} (graph input {value.type})"
    return f"%{value.name} (output of {value.producer.op})"


def match_pattern(
    pattern: Pattern, root: Node, tracker: FailureTracker | None = None
) -> Iterator[Match]:
    """Every structural match of ``pattern`` rooted at ``root`` (not yet checked for escapes)."""
    state = Match(root)
    if isinstance(pattern, AnyOf):
        for alt in pattern.alternatives:
            yield from _match_root(alt, root, state, tracker)
    else:
        yield from _match_root(pattern, root, state, tracker)


def match_at(pattern: Pattern, node: Node | None) -> Match | None:
    """The first structural match of ``pattern`` rooted at ``node`` (None if none, or no node).

    For code that asks whether one node has one op's structure (a ``permute`` with a given
    ``perm``, the ``pad`` feeding a conv) without a rule: the pattern names the op, so it is
    checked against the registry and written like the rules' patterns.
    """
    if node is None:
        return None
    return next(match_pattern(pattern, node), None)


def _match_root(
    pattern: Pattern, root: Node, state: Match, tracker: FailureTracker | None
) -> Iterator[Match]:
    if isinstance(pattern, AnyOf):
        for alt in pattern.alternatives:
            yield from _match_root(alt, root, state, tracker)
        return
    if not isinstance(pattern, OpPattern):
        raise TypeError(f"a rule's pattern root must be an op pattern, got {pattern!r}")
    if pattern.op != root.op:
        if tracker:
            tracker.fail(state, pattern.op, f"expected op '{pattern.op}', found '{root.op}'")
        return
    yield from _match_node(pattern, root, state, tracker, "")


def _match(
    pattern: Pattern | None,
    value: Value | None,
    state: Match,
    tracker: FailureTracker | None,
    where: str,
) -> Iterator[Match]:
    if pattern is None:
        if value is None:
            yield state
        elif tracker:
            tracker.fail(
                state, where, f"expected an absent operand (None), found {describe_value(value)}"
            )
        return
    if isinstance(pattern, AnyOf):
        for alt in pattern.alternatives:
            yield from _match(alt, value, state, tracker, where)
        return
    if isinstance(pattern, Var):
        yield from _match_var(pattern, value, state, tracker, where)
        return
    assert isinstance(pattern, OpPattern)
    if value is None or value.kind != "node":
        if tracker:
            tracker.fail(state, where, f"expected op '{pattern.op}', found {describe_value(value)}")
        return
    node = value.producer
    if node.op != pattern.op:
        if tracker:
            tracker.fail(
                state, where, f"expected op '{pattern.op}', found '{node.op}' (%{value.name})"
            )
        return
    wanted = pattern.output_index
    if wanted is None and len(node.outputs) != 1:
        if tracker:
            tracker.fail(
                state,
                where,
                f"%{node.name} has {len(node.outputs)} outputs; use .output(i) in the pattern",
            )
        return
    if wanted is not None and value.index != wanted:
        if tracker:
            tracker.fail(
                state, where, f"expected output {wanted} of '{node.op}', found output {value.index}"
            )
        return
    yield from _match_node(pattern, node, state, tracker, where)


def _match_var(
    pattern: Var, value: Value | None, state: Match, tracker: FailureTracker | None, where: str
) -> Iterator[Match]:
    label = f"'{pattern.name}'"
    if value is None and not pattern.optional:
        if tracker:
            tracker.fail(state, where, f"{label} requires an operand, found an absent one (None)")
        return
    if isinstance(pattern, Const):
        if value is None or value.kind != "const":
            if tracker:
                tracker.fail(
                    state, where, f"{label} must be a constant, found {describe_value(value)}"
                )
            return
        if pattern.value is not None and not _all_equal(value, pattern.value):
            if tracker:
                tracker.fail(
                    state,
                    where,
                    f"{label} must be all {pattern.value!r}, constant %{value.name} is not",
                    near=True,
                )
            return
    if pattern.where is not None and value is not None and not pattern.where(value):
        if tracker:
            what = pattern.doc or "its predicate"
            tracker.fail(state, where, f"{label} = {describe_value(value)} fails {what}", near=True)
        return
    if pattern.name in state.values:
        bound = state.values[pattern.name]
        if bound is not value:
            if tracker:
                tracker.fail(
                    state,
                    where,
                    f"{label} appears twice but binds "
                    f"{describe_value(bound)} and {describe_value(value)}",
                )
            return
        yield state
        return
    new = state.copy()
    new.values[pattern.name] = value
    yield new


def _all_equal(value: Value, wanted: float | bool) -> bool:
    data = value.data
    if data is None or data.size == 0 or value.dtype.name == "bfloat16":
        return False
    return bool(np.all(data == wanted))


def _match_node(
    pattern: OpPattern, node: Node, state: Match, tracker: FailureTracker | None, where: str
) -> Iterator[Match]:
    # ``where`` is this node's position ("" for the root); operand positions read
    # "add.a -> matmul.b" (operand b of the matmul feeding operand a of the root add).
    base = pattern.op if not where else f"{where} -> {pattern.op}"
    where = where or pattern.op
    new = state.copy()
    if not any(n is node for n in new.matched_nodes):
        new.matched_nodes.append(node)
    if pattern.name is not None:
        bound = new.nodes.get(pattern.name)
        if bound is not None and bound is not node:
            if tracker:
                tracker.fail(state, where, f"'{pattern.name}' binds two different nodes")
            return
        new.nodes[pattern.name] = node
    if not _attrs_match(pattern, node, state, new, tracker, where):
        return
    if not _operand_count_fits(pattern, node, state, tracker, where, base):
        return
    inputs = pattern.inputs
    operands = node.inputs
    orders = [(0, 1), (1, 0)] if pattern.commutative else [tuple(range(len(inputs)))]
    for order in orders:
        yield from _match_operands(
            pattern, [operands[i] for i in order], inputs, 0, new, tracker, base
        )


def _attrs_match(
    pattern: OpPattern,
    node: Node,
    state: Match,
    new: Match,
    tracker: FailureTracker | None,
    where: str,
) -> bool:
    """Whether ``node``'s attributes meet ``pattern``'s constraints; ``Attr`` captures are
    recorded in ``new``. A failure is reported against ``state``, the match before this node."""
    for key, constraint in pattern.attrs.items():
        actual = node.attrs.get(key)
        if isinstance(constraint, Attr):
            if constraint.where is not None and not constraint.where(actual):
                if tracker:
                    what = constraint.doc or "its predicate"
                    tracker.fail(
                        state,
                        where,
                        f"attribute {key}={actual!r} of %{node.name} fails {what}",
                        near=True,
                    )
                return False
            if constraint.name in new.attrs and new.attrs[constraint.name] != actual:
                if tracker:
                    tracker.fail(
                        state,
                        where,
                        f"captured attribute '{constraint.name}' differs: "
                        f"{new.attrs[constraint.name]!r} vs {actual!r}",
                    )
                return False
            new.attrs[constraint.name] = actual
        elif callable(constraint):
            if not constraint(actual):
                if tracker:
                    tracker.fail(
                        state,
                        where,
                        f"attribute {key}={actual!r} of %{node.name} fails the pattern's predicate",
                        near=True,
                    )
                return False
        elif actual != constraint:
            if tracker:
                tracker.fail(
                    state,
                    where,
                    f"attribute {key}: expected {constraint!r}, %{node.name} has {actual!r}",
                    near=True,
                )
            return False
    return True


def _operand_count_fits(
    pattern: OpPattern,
    node: Node,
    state: Match,
    tracker: FailureTracker | None,
    where: str,
    base: str,
) -> bool:
    """Whether ``node`` has an operand for each of ``pattern``'s, and any beyond are absent."""
    inputs = pattern.inputs
    operands = node.inputs
    if len(inputs) > len(operands):
        if tracker:
            tracker.fail(
                state,
                where,
                f"pattern has {len(inputs)} operands, %{node.name} has {len(operands)}",
            )
        return False
    extra = [v for v in operands[len(inputs) :] if v is not None]
    if extra:
        if tracker:
            slot = len(inputs) + list(operands[len(inputs) :]).index(extra[0])
            tracker.fail(
                state,
                f"{base}.{pattern.operand_name(slot)}",
                f"expected an absent operand (None), found {describe_value(extra[0])}",
            )
        return False
    return True


def _match_operands(
    pattern: OpPattern,
    values: list,
    inputs: tuple,
    i: int,
    state: Match,
    tracker: FailureTracker | None,
    base: str,
) -> Iterator[Match]:
    if i == len(inputs):
        yield state
        return
    pos = f"{base}.{pattern.operand_name(i)}"
    for sub in _match(inputs[i], values[i], state, tracker, pos):
        yield from _match_operands(pattern, values, inputs, i + 1, sub, tracker, base)


def escaping_values(match: Match) -> list[tuple[Value, str]]:
    """Interior values (outputs of matched non-root nodes) used outside the match.

    Returns ``(value, who)`` pairs; ``who`` names an outside user or "the graph output".
    """
    inside = {id(n) for n in match.matched_nodes}
    found = []
    for node in match.matched_nodes:
        if node is match.root:
            continue
        for out in node.outputs:
            if out.is_graph_output:
                found.append((out, "the graph output"))
                continue
            for user, _ in out.uses:
                if id(user) not in inside:
                    found.append((out, f"%{user.name} = {user.op}"))
                    break
    return found
