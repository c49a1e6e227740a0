"""dce: remove pure nodes whose outputs are unused, and unused constants.

Before -> after::

    graph main(%x: f32[4]) {                      graph main(%x: f32[4]) {
      const %unused: f32[] = 2.0                    %y: f32[4] = relu(%x)
      %dead: f32[4] = exp(%x)                       return %y
      %y: f32[4] = relu(%x)                       }
      return %y
    }

Sound because a PURE node (registry trait) has no effect besides its outputs: when no node and no
graph output reads them, removing it cannot change any output. Nodes without the trait are kept
even when unused. Walking the nodes backwards removes whole dead chains in one sweep.
"""

from __future__ import annotations

from graphopt.ir.graph import Graph
from graphopt.ops.registry import PURE
from graphopt.rewrite.tracking import allow_rewrite
from graphopt.transform.registry import register_pass


def _is_dead(node) -> bool:
    return all(not out.uses and not out.is_graph_output for out in node.outputs)


@register_pass("dce")
def dce(graph: Graph) -> bool:
    """Dead code elimination: drop unused pure nodes and unused constants."""
    changed = False
    for node in reversed(graph.nodes):
        if PURE in node.opdef.traits and _is_dead(node):
            if not allow_rewrite("dead-node", node):
                return changed
            graph.erase_node(node)
            changed = True
    outputs = {id(v) for v in graph.outputs}
    for value in list(graph.constants.values()):
        if not value.uses and id(value) not in outputs:
            if not allow_rewrite("dead-constant", f"const %{value.name}"):
                return changed
            graph.remove_constant(value)
            changed = True
    return changed
