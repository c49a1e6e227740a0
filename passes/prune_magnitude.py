"""prune-magnitude: unstructured magnitude pruning; the zeros are folded into the weights.

Before -> after (``prune-magnitude{sparsity=0.5}``; the types do not change, the data does, and
each pruned constant prints its CSR record, ``sparse(nnz=N)``)::

    const %fc.weight: f32[2, 4] = [[0.9, -0.1, 0.3, -0.7],      [[0.9, 0.0, 0.0, -0.7],
                                   [0.2, -0.8, 0.05, 0.6]]       [0.0, -0.8, 0.0, 0.6]]
    %y: f32[1, 2] = linear(%x, %fc.weight, %fc.bias)            (unchanged)

Each pruned weight also gets a CSR record (``graphopt.prune.sparse.sparse_weight``) that a backend
uses to pick a sparse kernel. Not numerically exact: the smallest weights become 0 (per weight
with ``scope=layer``, or below one global threshold with ``scope=global``); recover accuracy
with ``graphopt.finetune``. Weights: linear / conv / conv_transpose / matmul constant operands;
embeddings, biases and norm parameters are never pruned; ``exclude`` globs skip constants.
Masking one weight is one rewrite (``mask-weight``) through the rewriter's edit API, so
``graphopt.bisect`` can stop after any one weight.
"""

from __future__ import annotations

from dataclasses import field
from typing import Literal

import numpy as np

from graphopt.ir.graph import Graph
from graphopt.transform.registry import register_pass


@register_pass("prune-magnitude")
class PruneMagnitude:
    """Unstructured magnitude pruning to a sparsity (per layer or global), zeros folded in."""

    sparsity: float = 0.5
    scope: Literal["layer", "global"] = "layer"
    exclude: tuple[str, ...] = ()
    _report: object = field(default=None, init=False, repr=False, compare=False)

    def run(self, graph: Graph) -> bool:
        from graphopt.prune.masks import prune_magnitude

        before = {n: v.data for n, v in graph.constants.items()}
        self._report = prune_magnitude(graph, self.sparsity, self.scope, exclude=self.exclude)
        return any(v.data is not before[n] and not np.array_equal(v.data, before[n])
                   for n, v in graph.constants.items())
