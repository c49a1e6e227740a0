"""The IR verifier: every invariant a pass may break, checked in one walk.

``verify_graph`` collects *all* problems before raising, so a broken pass is diagnosed from one
message: each line names the node (``%name = op``) and what is wrong. Checked:

* node list: links, ownership, count; every value's producer/index/kind and graph;
* names: unique, printable, and reserved in the graph so ``unique_name`` cannot hand them out again;
* ops known, attributes equal to their schema-normalized form, operand arity;
* SSA order: operands defined before use (inputs and constants first, then nodes in order), not
  from another graph or an erased node;
* use lists equal to the actual operand slots, in both directions;
* constants: data shape and numpy storage dtype match the type;
* stored output types and count equal what the op's shape rule infers;
* graph outputs defined.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from graphopt.errors import GraphoptError, VerificationError
from graphopt.ir.attrs import Attrs
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.schema import get_op
from graphopt.ir.types import TensorType

MAX_REPORTED = 20
_PRINTABLE_NAME = re.compile(r"[A-Za-z0-9_.]+\Z")


def verify_graph(graph: Graph) -> None:
    """Check every IR invariant of ``graph``.

    Raises:
        VerificationError: listing every problem found (the first ``MAX_REPORTED`` of them).
    """
    problems = _Checker(graph).run()
    if problems:
        shown = problems[:MAX_REPORTED]
        lines = [f"graph {graph.name} failed verification ({len(problems)} problem(s)):"]
        lines += [f"  - {p}" for p in shown]
        if len(problems) > len(shown):
            lines.append(f"  ... and {len(problems) - len(shown)} more")
        raise VerificationError("\n".join(lines))


class _Checker:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.problems: list[str] = []

    def report(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def run(self) -> list[str]:
        nodes = self.node_list()
        # Values of the graph in definition order; ids, because Value equality is identity anyway
        # and a dict keyed by id survives corrupt objects.
        all_values: dict[int, Value] = {}
        for v in self.graph.inputs:
            all_values[id(v)] = v
        for v in self.graph.constants.values():
            all_values[id(v)] = v
        for node in nodes:
            for v in node.outputs:
                all_values[id(v)] = v
        self.check_definitions(nodes)
        defined: set[int] = {id(v) for v in self.graph.inputs}
        defined |= {id(v) for v in self.graph.constants.values()}
        actual_uses: dict[int, set[tuple[int, int]]] = {}
        operands: dict[int, Value] = {}
        for node in nodes:
            for slot, v in enumerate(node.inputs):
                if v is None:
                    continue
                operands[id(v)] = v
                actual_uses.setdefault(id(v), set()).add((id(node), slot))
                self.check_operand(node, slot, v, defined, all_values)
            self.check_op(node)
            defined |= {id(v) for v in node.outputs}
        self.check_uses({**all_values, **operands}, actual_uses, nodes)
        for i, v in enumerate(self.graph.outputs):
            if not isinstance(v, Value) or id(v) not in all_values:
                name = f"%{v.name}" if isinstance(v, Value) else repr(v)
                self.report("graph outputs", f"output {i} ({name}) is not defined in the graph")
        return self.problems

    # ------------------------------------------------------------------------------ structure
    def node_list(self) -> list[Node]:
        graph, root = self.graph, self.graph._root
        nodes: list[Node] = []
        prev, node = root, root._next
        while node is not root:
            if len(nodes) > graph._num_nodes + 1000:
                self.report("node list", "the linked list does not return to its root (cycle)")
                break
            where = _describe(node)
            if node._prev is not prev:
                self.report(
                    where, "broken node list: its back link does not point to the node before it"
                )
            if node.graph is not graph:
                self.report(where, "node belongs to another graph")
            if node._erased:
                self.report(where, "erased node is still linked into the graph")
            nodes.append(node)
            prev, node = node, node._next
        if root._prev is not prev:
            self.report("node list", "the root's back link does not point to the last node")
        if len(nodes) != graph._num_nodes:
            self.report(
                "node list", f"graph counts {graph._num_nodes} nodes, list has {len(nodes)}"
            )
        return nodes

    def check_definitions(self, nodes: list[Node]) -> None:
        graph = self.graph
        defs: list[tuple[Value, str, str]] = [(v, "input", "graph input") for v in graph.inputs]
        for key, v in graph.constants.items():
            defs.append((v, "const", "constant"))
            if v.name != key:
                self.report(f"constant %{v.name}", f"is registered under the name '{key}'")
            self.check_constant(v)
        for node in nodes:
            for i, v in enumerate(node.outputs):
                defs.append((v, "node", _describe(node)))
                if v.producer is not node or v.index != i:
                    self.report(
                        _describe(node),
                        f"output {i} %{v.name} has producer "
                        f"{_describe(v.producer)} and index {v.index}",
                    )
        counts = Counter(v.name for v, _, _ in defs)
        for v, kind, where in defs:
            if counts[v.name] > 1:
                self.report(where, f"value name %{v.name} is defined {counts[v.name]} times")
                counts[v.name] = 1  # report each duplicate name once
            if not isinstance(v.name, str) or not _PRINTABLE_NAME.match(v.name):
                self.report(
                    where,
                    f"value name {v.name!r} is not made of letters, digits, '_' "
                    "and '.' (the printer could not write it)",
                )
            elif v.name not in graph._names:
                self.report(
                    where,
                    f"name %{v.name} is not reserved in the graph (renamed by "
                    "hand?); unique_name could hand it out again",
                )
            if v.graph is not graph:
                self.report(where, f"%{v.name} belongs to another graph")
            if v.kind != kind:
                self.report(where, f"%{v.name} has kind '{v.kind}', expected '{kind}'")
            if kind != "node" and v.producer is not None:
                self.report(where, f"%{v.name} has a producer node {_describe(v.producer)}")
            if not isinstance(v.type, TensorType):
                self.report(where, f"%{v.name} has type {v.type!r}, not a TensorType")

    def check_constant(self, v: Value) -> None:
        where = f"constant %{v.name}"
        if not isinstance(v.data, np.ndarray):
            self.report(where, f"data is {type(v.data).__name__}, not a numpy array")
            return
        if not isinstance(v.type, TensorType):
            return
        if v.data.shape != v.type.shape:
            self.report(where, f"data shape {list(v.data.shape)} != type shape {v.type}")
        if v.data.dtype != v.type.dtype.numpy:
            self.report(
                where,
                f"data dtype {v.data.dtype} != numpy storage "
                f"{v.type.dtype.numpy} of {v.type.dtype}",
            )

    # ---------------------------------------------------------------------------------- nodes
    def check_operand(self, node, slot, v, defined, all_values) -> None:
        where, name = _describe(node), getattr(v, "name", repr(v))
        if not isinstance(v, Value):
            self.report(where, f"operand {slot} is {v!r}, not a Value")
        elif v.graph is not self.graph:
            self.report(where, f"operand {slot} %{name} belongs to another graph")
        elif v.producer is not None and v.producer._erased:
            self.report(
                where, f"operand {slot} %{name} is produced by erased node {_describe(v.producer)}"
            )
        elif id(v) not in all_values:
            self.report(where, f"operand {slot} %{name} is not defined in the graph")
        elif id(v) not in defined:
            self.report(
                where,
                f"operand {slot} %{name} is used before its definition {_describe(v.producer)}",
            )

    def check_op(self, node: Node) -> None:
        where = _describe(node)
        try:
            opdef = get_op(node.op)
        except GraphoptError:
            self.report(where, f"unknown op '{node.op}'")
            return
        ok = True
        if not isinstance(node.attrs, Attrs):
            self.report(where, f"attrs are a {type(node.attrs).__name__}, not Attrs")
            ok = False
        else:
            try:
                normal = opdef.check_attrs(node.attrs, context=where)
                if normal != node.attrs:
                    missing = sorted(set(normal) - set(node.attrs))
                    self.report(where, f"attrs do not match the schema (missing {missing})")
                    ok = False
            except GraphoptError as exc:
                self.report(where, str(exc))
                ok = False
        try:
            opdef.check_arity(node.inputs, context=where)
        except GraphoptError as exc:
            self.report(where, str(exc))
            ok = False
        types = [None if v is None else getattr(v, "type", None) for v in node.inputs]
        if not ok or any(
            isinstance(v, Value) and not isinstance(t, TensorType)
            for v, t in zip(node.inputs, types)
        ):
            return
        try:
            inferred = opdef.infer_types(types, node.attrs)
        except GraphoptError as exc:
            self.report(where, f"type inference fails: {exc}")
            return
        if len(inferred) != len(node.outputs):
            self.report(where, f"has {len(node.outputs)} output(s), op infers {len(inferred)}")
            return
        for v, want in zip(node.outputs, inferred):
            if isinstance(v.type, TensorType) and not v.type.same_as(want):
                self.report(where, f"%{v.name} has stored type {v.type}, op infers {want}")

    def check_uses(self, values: dict[int, Value], actual: dict, nodes: list[Node]) -> None:
        live = {id(n): n for n in nodes}
        for key, v in values.items():
            if not isinstance(v, Value):
                continue
            listed = Counter((id(n), slot) for n, slot in v.uses)
            real = actual.get(key, set())
            for node, slot in v.uses:
                use = (id(node), slot)
                if use not in real:
                    if use[0] not in live:
                        why = "that node is not in the graph (erased?)"
                    else:
                        held = node.inputs[slot] if slot < len(node.inputs) else "nothing"
                        held = f"%{held.name}" if isinstance(held, Value) else held
                        why = f"that slot holds {held}"
                    self.report(f"%{v.name}", f"stale use by {_describe(node)} slot {slot}: {why}")
                elif listed[use] > 1:
                    self.report(
                        f"%{v.name}",
                        f"use by {_describe(node)} slot {slot} is listed {listed[use]} times",
                    )
                    listed[use] = 1  # report it once
            for node_id, slot in sorted(real - set(listed), key=lambda u: u[1]):
                self.report(
                    _describe(live[node_id]),
                    f"operand {slot} %{v.name} is missing from its use list",
                )


def _describe(node: Node | None) -> str:
    if node is None:
        return "<no producer>"
    try:
        return node.describe()
    except Exception:  # a corrupt node must not hide the report about it
        return f"<{getattr(node, 'op', '?')} node>"
