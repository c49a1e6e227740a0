"""Speed-aware quantization: keep float the layers whose quantized form does not pay.

``graphopt.quantize(..., speed=True)`` measures, on the target backend, whether quantizing
pays, and by how much: small layers are bound by overheads (quantizing activations, converting
layouts, launching one more step) that int8 does not remove, large ones by the arithmetic and the
weight traffic it shrinks. After the accuracy control has chosen the layers, the candidates are
the float graph and the graphs with only the largest ``k`` of the chosen layers quantized (by
weight elements; ``k`` = all, 3/4, 1/2, 1/4 of them), each compiled for the backend and timed on
the first calibration input, interleaved in a rotating order (``graphopt.timing``), medians.
The fastest candidate wins (within 2% of it, the one quantizing the most: a smaller model at no
measurable cost); every layer it leaves float says so in the report ("kept float: quantizing it
did not pay on native: ...").

This is a whole-graph measurement of a few nested plans, so a decision always reflects the
layer in its real surroundings (fusions, layouts); it costs one compile and a few hundred
calls per candidate. Without calibration data there is nothing to time on.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

from graphopt.ir.graph import Graph
from graphopt.quant.report import LayerRecord
from graphopt.timing import calibrate, run_interleaved

FRACTIONS = (1.0, 0.75, 0.5, 0.25, 0.0)
TIE = 0.02  # medians this close to the fastest count as equally fast


def _size(record: LayerRecord) -> int:
    return math.prod(int(d) for d in record.shape)


def candidate_sets(records: list[LayerRecord]) -> dict[str, set[str]]:
    """Label -> the layers quantized in that candidate (the largest first), all distinct."""
    chosen = sorted((r for r in records if r.quantized), key=lambda r: (-_size(r), r.node))
    out: dict[str, set[str]] = {}
    seen: set[frozenset] = set()
    for fraction in FRACTIONS:
        k = round(len(chosen) * fraction)
        names = frozenset(r.node for r in chosen[:k])
        if names not in seen:
            seen.add(names)
            out["float" if k == 0 else f"largest {k} of {len(chosen)}"] = set(names)
    return out


def fit_speed(records: list[LayerRecord], build: Callable[[set[str]], Graph], args: tuple,
              backend: str, threads: int | None, rounds: int = 20
              ) -> tuple[Graph, dict[str, float]]:
    """The fastest candidate graph on ``backend`` and the median ms per call of each candidate;
    ``records`` are updated (layers the winner leaves float: ``quantized=False`` and why)."""
    from graphopt.compile import compile as compile_graph

    sets = candidate_sets(records)
    graphs = {label: build(names) for label, names in sets.items()}
    if len(graphs) == 1:
        label = next(iter(graphs))
        return graphs[label], {}
    modules = {label: compile_graph(g, backend=backend, threads=threads)
               for label, g in graphs.items()}
    calls = {label: (lambda m=m: m(*args)) for label, m in modules.items()}
    per_sample = {label: calibrate(call, 3, 0.005, time.perf_counter)
                  for label, call in calls.items()}
    samples, _ = run_interleaved(calls, per_sample, rounds, time.perf_counter, rotate=True)
    medians = {label: statistics.median(s) * 1e3 for label, s in samples.items()}
    # Within the noise of the fastest, the candidate quantizing the most wins (the smaller
    # model at no measurable cost): candidates are ordered from all layers to none.
    fastest = min(medians.values())
    best = next(label for label in sets if medians[label] <= fastest * (1.0 + TIE))
    everything = next(iter(sets))  # the first candidate: every chosen layer quantized
    for r in records:
        if r.quantized and r.node not in sets[best]:
            r.quantized = False
            r.reason = (f"kept float: quantizing it did not pay on {backend} (best: {best}, "
                        f"{medians[best]:.3f} ms per call; all chosen layers quantized: "
                        f"{medians[everything]:.3f} ms)")
    return graphs[best], medians
