"""quantize-dynamic: int8 dynamic quantization of linear layers with constant weights.

Before -> after::

    const %w: f32[16, 8]
    const %b: f32[16]
    %y: f32[2, 16] = linear(%x, %w, %b)
  ->
    const %w_q: i8[16, 8]
    const %w_scale: f32[16]
    %y_q: f32[2, 16] = qlinear_dynamic(%x, %w_q, %w_scale, %b, None)

Not numerically exact: weights are rounded to int8 per output channel (symmetric) and the
activation to u8 per tensor at run time; the integer GEMM itself is exact. ``linear``,
``fused_linear`` (epilogue kept) and ``matmul`` by a constant 2-D weight are rewritten;
``exclude`` globs (node or weight names) stay float. ``per_token=true`` gives every row
(token) of a linear's input its own u8 scale and zero point (``qlinear_dynamic{per_token}``):
exactly the per-tensor rule applied row by row, far less error on transformers' outlier
tokens. ``convs=true`` also rewrites 2-D
``conv`` / ``fused_conv`` to ``qconv_dynamic`` (4x smaller weights; on onnxruntime no faster
than fp32, hence off by default). With ``embeddings`` (default) constant
embedding tables are stored int8 with a per-row scale, dequantized after the gather. For
sensitivity-driven fallback under an error budget use
``graphopt.quantize(graph, calibration=..., error_budget=...)``.

Each layer is one rewrite (``quantize-dynamic-linear``, ``quantize-dynamic-conv``,
``quantize-embedding``) through the rewriter's edit API: the pass report counts them and
``graphopt.bisect`` can stop after any one of them (the layers after it stay float).
"""

from __future__ import annotations

from graphopt.ir.graph import Graph
from graphopt.rewrite.rewriter import Rewriter
from graphopt.transform.registry import register_pass


@register_pass("quantize-dynamic")
class QuantizeDynamic:
    """Dynamic int8 linear layers: per-channel int8 weights, per-tensor u8 activations."""

    exclude: tuple[str, ...] = ()
    embeddings: bool = True
    convs: bool = False
    per_token: bool = False

    def run(self, graph: Graph) -> bool:
        from graphopt.quant.dynamic import (
            conv_candidates,
            dynamic_candidates,
            embedding_candidates,
            quantize_convs,
            quantize_embedding,
            quantize_nodes,
        )

        rw = Rewriter(graph)  # one rewrite per layer: counted, bisectable
        names = {n.name for n in dynamic_candidates(graph, self.exclude)}
        quantize_nodes(graph, names, per_token=self.per_token, rw=rw)
        if self.convs:
            convs = {n.name for n in conv_candidates(graph, self.exclude)}
            quantize_convs(graph, convs, rw=rw)
        if self.embeddings:
            for node in embedding_candidates(graph, self.exclude):
                if not quantize_embedding(graph, node, rw=rw):
                    break
        return rw.stats.changed
