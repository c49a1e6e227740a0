"""Helpers for the mutation test: find IR objects by name, apply a "buggy rewrite", fingerprint.

A mutation is written the way a buggy pass would be: it looks up the node it targets by its
output name and rewrites it with the ordinary graph API (``create_node``, ``set_input``,
``replace_all_uses_with``, ``erase_node``) or, for the bugs that bypass that API, by assigning
fields directly. ``MutationPass`` wraps one so that the PassManager runs it like any other pass,
under the instruments users get, and records whether the graph really changed (a mutation that
is a no-op would pass the "caught" check vacuously).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphopt.errors import NumericDriftError, PassError, VerificationError
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.printer import print_graph
from graphopt.transform import NumericCheckInstrument, PassManager


def value_named(graph: Graph, name: str) -> Value:
    """The graph input, constant or node output called ``name``."""
    for v in graph.values():
        if v.name == name:
            return v
    raise KeyError(f"no value %{name} in graph {graph.name}")


def node_named(graph: Graph, name: str, op: str | None = None) -> Node:
    """The node whose first output is ``name``; checks its op so a changed model fails loudly."""
    node = value_named(graph, name).producer
    if node is None:
        raise KeyError(f"%{name} is not a node output in graph {graph.name}")
    if op is not None and node.op != op:
        raise KeyError(f"%{name} is a {node.op} node, expected {op}")
    return node


def rebuild(
    graph: Graph,
    node: Node,
    *,
    inputs: Sequence[Value | None] | None = None,
    attrs: dict[str, Any] | None = None,
    keep_types: bool = False,
) -> Node:
    """Replace ``node`` by a copy with other ``inputs`` and/or ``attrs`` changes, as a rewrite.

    The replacement's output types are inferred by the op (a pass that builds its replacement
    with the builder), or copied from the old node with ``keep_types`` (a pass that trusts the
    types it had). Uses and graph outputs move to the replacement; the old node is erased.
    """
    new_inputs = list(node.inputs if inputs is None else inputs)
    new_attrs = node.attrs.replace(**attrs) if attrs else node.attrs
    types = [v.type for v in node.outputs] if keep_types else None
    with graph.inserting_before(node):
        new = graph.create_node(
            node.op, new_inputs, new_attrs, name=node.name, output_types=types
        )
    for old, repl in zip(node.outputs, new.outputs):
        old.replace_all_uses_with(repl)
    graph.erase_node(node)
    return new


def replace_constant(graph: Graph, user: Node, slot: int, transform: Callable) -> Value:
    """Give ``user`` a new constant ``transform(old data)`` in ``slot`` (a buggy weight fold)."""
    old = user.inputs[slot]
    new = graph.add_constant(transform(old.data.copy()), name=old.name + "_folded",
                             dtype=old.dtype)
    user.set_input(slot, new)
    return new


def drop_node(graph: Graph, node: Node, keep: int = 0) -> None:
    """Remove ``node``, rewiring its uses to its operand ``keep`` (a wrong identity rewrite)."""
    node.output.replace_all_uses_with(node.inputs[keep])
    graph.erase_node(node)


# ------------------------------------------------------------------------------ fingerprints
@dataclass
class Fingerprint:
    """What a mutation can change: the text, the use lists, and constant data (by identity)."""

    text: str
    uses: tuple
    constants: dict[str, np.ndarray]

    def same_as(self, other: Fingerprint) -> bool:
        if self.text != other.text or self.uses != other.uses:
            return False
        if self.constants.keys() != other.constants.keys():
            return False
        return all(
            a is b or (a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes())
            for a, b in ((self.constants[k], other.constants[k]) for k in self.constants)
        )


def fingerprint(graph: Graph) -> Fingerprint:
    try:
        text = print_graph(graph)
    except Exception as exc:  # a corrupted graph may not print; that is a difference too
        text = f"<unprintable: {type(exc).__name__}: {exc}>"
    uses = tuple(
        (v.name, str(v.type), v.kind, tuple((n.name, slot, n._erased) for n, slot in v.uses))
        for v in graph.values()
    )
    data = {k: v.data for k, v in graph.constants.items()}
    return Fingerprint(text, uses, data)


# ------------------------------------------------------------------------------ running
class MutationPass:
    """A throw-away pass applying one mutation; ``changed_graph`` says whether it did anything."""

    def __init__(self, name: str, mutate: Callable[[Graph], Any]):
        self.pass_name = f"mutate-{name}"
        self.mutate = mutate
        self.changed_graph: bool | None = None

    def run(self, graph: Graph) -> bool:
        before = fingerprint(graph)
        self.mutate(graph)
        self.changed_graph = not fingerprint(graph).same_as(before)
        return True


@dataclass
class Outcome:
    """How a pass run under the instruments ended: ``caught_by`` is "verifier", "numeric",
    "none" (not caught) or "other:<ExceptionType>" (failed some other way)."""

    caught_by: str
    message: str
    pass_error: PassError | None
    changed_graph: bool | None


def run_under_instruments(graph: Graph, args: tuple, p: Any, rtol=1e-4, atol=1e-5) -> Outcome:
    """Run pass ``p`` on ``graph`` (mutated in place) with verify-after-pass and a numeric check
    against the pre-pass graph, the PassManager's own instruments."""
    manager = PassManager([p], [NumericCheckInstrument(args, rtol=rtol, atol=atol)], verify=True)
    try:
        manager.run(graph)
    except PassError as exc:
        cause = exc.__cause__
        if isinstance(cause, VerificationError):
            kind = "verifier"
        elif isinstance(cause, NumericDriftError):
            kind = "numeric"
        else:
            kind = f"other:{type(cause).__name__}"
        return Outcome(kind, str(exc), exc, getattr(p, "changed_graph", None))
    return Outcome("none", "", None, getattr(p, "changed_graph", None))
