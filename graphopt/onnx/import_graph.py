"""Graph-level steps of the ONNX importer: node order, input dependencies, cleanup.

Kept apart from :mod:`graphopt.onnx.importer` (which drives the import) so each file stays
small; nothing here reads attributes or tensors, only the graph's structure. The cleanup after
the import goes through the rewriter: the shared layout rules (``graphopt.rewrite.layout``) and
the shared DCE (``graphopt.rewrite.eliminate_dead_code``), the same code the ``canonicalize`` and
``dce`` passes run.
"""

from __future__ import annotations

import heapq
from typing import Sequence

import onnx

from graphopt.errors import OnnxImportError
from graphopt.ir.graph import Graph, Node, Value
from graphopt.rewrite import Rule, apply_rules, layout_rules


# ------------------------------------------------------------------------------ cleanup
class _AdapterRule(Rule):
    """A shared layout rule, restricted to matches that involve an adapter node.

    Keeps the rule's name, pattern and rewrite (so the import counts the same rewrites as the
    ``canonicalize`` pass); nodes the rewrite creates are adapters too, so that a merged chain
    that turns out to be the identity disappears as well.
    """

    def __init__(self, inner: Rule, synthetic: set[Node]):
        self.name = inner.name
        super().__init__()
        self.inner, self.synthetic = inner, synthetic
        self.allow_shared = inner.allow_shared
        self.renamed: list[tuple[Value, str]] = []  # (new value, name of the value it replaced)

    def pattern(self):
        return self.inner.get_pattern()

    def check(self, match):
        if not any(n in self.synthetic for n in match.matched_nodes):
            return "no layout adapter in the match: the model's own layout ops stay as they are"
        return self.inner.check(match)

    def rewrite(self, match, rw):
        result = self.inner.rewrite(match, rw)
        if isinstance(result, Value) and result.kind != "node" and match.root.outputs[
                0].is_graph_output:
            return None  # keep a graph output computed, not aliased to an input or constant
        self.synthetic.update(rw.created)
        if isinstance(result, Value) and result.producer in rw.created:
            self.renamed.append((result, match.root.outputs[0].name))
        return result


def cancel_synthetic_layout(graph: Graph, synthetic: set[Node]) -> None:
    """Fold reshape/permute chains that involve an adapter node (``ImportContext.synthetic``).

    Runs the shared layout rules of :mod:`graphopt.rewrite.layout` (the ones the
    ``canonicalize`` pass runs): ``reshape(reshape(x))`` becomes one reshape,
    ``permute(permute(x))`` one permute, and reshapes/permutes that change nothing disappear.
    Only matches through an adapter are rewritten, so layout ops the model itself contains stay
    as they are.
    """
    rules = [_AdapterRule(r, synthetic) for r in layout_rules()]
    apply_rules(graph, rules)
    # A merged chain keeps the model's tensor name (as the ONNX graph named it), not the op's.
    for value, name in (pair for r in rules for pair in r.renamed):
        if value.producer is not None and not value.producer._erased and name not in graph._names:
            graph._release_name(value.name)
            value.name = graph.unique_name(name)


def _nodes_with_bodies(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node of ``graph`` and of its control-flow bodies (at any depth)."""
    out, stack = [], [graph]
    while stack:
        g = stack.pop()
        for n in g.node:
            out.append(n)
            stack.extend(a.g for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
    return out


def _reads(node: onnx.NodeProto) -> list[str]:
    """The names a node reads: its inputs and, for control flow, what its bodies read."""
    names = [i for i in node.input if i]
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            names.extend(i for n in _nodes_with_bodies(a.g) for i in n.input if i)
    return names


def needs_static_inputs(model: onnx.ModelProto, tensor: str) -> list[str]:
    """The graph inputs that ``tensor`` depends on (a tensor of a loop body included)."""
    producers = {o: n for n in _nodes_with_bodies(model.graph) for o in n.output}
    inits = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    found, stack, seen = [], [tensor], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in inputs:
            found.append(name)
        elif name in producers:
            stack.extend(_reads(producers[name]))
    return sorted(found, key=inputs.index)


def toposort(nodes: Sequence[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where each reads only what is defined before it: the file's order
    when it already is one, else the lowest-index ready node first (O(n log n), so a crafted
    graph in reverse order cannot make the import quadratic)."""
    waiting: dict[str, list[int]] = {}
    missing = [0] * len(nodes)
    for i, n in enumerate(nodes):
        for name in {x for x in n.input if x and x not in available}:
            waiting.setdefault(name, []).append(i)
            missing[i] += 1
    ready = [i for i, count in enumerate(missing) if count == 0]
    heapq.heapify(ready)
    defined, ordered = set(available), []
    while ready:
        i = heapq.heappop(ready)
        ordered.append(nodes[i])
        for name in nodes[i].output:
            if not name or name in defined:
                continue
            defined.add(name)
            for j in waiting.pop(name, ()):
                missing[j] -= 1
                if missing[j] == 0:
                    heapq.heappush(ready, j)
    if len(ordered) < len(nodes):
        undefined = sorted(waiting)
        raise OnnxImportError(f"the graph reads tensors nothing defines (or has a cycle): "
                              f"{undefined[:10]}")
    return ordered
