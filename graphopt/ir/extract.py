"""Regions of a graph as graphs of their own: what a micro-benchmark of one layer compiles.

``extract_region(graph, nodes)`` copies ``nodes`` (in graph order) into a new graph whose inputs
are the non-constant values they read from outside the set and whose outputs are the values
they produce that something outside the set (or the graph's output list) reads. Constants are
shared, not copied (their arrays are read-only), so encodings keyed to the array (a CSR record)
follow them. ``region_signature`` describes a region by structure only (ops, attributes, types,
wiring; no names, no constant data), so two layers of the same shape and kind share it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterable, Mapping

import sympy

from graphopt.errors import GraphoptError
from graphopt.ir.attrs import Attrs, has_symbols, substitute_symbols
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.types import TensorType


def extract_region(graph: Graph, nodes: Iterable[Node],
                   bindings: Mapping[sympy.Symbol, int] | None = None
                   ) -> tuple[Graph, list[str]]:
    """The region ``nodes`` of ``graph`` as a new graph, and the names (in ``graph``) of the
    values its inputs stand for, in input order.

    ``bindings`` (size symbol -> int, e.g. from one concrete input) makes the copy concrete:
    symbolic sizes in types and attributes (a reshape's target shape) are replaced; by default
    everything is copied as it is.

    Raises:
        GraphoptError: ``nodes`` is empty or holds a node of another graph.
    """
    chosen = {id(n) for n in nodes}
    ordered = [n for n in graph.nodes if id(n) in chosen]
    if not ordered or len(ordered) != len(chosen):
        raise GraphoptError(f"extract_region: {len(chosen)} node(s) given, {len(ordered)} of "
                            f"them in graph {graph.name}")
    def type_of(value: Value) -> TensorType:
        t = value.type
        if not bindings or all(isinstance(d, int) for d in t.shape):
            return t
        return dataclasses.replace(t, shape=substitute_symbols(tuple(t.shape), bindings))

    def attrs_of(node: Node) -> Attrs:
        if not bindings or not any(has_symbols(v) for v in node.attrs.values()):
            return node.attrs
        return Attrs({k: substitute_symbols(v, bindings) for k, v in node.attrs.items()})

    region = Graph(f"{graph.name}.region")
    mapping: dict[int, Value] = {}
    sources: list[str] = []

    def copy_of(value: Value) -> Value:
        if id(value) not in mapping:
            if value.kind == "const":
                mapping[id(value)] = region.add_constant(value.data, value.name,
                                                         dtype=value.dtype)
            else:
                mapping[id(value)] = region.add_input(value.name, type_of(value))
                sources.append(value.name)
        return mapping[id(value)]

    produced = {id(v) for n in ordered for v in n.outputs}
    for node in ordered:
        inputs = [None if v is None else mapping[id(v)] if id(v) in produced else copy_of(v)
                  for v in node.inputs]
        copy = region.create_node(node.op, inputs, attrs_of(node),
                                  output_types=[type_of(v) for v in node.outputs])
        for old, new in zip(node.outputs, copy.outputs):
            mapping[id(old)] = new
    graph_outputs = {id(v) for v in graph.outputs}
    outputs = [v for n in ordered for v in n.outputs
               if id(v) in graph_outputs or any(id(user) not in chosen for user, _ in v.uses)]
    region.set_outputs([mapping[id(v)] for v in outputs]
                       or [mapping[id(ordered[-1].outputs[0])]])
    return region, sources


def region_signature(region: Graph) -> str:
    """A hash of ``region``'s structure: input types, constant types, and per node its op,
    attributes, operands (by position) and output types. Equal for two regions that compute
    the same ops on the same shapes, whatever their names and weights."""
    index: dict[int, str] = {}
    parts = []
    for i, v in enumerate(region.inputs):
        index[id(v)] = f"in{i}"
        parts.append(f"in{i}:{v.type}")
    for i, v in enumerate(region.constants.values()):
        index[id(v)] = f"c{i}"
        parts.append(f"c{i}:{v.type}")
    for n, node in enumerate(region.nodes):
        operands = ",".join("-" if v is None else index[id(v)] for v in node.inputs)
        for k, v in enumerate(node.outputs):
            index[id(v)] = f"n{n}.{k}"
        attrs = ";".join(f"{k}={v!r}" for k, v in node.attrs.items())
        parts.append(f"{node.op}({operands}){{{attrs}}}->"
                     + ",".join(str(v.type) for v in node.outputs))
    parts.append("out:" + ",".join(index[id(v)] for v in region.outputs))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
