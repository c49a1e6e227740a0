"""Speed-aware quantization: keep float the layers whose quantized form does not pay.

``graphopt.quantize(..., speed=True)`` measures, on the target backend, whether quantizing
pays, and by how much: small layers are bound by overheads (quantizing activations, converting
layouts, launching one more step) that int8 does not remove, large ones by the arithmetic and the
weight traffic it shrinks. After the accuracy control has chosen the layers:

1. **Per layer** (graphopt/quant/layer_cost.py): each chosen layer's float and quantized forms
   are cut out of the graph, compiled for the backend and timed alone on its real inputs,
   cached per machine; a layer whose quantized form is slower is marked to stay float.
2. **Whole graph**: the candidates - every chosen layer quantized, the per-layer choice, and
   the float graph - are compiled and timed on the first calibration input, interleaved in a
   rotating order (``graphopt.timing``). Only candidates not slower than the float graph in the
   typical round qualify (median per-round ratio to float at most 1); of those the fastest wins
   (within 2% of it, the one quantizing the most: a smaller model at no measurable cost). So
   the result is not slower than the float graph it came from, and a chain of int8 layers that
   only pays together (static int8 passing int8 between layers) is still found.

Every layer the winner leaves float says why in the report, with its per-layer timings.
Without calibration data there is nothing to time on.
"""

from __future__ import annotations

import statistics
from typing import Callable

from graphopt.costcache import CostCache
from graphopt.ir.graph import Graph
from graphopt.quant.layer_cost import LayerCost, layer_costs, time_graphs
from graphopt.quant.report import LayerRecord

TIE = 0.02  # medians this close to the fastest count as equally fast


def candidate_sets(records: list[LayerRecord], costs: dict[str, LayerCost]
                   ) -> dict[str, set[str]]:
    """Label -> the layers quantized in that candidate, from the most quantized to none, all
    distinct: every chosen layer, those whose quantized form paid alone, none."""
    chosen = [r.node for r in records if r.quantized]
    paying = [n for n in chosen if n not in costs or costs[n].pays]
    out: dict[str, set[str]] = {}
    for label, names in ((f"all {len(chosen)}", chosen),
                         (f"per-layer {len(paying)} of {len(chosen)}", paying), ("float", [])):
        if not names:
            label = "float"
        if set(names) not in out.values():
            out[label] = set(names)
    return out


def fit_speed(records: list[LayerRecord], build: Callable[[set[str]], Graph], args: tuple,
              backend: str, threads: int | None, rounds: int = 20,
              cache: CostCache | None = None) -> tuple[Graph, dict[str, float]]:
    """The fastest candidate graph on ``backend`` and the median ms per call of each candidate;
    ``records`` are updated (each measured layer's ``cost``; layers the winner leaves float:
    ``quantized=False`` and why). ``cache``: where per-layer measurements are kept (default:
    this machine's ``graphopt.costcache.CostCache``)."""
    costs = layer_costs(records, build, args, backend, threads,
                        cache if cache is not None else CostCache())
    for r in records:
        if r.node in costs:
            r.cost = (costs[r.node].float_ms, costs[r.node].quantized_ms)
    sets = candidate_sets(records, costs)
    graphs = {label: build(names) for label, names in sets.items()}
    if len(graphs) == 1:
        return next(iter(graphs.values())), {}
    samples = _time_graphs(graphs, args, backend, threads, rounds)
    medians = {label: statistics.median(ms) for label, ms in samples.items()}
    best = choose(list(sets), samples)
    for r in records:
        if r.quantized and r.node not in sets[best]:
            r.quantized = False
            alone = "" if r.cost is None else (
                f"; alone: {r.cost[1]:.4f} ms quantized vs {r.cost[0]:.4f} ms float")
            r.reason = (f"kept float: quantizing it did not pay on {backend} (whole graph: "
                        f"{best} {medians[best]:.3f} ms per call, "
                        + ", ".join(f"{k} {v:.3f}" for k, v in medians.items() if k != best)
                        + f"{alone})")
    return graphs[best], medians


def choose(labels: list[str], samples: dict[str, list[float]]) -> str:
    """The candidate to keep, from per-round timings (``labels`` from the most quantized to
    "float", the last). A candidate qualifies when it is not slower than the float graph in
    the typical round: the median of its per-round ratios to float (rounds interleave the
    candidates, so a ratio cancels the machine's drift) is at most 1. Of those, the fastest,
    or within 2% of it the one quantizing the most (a smaller model at no measurable cost)."""
    base = samples[labels[-1]]
    qualified = [label for label in labels
                 if statistics.median(a / b for a, b in zip(samples[label], base)) <= 1.0]
    medians = {label: statistics.median(samples[label]) for label in qualified}
    fastest = min(medians.values())
    return next(label for label in qualified if medians[label] <= fastest * (1.0 + TIE))


def _time_graphs(graphs: dict[str, Graph], args: tuple, backend: str, threads: int | None,
                 rounds: int) -> dict[str, list[float]]:
    """Per-round ms per call of each candidate graph on ``backend`` (``time_graphs``)."""
    return time_graphs({label: (g, args) for label, g in graphs.items()}, backend, threads,
                       rounds)
