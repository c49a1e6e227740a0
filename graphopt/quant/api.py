"""``graphopt.quantize``: one entry point for every mode, one report type, one accuracy control.

Each mode lists its candidate layers, knows how to ``build`` the graph with a given subset of
them quantized, and (for ``sensitivity="local"``) how one layer's output changes when it alone
is quantized; graphopt/quant/fallback.py does the rest (error, sensitivity, fallback).
"""

from __future__ import annotations

import collections.abc
import contextlib
import functools
import time
from typing import Iterable, Iterator, Sequence

from graphopt.compile import Target
from graphopt.errors import QuantizationError, entry_point
from graphopt.ir.graph import Graph
from graphopt.quant.config import MODES, QuantizeConfig  # noqa: F401  (MODES: re-exported)
from graphopt.quant.report import LayerRecord, QuantReport
from graphopt.stagereport import measure


@entry_point("graphopt.quantize")
def quantize(
    graph: Graph,
    mode: str = "dynamic",
    *,
    calibration: Iterable | None = None,
    error_budget: float | None = None,
    exclude: Sequence[str] = (),
    sensitivity: str = "local",
    observer: str = "minmax",
    observer_options: dict | None = None,
    embeddings: bool = True,
    convs: bool = False,
    per_token: bool = False,
    bits: int | None = None,
    conv_bits: int = 8,
    bias_bits: int | None = None,
    block_size: int = 32,
    act_bits: int = 0,
    rounding: str = "nearest",
    progress: bool | None = None,
    speed: bool = False,
    modes: Sequence[str] = (),
    report: bool = False,
    target: Target | None = None,
    config: QuantizeConfig | None = None,
):
    """Quantize ``graph`` (a copy; the input is not mutated).

    Args:
        graph: the float graph; it is optimized first (the "default" pipeline: batch norms
            folded, activations fused, so that a fused conv + ReLU is one unit), which changes
            nothing on an already optimized graph.
        mode: ``"dynamic"``: int8 weights, u8 activations quantized at run time
            (``qlinear_dynamic``, ``qconv_dynamic``). ``"static"``: int8 weights and u8
            activations with ranges calibrated on ``calibration`` (``qconv``, ``qlinear``;
            graphopt/quant/static.py). ``"weight-only"``: block-wise ``bits``-bit weights,
            float activations (``linear_weight_only``). ``"fp16"`` / ``"bf16"``: constant
            float weights stored in half precision, cast to f32 where used.
            ``"bf16-compute"``: linears compute in bf16 with f32 sums (``linear_bf16``: bf16
            weights, input rounded in the op; AMX tiles on the native runtime,
            graphopt/quant/bf16_compute.py). ``"codebook"``: Deep Compression weight sharing:
            each weight becomes indices into its own k-means codebook of ``2**bits`` values
            (``codebook_decode``; pruned zeros stay exact zeros), graphopt/quant/codebook.py;
            ``graphopt.compress`` then writes it Huffman-coded. ``"auto"``: each layer
            chooses among float and ``modes`` by its cost measured alone on ``target``'s
            backend (cached per machine) and its measured error, within ``error_budget``
            (default 1e-3); the mix is validated on the whole graph (graphopt/quant/mixed.py).
        calibration: an iterable of argument tuples (a bare tensor is one argument). Static
            mode calibrates on all of it; with ``error_budget`` it is also where the error is
            measured (so it is materialized as a list). A one-pass iterator (a generator
            reading batches from disk) in static mode without ``error_budget`` is streamed:
            each item is read, observed and dropped, and the report's ``error`` is None.
        error_budget: the largest allowed mean ``1 - cosine`` between float and quantized
            outputs over ``calibration``; the most sensitive layers fall back to float, one by
            one, until the error fits.
        exclude: globs over node or weight (constant) names to keep in float.
        sensitivity: how layers are ranked for fallback. ``"local"`` (one float run): each
            layer's own relative output error on its real inputs. ``"end-to-end"``: the graph's
            output error with that layer alone quantized. fp16/bf16 always rank end-to-end.
        observer: static mode: ``minmax``, ``percentile``, ``entropy`` or ``mse``
            (graphopt/quant/observers.py); ``observer_options`` e.g. ``{"percentile": 99.9}``.
        embeddings: dynamic and weight-only modes: also store constant embedding tables int8
            (one scale per row).
        convs: dynamic mode: also quantize 2-D convs (``qconv_dynamic``; on onnxruntime this
            shrinks the weights 4x but is no faster than fp32, so it is off by default).
        per_token: dynamic mode: quantize each row (token) of a linear layer's input with its
            own scale and zero point instead of one per tensor. Much closer to fp32 on
            transformers, whose hidden states carry outlier tokens (MiniLM: min cosine 0.957 ->
            0.992, docs/quantization.md); the native kernel runs it at the same speed, the
            onnxruntime lowering needs a longer op chain (no contrib op takes row scales).
            Convs stay per tensor.
        bits, block_size: weight-only mode: 4 (default) or 8 bits, blocks of ``block_size``
            along K. Codebook mode: ``bits`` (default 5) for fully connected weights,
            ``conv_bits`` (default 8) for convolutions, ``bias_bits`` (default None: float)
            for the biases of those layers; 1 to 12 each.
        act_bits: weight-only mode: 0 (default) keeps activations float; 8 quantizes them per
            weight block to int8 so the products are integer (onnxruntime's MatMulNBits
            accuracy_level 4): much faster decoding on VNNI CPUs, a little less accurate.
        rounding: weight-only mode: ``"nearest"`` (default) rounds each weight on its own;
            ``"gptq"`` rounds input columns in turn and pushes each one's error onto the rest,
            minimizing every layer's output error on ``calibration`` (needed; layers it saw
            fewer input rows than inputs of stay round-to-nearest, with a warning).
        progress: static mode: a tqdm bar over the calibration data (None: for 32 or more
            items when stderr is a terminal).
        speed: measure, on ``target``'s backend (default native) and on the first calibration
            input, whether quantizing pays: each chosen layer alone, float vs quantized (cached
            per machine, graphopt/costcache.py), then the float graph, the all-quantized graph
            and the graph quantizing only the layers that paid alone; the fastest is returned,
            and layers it leaves float say why in the report (graphopt/quant/speed.py).
        modes: ``mode="auto"``: the modes each layer chooses among (default: ``"dynamic"``,
            ``"static"``, ``"weight-only"``, ``"bf16-compute"``); needs ``calibration``.
        report: also return the ``QuantReport`` (its ``config`` holds the options; its
            ``stage`` the run's time and peak memory, a ``graphopt.stagereport.StageReport``).
        target: a ``graphopt.Target`` to plan for: its ``backend`` must run every op the
            quantization makes (else ``QuantizationError`` naming the ops, layers and backend;
            graphopt/quant/backend.py), its ``isa`` is checked against this machine and its
            ``threads`` run the calibration and sensitivity measurements.
        config: a ``QuantizeConfig`` holding all the options above (then leave them at their
            defaults); ``mode`` and every option are checked there first.

    Returns:
        The quantized graph, or ``(graph, QuantReport)`` with ``report=True``.

    Raises:
        QuantizationError: an unknown mode or observer, static mode without calibration data,
            calibration data that does not fit the graph (names the batch and the input),
            ``error_budget`` without calibration, a quantization ``target.backend`` cannot
            run (an op the plan makes that the backend has no lowering for).
    """
    if not isinstance(graph, Graph):
        raise QuantizationError(f"graphopt.quantize takes a graphopt Graph, got "
                                f"{type(graph).__name__}")
    cfg = QuantizeConfig.resolve(
        config, mode=mode, error_budget=error_budget, exclude=exclude, sensitivity=sensitivity,
        observer=observer, observer_options=observer_options, embeddings=embeddings,
        convs=convs, per_token=per_token, bits=bits, conv_bits=conv_bits, bias_bits=bias_bits,
        block_size=block_size, act_bits=act_bits, rounding=rounding, progress=progress,
        speed=speed, target=target, modes=modes)
    if not report:
        return quantize_with_config(graph, cfg, calibration)[0]
    with measure(f"quantize {cfg.mode}") as stage:
        out, rep = quantize_with_config(graph, cfg, calibration)
    rep.stage = stage
    return out, rep


def quantize_with_config(graph: Graph, cfg: QuantizeConfig,
                         calibration: Iterable | None = None) -> tuple[Graph, QuantReport]:
    """``quantize`` once its options are checked: plan, fit the error budget, report."""
    from graphopt.quant.fallback import fit_error_budget

    start = time.perf_counter()
    calibration = _calibration_for(cfg, calibration)
    graph = prepared(graph)
    if cfg.mode == "auto":
        from graphopt.quant.mixed import quantize_auto

        with _planning_threads(cfg.target):
            out, rep = quantize_auto(graph, cfg, calibration)
        rep.seconds = time.perf_counter() - start
        return out, rep
    with _planning_threads(cfg.target):
        plan = plan_mode(graph, cfg, calibration)
        _check_builds_run_on(plan, graph, cfg)
        # Half precision and codebooks have no per-layer forward: they rank end-to-end.
        sensitivity = ("end-to-end" if cfg.mode in ("fp16", "bf16", "codebook")
                       else cfg.sensitivity)
        rep = QuantReport(mode=plan.mode, error_budget=cfg.error_budget,
                          bytes_before=graph.constant_bytes(), label=plan.label,
                          layers=plan.records, embeddings=plan.embeddings,
                          config=cfg.to_dict())
        measured = calibration if isinstance(calibration, list) else []  # (streamed: used up)
        out, rep.error = fit_error_budget(rep.layers, plan.build, plan.graph, measured,
                                          cfg.error_budget, sensitivity, plan.forward)
        if cfg.error_budget is not None and cfg.mode in ("dynamic", "static") and measured:
            out = _fit_bf16_attention(out, plan.graph, measured, cfg, rep)
        if cfg.speed:
            out, rep.speed, rep.error = _fit_speed(rep, plan, cfg, measured, out)
    rep.bytes_after = out.constant_bytes()
    rep.seconds = time.perf_counter() - start
    return out, rep


def _fit_bf16_attention(out: Graph, float_graph: Graph, calibration: list,
                        cfg: QuantizeConfig, rep: QuantReport) -> Graph:
    """Attention's products in bf16 (the attention-bf16 pass) when the native target has AMX
    tiles to run them and the whole graph's error stays within the budget; else ``out``."""
    from graphopt import _extension
    from graphopt.quant.fallback import output_error, reference_outputs
    from graphopt.transform.manager import optimize

    if (cfg.target.backend if cfg.target is not None else "native") != "native":
        return out
    candidate, passes = optimize(out, "attention-bf16", report=True)
    if not passes.changed:  # no attention node
        return out
    if not _extension.load().cpu_features()["use_amx"]:
        rep.notes.append("attention stays f32: no AMX tiles here to run it in bf16")
        return out
    error = output_error(candidate, reference_outputs(float_graph, calibration), calibration)
    if error > cfg.error_budget:
        rep.notes.append(f"attention stays f32: in bf16 the error would be {error:.2e}, over "
                         f"the budget {cfg.error_budget:.2e}")
        return out
    rep.attention, rep.error = "bf16", error
    rep.notes.append(f"attention in bf16 (AMX tiles): error {error:.2e} within the budget")
    return candidate


def _fit_speed(rep: QuantReport, plan: "Plan", cfg: QuantizeConfig, calibration: list,
               out: Graph):
    """``speed=True``: the fastest of the candidate graphs (graphopt/quant/speed.py)."""
    from graphopt.quant.fallback import output_error, reference_outputs
    from graphopt.quant.speed import fit_speed

    if not calibration:
        raise QuantizationError("speed=True times the candidates on calibration inputs: pass "
                                "calibration=[args, ...]")
    backend = cfg.target.backend if cfg.target is not None else "native"
    threads = cfg.target.threads if cfg.target is not None else None
    best, medians = fit_speed(rep.layers, plan.build, tuple(calibration[0]), backend, threads)
    error = output_error(best, reference_outputs(plan.graph, calibration), calibration)
    return best, medians, error


def prepared(graph: Graph) -> Graph:
    """``graph`` in the form quantization plans on: the "default" pipeline (batch norms folded
    into their convolutions, activations and residual adds fused, dead code gone), which a
    user would otherwise have to remember (unfolded batch norms between quantize / dequantize
    pairs made int8 slower than fp32, issue #24). Idempotent: an optimized graph comes back
    unchanged (a copy)."""
    from graphopt.transform.manager import optimize

    return optimize(graph, "default")


def _calibration_for(cfg: QuantizeConfig, calibration: Iterable | None) -> Iterable[tuple] | None:
    """The calibration data as a list of argument tuples; checks what the mode needs."""
    if cfg.mode in ("static", "auto") and calibration is None:
        raise QuantizationError(f"mode='{cfg.mode}' needs calibration data (an iterable of "
                                "argument tuples) to choose activation ranges"
                                + (" and time the layers" if cfg.mode == "auto" else ""))
    if cfg.rounding == "gptq" and calibration is None:
        raise QuantizationError("rounding='gptq' needs calibration data (an iterable of "
                                "argument tuples): it minimizes each layer's error on its "
                                "calibration inputs")
    streams = cfg.mode == "static" or (cfg.mode == "weight-only" and cfg.rounding == "gptq")
    if (streams and cfg.error_budget is None
            and isinstance(calibration, collections.abc.Iterator)):
        return _streamed(calibration)  # one pass: statistics only, no output error measured
    if calibration is not None:
        calibration = _materialize(calibration)
    if cfg.error_budget is not None and not calibration:
        raise QuantizationError("error_budget needs calibration inputs")
    return calibration


def plan_mode(graph: Graph, cfg: QuantizeConfig, calibration: Iterable[tuple] | None,
          mode: str | None = None) -> "Plan":
    """The ``Plan`` of ``mode`` (default ``cfg.mode``): candidate layers and how to build the
    graph with some quantized."""
    mode = mode or cfg.mode
    if mode == "dynamic":
        return _dynamic_plan(graph, cfg.exclude, cfg.embeddings, cfg.convs, cfg.per_token)
    if mode == "static":
        from graphopt.quant.static import static_plan

        return static_plan(graph, calibration, cfg.exclude, cfg.observer,
                           cfg.observer_options or {}, cfg.progress)
    if mode == "weight-only":
        from graphopt.quant.weight_only import weight_only_plan

        hessians = None
        if cfg.rounding == "gptq":
            from graphopt.quant.dynamic import dynamic_candidates
            from graphopt.quant.gptq import gptq_hessians

            hessians = gptq_hessians(graph, dynamic_candidates(graph, cfg.exclude),
                                     calibration, cfg.progress)
        return weight_only_plan(graph, cfg.exclude, cfg.bits, cfg.block_size, cfg.act_bits,
                                cfg.embeddings, hessians)
    if mode == "codebook":
        from graphopt.quant.codebook import codebook_plan

        return codebook_plan(graph, cfg.exclude, cfg.bits, cfg.conv_bits, cfg.bias_bits)
    if mode == "bf16-compute":
        from graphopt.quant.bf16_compute import bf16_compute_plan

        return bf16_compute_plan(graph, cfg.exclude)
    from graphopt.quant.half import half_plan

    return half_plan(graph, mode, cfg.exclude)


def _check_builds_run_on(plan: "Plan", graph: Graph, cfg: QuantizeConfig) -> None:
    """Make ``plan.build`` check that ``cfg.target.backend`` runs each graph it builds
    (graphopt/quant/backend.py): the first build, with every chosen layer quantized, fails
    before the sensitivity measurements; later builds quantize subsets of it."""
    if cfg.target is None:
        return
    from graphopt.quant.backend import check_runs_on

    build = plan.build

    def checked(names: set[str]) -> Graph:
        out = build(names)
        check_runs_on(cfg.target, plan.graph, out, cfg.mode)
        return out

    plan.build = checked


@contextlib.contextmanager
def _planning_threads(target: Target | None) -> Iterator[None]:
    """Run the calibration and sensitivity measurements with ``target``'s threads."""
    if target is None:
        yield
        return
    target.check_host()
    if target.threads is None:
        yield
        return
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(target.threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _streamed(calibration: Iterator) -> Iterator[tuple]:
    """A one-pass iterable of items as argument tuples, read as calibration consumes it."""
    from graphopt.quant.static import as_arguments

    return (as_arguments(item, i) for i, item in enumerate(calibration))


def _materialize(calibration: Iterable) -> list[tuple]:
    from graphopt.quant.static import as_arguments

    if isinstance(calibration, (str, bytes)):
        raise QuantizationError("calibration must be an iterable of argument tuples")
    try:
        items = list(calibration)
    except TypeError:
        raise QuantizationError(
            f"calibration must be an iterable of argument tuples, got "
            f"{type(calibration).__name__}") from None
    return [as_arguments(item, i) for i, item in enumerate(items)]


class Plan:
    """What a mode hands to the accuracy control (see the module docstring).

    Attributes:
        graph: the float graph the layer names refer to (a prepared copy for static mode).
        records: one ``LayerRecord`` per candidate (``quantized=False`` for excluded ones).
        build: ``build(names) -> Graph`` with exactly those layers quantized.
        forward: ``forward(node, inputs) -> Tensor`` for local sensitivity, or None.
        apply: ``apply(graph, names) -> count``: the named layers quantized in place in any
            graph that has them under those names (what ``mode="auto"`` composes modes with),
            or None for a mode that must plan the whole graph itself (static int8).
    """

    def __init__(self, mode, label, graph, records, build, forward=None, embeddings=(),
                 apply=None):
        self.mode, self.label, self.graph = mode, label, graph
        self.records, self.build, self.forward = records, build, forward
        self.embeddings, self.apply = list(embeddings), apply


def layer_records(graph: Graph, candidates, all_layers, shape_of) -> list[LayerRecord]:
    """Records for ``candidates`` (to quantize) and the excluded rest of ``all_layers``."""
    chosen = {n.name for n in candidates}
    records = [LayerRecord(n.name, n.inputs[1].name, shape_of(n), True) for n in candidates]
    records += [LayerRecord(n.name, n.inputs[1].name, shape_of(n), False, reason="excluded")
                for n in all_layers if n.name not in chosen]
    return records


def _dynamic_plan(graph: Graph, exclude, embeddings: bool, convs: bool,
                  per_token: bool = False) -> Plan:
    from graphopt.quant import dynamic as d

    candidates = d.dynamic_candidates(graph) + (d.conv_candidates(graph) if convs else [])
    chosen = d.dynamic_candidates(graph, exclude) + (
        d.conv_candidates(graph, exclude) if convs else [])
    order = {n: i for i, n in enumerate(graph.nodes)}
    candidates.sort(key=order.get)
    chosen.sort(key=order.get)
    records = layer_records(graph, chosen, candidates, d.weight_shape)

    def apply(g: Graph, names: set[str]) -> int:
        return d.quantize_nodes(g, names, per_token=per_token) + d.quantize_convs(g, names)

    def build(names: set[str]) -> Graph:
        g = graph.clone()
        apply(g, names)
        if embeddings:
            for node in d.embedding_candidates(g, exclude):
                d.quantize_embedding(g, node)
        return g

    tables = [n.inputs[0].name for n in d.embedding_candidates(graph, exclude)] \
        if embeddings else []
    forward = functools.partial(d.dynamic_forward, per_token=per_token)
    return Plan("dynamic per-token" if per_token else "dynamic", "int8", graph, records, build,
                forward, tables, apply)
