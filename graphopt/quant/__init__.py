"""Quantization: rewrite float linear layers to int8 ops, under an accuracy budget.

``graphopt.quantize(graph, mode="dynamic")`` replaces every ``linear`` / ``fused_linear`` /
``matmul`` whose weight is a float constant by ``qlinear_dynamic`` (int8 per-channel symmetric
weights, u8 per-tensor activations quantized at run time; see graphopt/ops/quant.py). With
calibration inputs and an ``error_budget`` it first measures each layer's sensitivity (the
output error when that layer alone is quantized) and then keeps the most sensitive layers in
float until the whole graph's error is within budget. ``QuantReport`` says what was quantized,
what fell back and why. The ``quantize-dynamic`` pass runs the same rewrite without calibration.
"""

from graphopt.quant.dynamic import (
    LayerRecord,
    QuantReport,
    dynamic_candidates,
    embedding_candidates,
    output_error,
    quantize_embedding,
    quantize,
    quantize_weight_per_channel,
)

__all__ = [
    "LayerRecord",
    "QuantReport",
    "dynamic_candidates",
    "embedding_candidates",
    "quantize_embedding",
    "output_error",
    "quantize",
    "quantize_weight_per_channel",
]
