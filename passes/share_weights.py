"""share-weights: Deep Compression weight sharing, each weight indexed into its own codebook.

Before -> after (``share-weights{bits=5,conv_bits=8}``)::

    const %fc.weight: f32[300, 64]
    %y: f32[1, 300] = linear(%x, %fc.weight, %fc.bias)
  ->
    const %fc.weight.indices: u8[300, 64]         (index 0: a pruned zero)
    const %fc.weight.centroids: f32[32]
    %fc.weight.shared: f32[300, 64] = codebook_decode(%fc.weight.indices, %fc.weight.centroids)
    %y: f32[1, 300] = linear(%x, %fc.weight.shared, %fc.bias)

Not numerically exact: each weight moves to the nearest of ``2**bits`` k-means centroids
(linear initialization over the weight's range; ``conv_bits`` for convolutions; biases too with
``bias_bits``). Zeros left by
pruning are not clustered and stay exact. ``graphopt.finetune`` then trains the centroids (the
gradients of the weights sharing one are summed) and ``graphopt.compress`` stores the indices
sparse + Huffman coded. The same rewrite as ``graphopt.quantize(graph, "codebook")``, without
its error budget. Each weight is one rewrite (``share-weight``) through the rewriter's edit
API, so ``graphopt.bisect`` can stop after any one of them.
"""

from __future__ import annotations

from graphopt.ir.graph import Graph
from graphopt.transform.registry import register_pass


@register_pass("share-weights")
class ShareWeights:
    """Per-weight k-means codebooks (codebook_decode): fully connected ``bits``, convs
    ``conv_bits``; ``exclude`` globs over node or weight names keep weights float."""

    bits: int = 5
    conv_bits: int = 8
    bias_bits: int | None = None
    exclude: tuple[str, ...] = ()

    def run(self, graph: Graph) -> bool:
        from graphopt.errors import QuantizationError
        from graphopt.quant.codebook import codebook_candidates, share_constants

        for name in ("bits", "conv_bits", "bias_bits"):
            value = getattr(self, name)
            if value is None and name == "bias_bits":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
                raise QuantizationError(f"share-weights: {name}={value!r} must be 1 to 12")
        names = {v.name for v in codebook_candidates(graph, self.exclude)}
        return bool(share_constants(graph, names, self.bits, self.conv_bits, self.bias_bits))
