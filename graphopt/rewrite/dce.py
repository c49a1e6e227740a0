"""The one dead-code elimination of graphopt: unused pure nodes and unused constants.

Used by the ``dce`` pass, the ONNX importer's cleanup and anything else that leaves dead code
behind (it lives here, below every user, so that all of them share it). Every removal is one
rewrite through the :class:`Rewriter` edit API, named ``dead-node`` or ``dead-constant``, so the
pass report counts them and ``graphopt.bisect`` can stop after any one of them.

Sound because a PURE node (registry trait) has no effect besides its outputs: when no node and no
graph output reads them, removing it cannot change any output. Nodes without the trait are kept
even when unused. Walking the nodes backwards removes whole dead chains in one sweep.
(``Rewriter.erase_if_dead`` is the local form the rule driver uses on the nodes a rewrite
matched; this is the whole-graph form.)
"""

from __future__ import annotations

from graphopt.ir.graph import Graph, Node
from graphopt.ops.registry import PURE
from graphopt.rewrite.rewriter import Rewriter, RewriteStats

DEAD_NODE = "dead-node"
DEAD_CONSTANT = "dead-constant"


def is_dead(node: Node) -> bool:
    """True when no node and no graph output reads any output of ``node``."""
    return all(not out.uses and not out.is_graph_output for out in node.outputs)


def eliminate_dead_code(
    graph: Graph, *, nodes: bool = True, constants: bool = True, rw: Rewriter | None = None
) -> RewriteStats:
    """Remove unused PURE nodes (``nodes``) and then unused constants (``constants``), in place.

    Args:
        graph: rewritten in place.
        nodes, constants: what to remove (a frontend that only drops unused weights passes
            ``nodes=False``).
        rw: the rewriter to count into (default: a new one on ``graph``).

    Returns:
        Per-rule counts (``dead-node``, ``dead-constant``); ``.changed`` says whether anything
        was removed. Stops early, leaving the rest, when the bisect budget is spent.
    """
    rw = rw if rw is not None else Rewriter(graph)
    if nodes:
        for node in reversed(graph.nodes):
            if PURE in node.opdef.traits and is_dead(node):
                if not rw.edit(DEAD_NODE, node):
                    return rw.stats
                rw.erase_node(node)
    if constants:
        outputs = {id(v) for v in graph.outputs}
        for value in list(graph.constants.values()):
            if not value.uses and id(value) not in outputs:
                if not rw.edit(DEAD_CONSTANT, f"const %{value.name}"):
                    return rw.stats
                rw.remove_constant(value)
    return rw.stats
