"""Graph-level steps of the ONNX importer: node order, input dependencies, cleanup.

Kept apart from :mod:`graphopt.onnx.importer` (which drives the import) so each file stays
small; nothing here reads attributes or tensors, only the graph's structure.
"""

from __future__ import annotations

import heapq
from typing import Sequence

import onnx

from graphopt.errors import OnnxImportError
from graphopt.ir.graph import Graph, Node


# ------------------------------------------------------------------------------ cleanup
def cancel_synthetic_layout(graph: Graph, synthetic: set[Node]) -> None:
    """Fold reshape/permute chains that involve an adapter node (``ImportContext.synthetic``).

    ``reshape(reshape(x))`` becomes one reshape, ``permute(permute(x))`` one permute, and
    reshapes/permutes that change nothing disappear. Only chains through an adapter are
    touched, so layout ops the model itself contains stay as they are.
    """
    from graphopt.ir.types import dims_equal

    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node._erased or node.op not in ("reshape", "permute"):
                continue
            x = node.inputs[0]
            prev = x.producer
            if (prev is not None and not prev._erased and prev.op == node.op
                    and (node in synthetic or prev in synthetic) and len(x.uses) == 1
                    and not x.is_graph_output):
                if node.op == "permute":
                    inner, outer = prev.attrs["perm"], node.attrs["perm"]
                    node.attrs = node.attrs.replace(perm=tuple(inner[p] for p in outer))
                node.set_input(0, prev.inputs[0])
                graph.erase_node(prev)
                synthetic.add(node)
                changed = True
                x = node.inputs[0]
            if node not in synthetic:
                continue
            out = node.outputs[0]
            noop = (node.op == "permute" and list(node.attrs["perm"]) == list(range(x.type.rank))
                    ) or (node.op == "reshape" and x.type.rank == out.type.rank and all(
                        dims_equal(a, b) for a, b in zip(x.shape, out.shape)))
            if noop and not (out.is_graph_output and x.kind != "node"):
                out.replace_all_uses_with(x)
                graph.erase_node(node)
                changed = True


def dead_code_elimination(graph: Graph) -> None:
    for node in reversed(list(graph.nodes)):
        if node.has_trait("pure") and not any(o.uses or o.is_graph_output for o in node.outputs):
            graph.erase_node(node)
    for value in list(graph.constants.values()):
        if not value.uses and not value.is_graph_output:
            graph.remove_constant(value)


def needs_static_inputs(model: onnx.ModelProto, tensor: str) -> list[str]:
    """The graph inputs that ``tensor`` depends on."""
    producers = {o: n for n in model.graph.node for o in n.output}
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
            stack.extend(i for i in producers[name].input if i)
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
