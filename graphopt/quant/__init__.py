"""Quantization: rewrite float layers to int8 / int4 / half-precision forms, under an accuracy
budget. ``graphopt.quantize(graph, mode=...)`` (graphopt/quant/api.py) is the entry point:

* ``dynamic``: ``qlinear_dynamic`` / ``qconv_dynamic`` (int8 per-channel weights, u8 per-tensor
  activations quantized at run time) - graphopt/quant/dynamic.py;
* ``static``: calibrated u8 activations, QDQ form folded into ``qconv`` / ``qlinear`` -
  graphopt/quant/static.py, observers in graphopt/quant/observers.py;
* ``weight-only``: block-wise int4/int8 ``linear_weight_only`` - graphopt/quant/weight_only.py;
* ``fp16`` / ``bf16``: half-precision weight storage - graphopt/quant/half.py.

Accuracy control (graphopt/quant/fallback.py) is shared: per-layer sensitivity and fallback of
the most sensitive layers to float until an ``error_budget`` holds; ``QuantReport`` says what
was quantized, what fell back and why. The options are checked once, as a ``QuantizeConfig``
(graphopt/quant/config.py), which the report keeps (``QuantReport.config``).
"""

from graphopt.quant.api import quantize
from graphopt.quant.config import MODES, QuantizeConfig
from graphopt.quant.dynamic import (
    dynamic_candidates,
    embedding_candidates,
    quantize_embedding,
    quantize_weight_per_channel,
)
from graphopt.quant.fallback import output_error
from graphopt.quant.observers import OBSERVERS, make_observer
from graphopt.quant.report import LayerRecord, QuantReport

__all__ = [
    "MODES",
    "OBSERVERS",
    "LayerRecord",
    "QuantReport",
    "QuantizeConfig",
    "dynamic_candidates",
    "embedding_candidates",
    "make_observer",
    "output_error",
    "quantize",
    "quantize_embedding",
    "quantize_weight_per_channel",
]
