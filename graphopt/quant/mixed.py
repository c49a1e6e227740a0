"""``graphopt.quantize(graph, "auto", calibration=...)``: each layer chooses its mode.

Float, dynamic int8, static int8, weight-only int4/int8 and bf16 compute pay off on different
layers: a large GEMM gains from int8 arithmetic, a GEMV bound by weight traffic from int4
weights, a small layer from nothing (quantizing its input costs more than it saves), and which
wins depends on the backend and the CPU. So the choice is measured, per layer, on the target:

1. **Plans.** Every mode in ``modes`` plans the graph as it would alone
   (``graphopt.quant.api.plan_mode``); a mode whose ops the target backend cannot run is left
   out, with a note in the report.
2. **Costs and errors.** Each candidate layer is cut out in each mode and timed alone against
   its float form on its real inputs (graphopt/quant/layer_cost.py, cached per machine), and
   its relative output error in each mode is measured on its real inputs
   (``graphopt.quant.fallback.local_sensitivity``).
3. **Per layer**, the fastest mode that is faster than float alone (within 2% of it, the most
   accurate one); a layer no mode speeds up stays float.
4. **Error budget** (default ``AUTO_ERROR_BUDGET``): while the graph's output error (mean
   ``1 - cosine`` over the calibration data) exceeds it, the layer with the largest error in
   its current mode moves to its fastest more accurate option, or to float.
5. **Whole graph.** Per-layer timings miss what happens between layers: static int8 passes
   int8 from layer to layer, so a chain of static layers can pay where each layer alone
   (quantize in, dequantize out) does not, and composing modes changes the graph around a
   layer. So the per-layer mix, each mode alone where it paid alone, every static candidate
   quantized (each fitted to the budget the same way) and the float graph are timed
   interleaved; ``graphopt.quant.speed.choose`` keeps the fastest that is not slower than
   float. The result is at least as fast as what each mode's own speed-aware plan would
   consider, within the timing's noise.

Modes compose on one graph: static int8 (which plans the whole graph: shared activation
ranges) builds first, then the other modes rewrite their layers in place (``Plan.apply``), found
by name or, where static's build re-fused a float layer under a new name, by its weight. Embedding tables stay float (storing them int8 saves memory, not time:
``mode="dynamic"`` does it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from graphopt.costcache import CostCache
from graphopt.errors import QuantizationError
from graphopt.ir.graph import Graph
from graphopt.quant.config import QuantizeConfig
from graphopt.quant.report import LayerRecord, QuantReport
from graphopt.quant.speed import TIE, choose

AUTO_ERROR_BUDGET = 1e-3  # mean 1 - cosine: outputs within ~2.6 degrees of float on average
MIX, ALL_STATIC, FLOAT = "per-layer mix", "all static", "float"  # whole-graph candidates


@dataclass(frozen=True)
class Option:
    """One way to run one layer: its mode, ms alone (and float's, same run), local error."""

    mode: str
    float_ms: float
    ms: float
    error: float

    @property
    def pays(self) -> bool:
        return self.ms <= self.float_ms


def quantize_auto(graph: Graph, cfg: QuantizeConfig, calibration: list[tuple]
                  ) -> tuple[Graph, QuantReport]:
    """``graphopt.quantize`` for ``mode="auto"`` on the prepared ``graph`` (see the module)."""
    from graphopt.quant.fallback import output_error, reference_outputs

    backend = cfg.target.backend if cfg.target is not None else "native"
    threads = cfg.target.threads if cfg.target is not None else None
    budget = cfg.error_budget if cfg.error_budget is not None else AUTO_ERROR_BUDGET
    plans, notes = _runnable_plans(graph, cfg, calibration)
    records = _union_records(plans)
    options = _options(plans, calibration, backend, threads)
    refs = reference_outputs(graph, calibration)
    build = composer(graph, plans)

    errors: dict[frozenset, float] = {}  # the candidates' fits meet the same assignments

    def error_of(assign: dict[str, str]) -> float:
        key = frozenset(assign.items())
        if key not in errors:
            errors[key] = output_error(build(assign), refs, calibration)
        return errors[key]

    chosen = {r.node for r in records if r.quantized}
    candidates = whole_graph_candidates(
        {n: opts for n, opts in options.items() if n in chosen}, list(plans), budget, error_of)
    best, medians = _whole_graph(candidates, build, calibration[0], backend, threads)
    _describe(records, options, candidates, best, medians, backend)
    out = build({n: o.mode for n, o in candidates[best].items()})
    rep = QuantReport(mode="auto: " + ", ".join(plans), error_budget=budget,
                      bytes_before=graph.constant_bytes(), bytes_after=out.constant_bytes(),
                      label="mixed", layers=records, config=cfg.to_dict(), speed=medians,
                      notes=notes, error=output_error(out, refs, calibration))
    return out, rep


def whole_graph_candidates(options: dict[str, list[Option]], modes: list[str], budget: float,
                           error_of) -> dict[str, dict[str, Option]]:
    """Label -> layer -> ``Option``, in the order ties go (``choose``): the per-layer mix; each
    mode alone where it pays alone (what that mode's speed-aware plan would consider: the mix
    can lose to it where composing modes changes the graph around a layer); every static
    candidate (a static chain pays as a whole); float. Each fitted to ``budget``."""
    out = {MIX: fit_budget(options, budget, error_of)}
    for mode in modes:
        only = {n: [o for o in opts if o.mode == mode] for n, opts in options.items()}
        out[f"only {mode}"] = fit_budget({n: o for n, o in only.items() if o}, budget,
                                         error_of)
    if "static" in modes:
        static = {n: o for n, opts in options.items() for o in opts if o.mode == "static"}
        out[ALL_STATIC] = _fit_static(static, budget, error_of)
    out[FLOAT] = {}
    return out


def choose_option(options: list[Option]) -> Option | None:
    """The fastest option that pays (within ``TIE`` of it, the most accurate), or None."""
    paying = [o for o in options if o.pays]
    if not paying:
        return None
    fastest = min(o.ms / o.float_ms for o in paying)
    return min((o for o in paying if o.ms / o.float_ms <= fastest * (1.0 + TIE)),
               key=lambda o: o.error)


def fit_budget(options: dict[str, list[Option]], budget: float, error_of) -> dict[str, Option]:
    """Layer -> chosen ``Option`` (layers left out stay float): each layer's ``choose_option``,
    then, while ``error_of(assignment)`` exceeds ``budget``, the layer with the largest error
    moves to its ``choose_option`` among the more accurate options, or to float."""
    chosen = {n: o for n, o in ((n, choose_option(opts)) for n, opts in options.items())
              if o is not None}
    while chosen and error_of({n: o.mode for n, o in chosen.items()}) > budget:
        layer = max(chosen, key=lambda n: chosen[n].error)
        better = choose_option([o for o in options[layer] if o.error < chosen[layer].error])
        if better is None:
            del chosen[layer]
        else:
            chosen[layer] = better
    return chosen


def _fit_static(static: dict[str, Option], budget: float, error_of) -> dict[str, Option]:
    """Every static candidate quantized, the most sensitive back to float until the budget
    holds (whether static layers pay is the whole graph's timing to say, not each one's)."""
    chosen = dict(static)
    while chosen and error_of({n: "static" for n in chosen}) > budget:
        del chosen[max(chosen, key=lambda n: chosen[n].error)]
    return chosen


def _runnable_plans(graph: Graph, cfg: QuantizeConfig, calibration: list[tuple]):
    """Mode -> ``Plan`` for the modes ``cfg.target``'s backend runs, and notes on the rest."""
    from graphopt.quant.api import plan_mode
    from graphopt.quant.backend import check_runs_on

    plans, notes = {}, []
    for mode in cfg.modes:
        # (no embedding tables: they would join every layer's region; see the module doc)
        plan = plan_mode(graph, dataclasses.replace(
            cfg, mode=mode, modes=(), embeddings=False, per_token=cfg.per_token and mode == "dynamic"),
                         calibration)
        chosen = {r.node for r in plan.records if r.quantized}
        if not chosen:
            continue
        try:
            check_runs_on(cfg.target, plan.graph, plan.build(chosen), mode)
        except QuantizationError as err:
            notes.append(f"{mode} left out: {err}")
            continue
        plans[mode] = plan
    if not plans:
        raise QuantizationError(
            "graphopt.quantize(mode='auto') found no layer to quantize in modes "
            f"{', '.join(cfg.modes)}" + (f" ({'; '.join(notes)})" if notes else ""))
    return plans, notes


def _union_records(plans: dict) -> list[LayerRecord]:
    """One record per layer any plan has, in the order the plans list them."""
    records: dict[str, LayerRecord] = {}
    for plan in plans.values():
        for r in plan.records:
            if r.node not in records:
                records[r.node] = dataclasses.replace(r)
            elif r.quantized:
                records[r.node].quantized, records[r.node].reason = True, ""
    return list(records.values())


def _options(plans: dict, calibration: list[tuple], backend: str, threads: int | None
             ) -> dict[str, list[Option]]:
    """Layer -> its measured ``Option`` in every mode whose region the backend compiled alone."""
    from graphopt.quant.fallback import local_sensitivity
    from graphopt.quant.layer_cost import layer_costs

    cache = CostCache()
    options: dict[str, list[Option]] = {}
    for mode, plan in plans.items():
        costs = layer_costs(plan.records, plan.build, tuple(calibration[0]), backend, threads,
                            cache)
        errors = local_sensitivity(plan.graph, list(costs), calibration, plan.forward)
        for node, cost in costs.items():
            options.setdefault(node, []).append(
                Option(mode, cost.float_ms, cost.quantized_ms, errors[node]))
    return options


def composer(graph: Graph, plans: dict) -> Callable[[dict[str, str]], Graph]:
    """``build(assign)``: ``graph`` with each layer of ``assign`` (layer -> mode) quantized in
    its mode, by ``_compose``."""
    weights = {r.node: r.weight for mode, plan in plans.items() if mode != "static"
               for r in plan.records}
    return lambda assign: _compose(graph, plans, assign, weights)


def _compose(graph: Graph, plans: dict, assign: dict[str, str], weights: dict[str, str]
             ) -> Graph:
    """Static int8 first (it plans the whole graph), then the other modes in place. Static's
    build re-fuses the float layers it prepared under new node names, so layers are found by
    their weight constant (``weights``: layer -> weight name in ``graph``; a matmul's weight
    is transposed, ``_t``). Raises ``QuantizationError`` rather than leave an assigned layer
    float."""
    static = {n for n, m in assign.items() if m == "static"}
    out = plans["static"].build(static) if static else graph.clone()
    by_weight: dict[str, list[str]] = {}
    for node in out.nodes:
        if len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].is_constant:
            by_weight.setdefault(node.inputs[1].name, []).append(node.name)
    for mode, plan in plans.items():
        layers = [n for n, m in assign.items() if m == mode and mode != "static"]
        if not layers:
            continue
        # (by weight, not by name: static's re-fusion can give a released name to another node)
        names = {_only(by_weight.get(weights[n]) or by_weight.get(weights[n] + "_t"))
                 for n in layers}
        done = plan.apply(out, names - {None})
        if done != len(layers):
            raise QuantizationError(
                f"graphopt.quantize(mode='auto'): {mode} quantized {done} of the "
                f"{len(layers)} layers assigned to it ({', '.join(sorted(layers)[:5])}...) "
                f"after static int8 rewrote the graph; quantize them with "
                f"modes=({mode!r},) or exclude them")
    return out


def _only(names: list[str] | None) -> str | None:
    return names[0] if names and len(names) == 1 else None


def _whole_graph(candidates: dict[str, dict[str, Option]], build, args: tuple, backend: str,
                 threads: int | None) -> tuple[str, dict[str, float]]:
    """The candidate to keep and each distinct candidate's median ms per call."""
    import statistics

    from graphopt.quant.layer_cost import time_graphs

    distinct: dict[str, dict[str, str]] = {}
    for label, chosen in candidates.items():
        assign = {n: o.mode for n, o in chosen.items()}
        if assign not in distinct.values() and (assign or label == FLOAT):
            distinct[label] = assign  # (the empty assignment is "float", the last)
    if len(distinct) == 1:
        return next(iter(distinct)), {}
    samples = time_graphs({label: (build(a), tuple(args)) for label, a in distinct.items()},
                          backend, threads, rounds=20)
    best = choose(list(distinct), samples)
    return best, {label: statistics.median(ms) for label, ms in samples.items()}


def _describe(records: list[LayerRecord], options: dict[str, list[Option]],
              candidates: dict[str, dict[str, Option]], best: str,
              medians: dict[str, float], backend: str) -> None:
    """Each record's decision, its chosen mode, cost and error, and the options it had."""
    final = candidates[best]
    for r in records:
        opts = options.get(r.node, [])
        if r.node in final:
            o = final[r.node]
            r.mode, r.cost, r.sensitivity = o.mode, (o.float_ms, o.ms), o.error
            others = "; ".join(_shown(p) for p in opts if p.mode != o.mode)
            r.reason = f"(others alone: {others})" if others else ""
        elif r.quantized:
            r.quantized = False
            alone = f"alone on {backend}: " + "; ".join(map(_shown, opts)) if opts else ""
            why = ("no mode's region compiled alone" if not opts else
                   "no mode was faster alone" if choose_option(opts) is None else
                   "fell back for the error budget" if best == MIX else
                   f"the whole graph was fastest as {best} ("
                   + ", ".join(f"{k} {v:.3f} ms" for k, v in medians.items()) + ")")
            r.reason = f"kept float: {why}" + (f"; {alone}" if alone else "")


def _shown(option: Option) -> str:
    """An option with the float time it was measured against (each mode's own run)."""
    return (f"{option.mode} {option.ms:.4f} ms (float {option.float_ms:.4f}) "
            f"err {option.error:.1e}")
