"""quantize-static: static int8 quantization calibrated on data from an .npz file.

Before -> after (``quantize-static{calibration="calib.npz",observer=entropy}``)::

    %h: f32[s0, 32, 8, 8] = fused_conv(%x, %w, %b, None) {activation="relu", ...}
    %y: f32[s0, 10] = linear(%flat, %w2, %b2)
  ->
    %x_q: u8[s0, 1, 8, 8] = quantize_linear(%x, %x_scale, %x_zp) {dtype="u8"}
    %h_int: u8[s0, 32, 8, 8] = qconv(%x_q, %x_scale, %x_zp, %w_q, %w_scale, %b, %h_scale,
                                     %h_zp) {activation="relu", ...}
    %y_int: f32[s0, 10] = qlinear(%flat_u8, ..., %w2_q, %w2_scale, %b2, None, None)

Calibrates activation ranges by running the graph over ``calibration`` (a ``.npz``, one array
per graph input whose first axis indexes the items; graphopt/quant/calibration.py), writes the
QDQ form and folds it (``fold-qdq``); see graphopt/quant/static.py. Not numerically exact:
weights are rounded to int8 per output channel, activations to u8 per tensor with the
observer's ranges. Observers: minmax, percentile (``percentile=99.99``), entropy, mse.
``exclude`` globs keep layers float. For an error budget with automatic float fallback use
``graphopt.quantize(graph, "static", calibration=..., error_budget=...)`` or
``graphopt quantize --error-budget``.

Every change is one rewrite through the rewriter's edit API (prepare per unit, the Q/DQ of one
observed activation, one unit's weight, then each ``fold-qdq`` / ``fuse-activation`` / ``dce``
rewrite; graphopt/quant/static.py), so ``graphopt.bisect`` can stop after any one of them.
"""

from __future__ import annotations

from typing import Literal

from graphopt.errors import PassOptionError
from graphopt.ir.graph import Graph
from graphopt.rewrite.rewriter import Rewriter
from graphopt.transform.registry import register_pass


@register_pass("quantize-static")
class QuantizeStatic:
    """Static int8 (calibrated u8 activations, per-channel i8 weights) -> qconv / qlinear."""

    calibration: str | None = None
    observer: Literal["minmax", "percentile", "entropy", "mse"] = "minmax"
    percentile: float = 99.99
    exclude: tuple[str, ...] = ()

    def run(self, graph: Graph) -> bool:
        from graphopt.quant.calibration import load_calibration
        from graphopt.quant.static import quantize_static_in_place

        if self.calibration is None:
            raise PassOptionError(
                "quantize-static needs calibration=FILE.npz (one array per graph input, items "
                "along axis 0), or use graphopt.quantize(graph, 'static', calibration=...)")
        options = {"percentile": self.percentile} if self.observer == "percentile" else {}
        data = load_calibration(self.calibration, graph)
        rw = Rewriter(graph)  # every change one rewrite: counted, bisectable
        quantize_static_in_place(graph, data, self.observer, options, self.exclude, rw=rw)
        return rw.stats.changed
