"""quantize-weights: weight-only int4 / int8 block-wise quantization of linear layers.

Before -> after (``quantize-weights{bits=4,block_size=32}``)::

    const %w: f32[64, 96]
    %y: f32[2, 64] = linear(%x, %w, %b)
  ->
    const %w_q4: u8[64, 3, 16]          (two 4-bit codes per byte, 3 blocks of 32)
    const %w_scales: f32[64, 3]
    %y_q4: f32[2, 64] = linear_weight_only(%x, %w_q4, %w_scales, %b, None) {bits=4, ...}

Not numerically exact: each block of ``block_size`` weights along K is rounded to
``bits``-bit symmetric codes with its own scale; activations stay float. Lowers to
onnxruntime's ``com.microsoft.MatMulNBits``. ``exclude`` globs keep layers float. Each layer is
one rewrite (``quantize-weight-only``) through the rewriter's edit API, so ``graphopt.bisect``
can stop after any one of them.
"""

from __future__ import annotations

from graphopt.ir.graph import Graph
from graphopt.transform.registry import register_pass


@register_pass("quantize-weights")
class QuantizeWeights:
    """Weight-only block-wise int4/int8 linear layers (MatMulNBits), activations float."""

    bits: int = 4
    block_size: int = 32
    act_bits: int = 0  # 8: activations int8 per block too (MatMulNBits accuracy_level 4)
    exclude: tuple[str, ...] = ()

    def run(self, graph: Graph) -> bool:
        from graphopt.quant.dynamic import dynamic_candidates
        from graphopt.quant.weight_only import quantize_weight_only

        if self.bits not in (4, 8) or self.block_size < 16 or self.block_size & (
            self.block_size - 1
        ):
            raise ValueError("quantize-weights: bits 4 or 8, block_size a power of 2 >= 16")
        if self.act_bits not in (0, 8):
            raise ValueError("quantize-weights: act_bits 0 (float activations) or 8")
        nodes = dynamic_candidates(graph, self.exclude)
        return quantize_weight_only(graph, nodes, self.bits, self.block_size,
                                    act_bits=self.act_bits) > 0
