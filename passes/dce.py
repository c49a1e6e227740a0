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
even when unused. The implementation is ``graphopt.rewrite.eliminate_dead_code``, the one DCE
that the ONNX importer's cleanup also runs; each removal is one rewrite (``dead-node``,
``dead-constant``) in the pass report and for ``bisect``.
"""

from __future__ import annotations

from graphopt.ir.graph import Graph
from graphopt.rewrite.dce import eliminate_dead_code
from graphopt.transform.registry import register_pass


@register_pass("dce")
def dce(graph: Graph) -> bool:
    """Dead code elimination: drop unused pure nodes and unused constants."""
    return eliminate_dead_code(graph).changed
