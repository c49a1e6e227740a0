"""``graphopt.benchmark``: compare backends on one model, fairly by construction.

Method:
    1. Same thread count everywhere: ``torch.set_num_threads(threads)`` for the whole run and
       ``intra_op_num_threads=threads`` (one inter-op thread) for onnxruntime sessions.
    2. Each backend, one after the other: setup (timed, with a per-stage breakdown), first call
       (timed separately: lazy compilers such as inductor compile there; its outputs are
       compared with the reference), ``warmup`` more calls that also calibrate how many
       back-to-back calls make one sample (``min_sample_s``). Peak and retained memory are
       measured around these steps (see ``BackendResult``).
    3. Timed rounds, interleaved: each visit of a backend takes ``block`` samples after one
       untimed call, then the harness pauses ``pause_s`` (spinning thread pools go idle, so
       they cannot steal the cores of the next backend); the visiting order rotates every
       pass (A B C, B C A, C A B ...); the garbage collector is off; ``max_time_s`` may end
       the rounds early.
    4. A backend that offers several settings (onnxruntime: its thread pool spinning, the
       default, and not spinning) has each setting timed as its own variant, interleaved with
       the rest; its result is the faster setting (``setting``), the others' p50 beside it
       (``settings_p50_ms``): every backend is reported at its best.
    5. Per backend: p50/p90/p10/min/mean/IQR over rounds, speedup = eager p50 / p50.

Backends that are unknown, unavailable here, or that fail are reported with a reason; they
never stop the run.
"""

from __future__ import annotations

import datetime
import tempfile
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.utils._pytree as pytree

from graphopt.bench.backends import (
    BENCH_BACKENDS,
    DEFAULT_BACKENDS,
    BackendUnavailable,
    BenchBackend,
    Prepared,
    Subject,
)
from graphopt.bench.config import BenchmarkConfig, backend_names
from graphopt.bench.machine import MemoryProbe, machine_info
from graphopt.bench.report import (
    BackendResult,
    BenchmarkReport,
    LatencyStats,
    PerPassReport,
    error_summary,
)
from graphopt.timing import Clock, calibrate, progress_bar, run_interleaved
from graphopt.compile import Target


def benchmark(model: Any, args: Sequence[Any] = (), kwargs: dict | None = None, *,
              backends: Sequence[str | BenchBackend] = DEFAULT_BACKENDS,
              pipeline: Any = "default", threads: int | None = None, warmup: int = 3,
              rounds: int = 40, block: int = 4, pause_s: float = 0.1,
              min_sample_s: float = 0.01, max_time_s: float | None = None,
              rtol: float = 1e-3, atol: float = 1e-4, per_pass: bool | str = False,
              backend_options: dict[str, dict] | None = None, progress: bool | None = None,
              clock: Clock = time.perf_counter, name: str | None = None,
              workdir: str | None = None, target: Target | None = None,
              config: BenchmarkConfig | None = None) -> BenchmarkReport:
    """Benchmark ``model`` on several backends; returns a :class:`BenchmarkReport`.

    Args:
        model: an ``nn.Module``, a graphopt ``Graph`` (no eager baseline then) or a
            ``graphopt.model_loader.LoadedModel`` (what the CLI resolves MODEL specs into).
        args / kwargs: example inputs (ignored for a LoadedModel, which carries its own).
        backends: names among ``eager``, ``torch-compile``, ``onnxruntime``,
            ``graphopt-onnxruntime``, ``graphopt-native``, ``graphopt-torch``, or
            ``BenchBackend`` objects. Timed in this order every round.
        pipeline: the graphopt pipeline for the ``graphopt-*`` backends.
        threads: intra-op threads for all backends (default: ``torch.get_num_threads()``).
        warmup: untimed calls after the first call.
        rounds: timed samples per backend (and per setting of a backend that tries several).
        block / pause_s: each visit of a backend takes ``block`` samples, after one untimed
            call, then the harness sleeps ``pause_s`` so that a spinning thread pool goes idle
            before the next backend runs; the order of the visits rotates.
        min_sample_s: a sample repeats the call until it lasts about this long.
        max_time_s: stop timing after the round that crosses this budget (at least 3 rounds).
        rtol / atol: tolerance of ``numerics_ok`` against the reference outputs.
        per_pass: also attribute the speedup to passes (True: on ``graphopt-onnxruntime``, or a
            backend name); see :func:`graphopt.bench.per_pass.attribute_passes`.
        backend_options: per-backend options, e.g. ``{"torch-compile": {"mode":
            "max-autotune"}, "onnxruntime": {"exporter": "dynamo"}}``.
        progress: tqdm progress bars on stderr (None: when stderr is a terminal).
        clock: the timer (tests inject a fake one).
        name: the model's display name.
        workdir: where artifacts are written to measure them (default: a temporary folder).
        target: a ``graphopt.Target``: its ``threads`` (when ``threads`` is not given) run every
            backend and its ``isa`` is checked against this machine; recorded in the report.
        config: a ``BenchmarkConfig`` holding the options ``backends`` to ``target`` (except
            ``clock``); leave those keywords at their defaults then.

    Raises:
        BenchmarkConfigError: an option out of range (``rounds`` < 1, ``warmup`` < 0, ...).
        BackendOptionError: ``target`` contradicts ``threads`` or its ISA is not this machine's.

    Example::

        report = graphopt.benchmark(model, (x,), backends=["eager", "graphopt-onnxruntime"])
        print(report)                      # terminal table
        report.to_json("bench.json"); report.plot("bench.png")
    """
    cfg = BenchmarkConfig.resolve(
        config, backends=backends, pipeline=pipeline, threads=threads, warmup=warmup,
        rounds=rounds, block=block, pause_s=pause_s, min_sample_s=min_sample_s,
        max_time_s=max_time_s, rtol=rtol, atol=atol,
        per_pass=per_pass, backend_options=backend_options, progress=progress, name=name,
        workdir=workdir, target=target)
    return benchmark_with_config(model, args, kwargs, cfg, clock=clock)


def benchmark_with_config(model: Any, args: Sequence[Any], kwargs: dict | None,
                          cfg: BenchmarkConfig, *,
                          clock: Clock = time.perf_counter) -> BenchmarkReport:
    """``benchmark`` once its options are checked: fixes the threads for the whole run."""
    if cfg.target is not None:
        cfg.target.check_host()
    threads = int(cfg.run_threads or torch.get_num_threads())
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    machine = machine_info()  # before the run: its load average says who else was running
    with tempfile.TemporaryDirectory(prefix="graphopt_bench_") as tmp, torch.no_grad():
        try:
            subject, spec = _subject(model, args, kwargs, cfg.pipeline, threads,
                                     cfg.workdir or tmp, cfg.name)
            header = {"model": _model_info(subject, spec), "machine": machine,
                      "created": created}
            report = _run(subject, cfg, clock, header)
        finally:
            torch.set_num_threads(saved_threads)
    report.duration_s = time.perf_counter() - started
    return report


# ------------------------------------------------------------------------------ internals
def _run(subject: Subject, cfg: BenchmarkConfig, clock: Clock,
         header: dict[str, Any]) -> BenchmarkReport:
    """Set up every backend, time them in interleaved rounds, then attribute per pass."""
    reference, reference_name = _reference(subject)
    entries = _resolve(cfg.backends)
    results, calls, inner, keep = _prepare_all(entries, subject, cfg, reference, clock)
    order = list(calls)
    bar = progress_bar(len(calls) * cfg.rounds, f"bench {subject.name}", cfg.progress)

    def failed(variant: str, exc: BaseException) -> None:
        result = next(r for r in results if r.backend == variant.split(SETTING_SEP)[0])
        result.status, result.reason = "error", f"failed while timing: {_describe(exc)}"

    samples, rounds_done = run_interleaved(
        calls, inner, cfg.rounds, clock, max_time_s=cfg.max_time_s, progress=bar,
        on_error=failed, rotate=True, block=cfg.block, pause_s=cfg.pause_s,
        block_warmup=1 if cfg.pause_s > 0 else 0)
    bar.close()
    for r in results:
        if r.ok:
            _pick_setting(r, samples, inner)
    _speedups(results)
    config = _report_config(cfg, entries, subject.threads)
    config.update(order=order, rounds_done=rounds_done, reference=reference_name)
    report = BenchmarkReport(config=config, results=results, **header)
    del keep, calls  # free the backends before the per-pass runs
    if cfg.per_pass:
        report.per_pass = _per_pass(subject, cfg, clock)
    return report


# A backend's settings are timed as variants named "<backend> @ <setting>".
SETTING_SEP = " @ "


def _pick_setting(result: BackendResult, samples: dict[str, list[float]],
                  inner: dict[str, int]) -> None:
    """The result's latency is its fastest setting's (by p50); every setting's p50 is kept."""
    timed = {name: s for name, s in samples.items()
             if s and name.split(SETTING_SEP)[0] == result.backend}
    if not timed:
        return
    stats = {name: LatencyStats.from_samples(s, inner[name]) for name, s in timed.items()}
    best = min(stats, key=lambda name: stats[name].p50)
    result.latency = stats[best]
    if SETTING_SEP in best:
        result.setting = best.split(SETTING_SEP, 1)[1]
        result.settings_p50_ms = {name.split(SETTING_SEP, 1)[1]: st.p50
                                  for name, st in stats.items()}


def _report_config(cfg: BenchmarkConfig, entries: list, threads: int) -> dict[str, Any]:
    """``cfg.to_dict()`` with what the run resolved: the thread count, deduplicated backends,
    the pipeline and backend options as text."""
    config = cfg.to_dict()
    config.update(
        backends=backend_names(entries), pipeline=str(cfg.pipeline), threads=threads,
        backend_options={k: {o: str(v) for o, v in opts.items()}
                         for k, opts in (cfg.backend_options or {}).items()})
    return config


def _per_pass(subject: Subject, cfg: BenchmarkConfig, clock: Clock) -> PerPassReport:
    """Per-pass attribution; a failure is reported like a failing backend, never raised."""
    from graphopt.bench.per_pass import attribute_passes

    backend = cfg.per_pass if isinstance(cfg.per_pass, str) else "graphopt-onnxruntime"
    try:
        return attribute_passes(
            subject, backend, cfg.pipeline, rounds=cfg.rounds, warmup=cfg.warmup,
            min_sample_s=cfg.min_sample_s, max_time_s=cfg.max_time_s, clock=clock,
            progress=cfg.progress, options=(cfg.backend_options or {}).get(backend, {}))
    except Exception as exc:
        return PerPassReport(backend, str(cfg.pipeline), notes=[f"failed: {_describe(exc)}"])


def _subject(model, args, kwargs, pipeline, threads, workdir, name) -> tuple[Subject, str]:
    from graphopt.ir.graph import Graph
    from graphopt.model_loader import LoadedModel

    if isinstance(model, LoadedModel):
        graph = model._graph if model.has_graph else None
        subject = Subject(name or model.name, model.module, model.args, model.kwargs,
                          graph=graph, graph_s=model.trace_s, onnx_path=model.onnx_path,
                          pipeline=pipeline, threads=threads, workdir=workdir)
        return subject, model.spec
    if isinstance(model, Graph):
        return Subject(name or model.name, None, tuple(args), kwargs, graph=model,
                       pipeline=pipeline, threads=threads, workdir=workdir), ""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"benchmark() takes an nn.Module, a Graph or a LoadedModel, got "
                        f"{type(model).__name__}")
    if not isinstance(args, tuple):
        args = tuple(args) if isinstance(args, list) else (args,)
    model.eval()
    return Subject(name or type(model).__name__, model, args, kwargs, pipeline=pipeline,
                   threads=threads, workdir=workdir), ""


def _reference(subject: Subject) -> tuple[list[torch.Tensor], str]:
    if subject.module is not None:
        return leaves(subject.module(*subject.args, **subject.kwargs)), "eager"
    import graphopt

    graph, _ = subject.graph()
    return leaves(graphopt.run(graph, *subject.args, **subject.kwargs)), "graphopt interpreter"


def _resolve(backends: Sequence[str | BenchBackend]) -> list[str | BenchBackend]:
    if isinstance(backends, str):
        backends = [b.strip() for b in backends.split(",") if b.strip()]
    out, seen = [], set()
    for b in backends:
        key = b if isinstance(b, str) else b.name
        if key not in seen:
            seen.add(key)
            out.append(b)
    return out


def _prepare_all(entries, subject, cfg: BenchmarkConfig, reference, clock):
    """Set up each backend in turn: results, the calls to time, calls per sample, keepalives."""
    results: list[BackendResult] = []
    calls: dict[str, Any] = {}
    inner: dict[str, int] = {}
    keep = []
    bar = progress_bar(len(entries), "setup", cfg.progress)
    for entry in entries:
        backend = BENCH_BACKENDS.get(entry) if isinstance(entry, str) else entry
        label = entry if isinstance(entry, str) else entry.name
        bar.set_description(f"setup {label}")
        result = BackendResult(label)
        results.append(result)
        if backend is None:
            result.status = "unknown"
            result.reason = f"no such backend; known: {', '.join(BENCH_BACKENDS)}"
        else:
            prepared = _prepare_one(backend, result, subject, cfg, reference, clock, inner)
            if prepared is not None:
                calls.update(_variants(result, prepared, cfg, reference, clock, inner))
                keep.append(prepared)
        bar.update(1)
    bar.close()
    return results, calls, inner, keep


def _prepare_one(backend: BenchBackend, result: BackendResult, subject: Subject,
                 cfg: BenchmarkConfig, reference, clock: Clock,
                 inner: dict[str, int]) -> Prepared | None:
    """Setup, first call (checked against the reference) and warm-up of one backend, its
    time and memory measured; None when it is unavailable or failed (``result`` says why)."""
    label = result.backend
    probe = MemoryProbe()
    probe.start()
    subject.take_reused()
    step, prepared = "setup", None
    try:
        start = time.perf_counter()
        prepared = backend.prepare(subject, dict((cfg.backend_options or {}).get(label, {})))
        result.setup_s = time.perf_counter() - start + subject.take_reused()
        result.setup_stages = dict(prepared.stages)
        result.setup_stage_peaks_mib = dict(getattr(prepared.stages, "peaks", {}))
        result.notes += prepared.notes
        step = "first call"
        start = time.perf_counter()
        out = prepared.call()
        result.first_call_s = time.perf_counter() - start
        _compare(result, leaves(out), reference, cfg.rtol, cfg.atol)
        step = "warm-up"
        inner[label] = calibrate(prepared.call, cfg.warmup, cfg.min_sample_s, clock)
    except BackendUnavailable as exc:
        result.status, result.reason, prepared = "unavailable", str(exc), None
    except Exception as exc:
        result.status, result.reason = "error", f"{step} failed: {_describe(exc)}"
        prepared = None
    result.peak_mem_mib, result.resident_mem_mib = probe.stop()
    result.memory_method = probe.method
    if prepared is not None:
        _measure_artifact(result, prepared)
    return prepared


def _variants(result: BackendResult, prepared: Prepared, cfg: BenchmarkConfig, reference,
              clock: Clock, inner: dict[str, int]) -> dict[str, Any]:
    """The calls to time: the backend's call, or each of its settings as its own variant,
    named ``<backend> @ <setting>``, each checked against the reference and warmed up. A
    setting that fails is left out with a note (the backend is still timed at the others)."""
    label = result.backend
    try:
        settings = prepared.settings() if prepared.settings is not None else {}
    except Exception as exc:
        result.notes.append(f"other settings not timed: {_describe(exc)}")
        settings = {}
    if len(settings) < 2:
        return {label: prepared.call}
    variants = {}
    for name, call in settings.items():
        variant = f"{label}{SETTING_SEP}{name}"
        try:
            check = BackendResult(label)
            _compare(check, leaves(call()), reference, cfg.rtol, cfg.atol)
            if call is not prepared.call:
                inner[variant] = calibrate(call, cfg.warmup, cfg.min_sample_s, clock)
            else:
                inner[variant] = inner[label]
        except Exception as exc:
            result.notes.append(f"setting '{name}' not timed: {_describe(exc)}")
            continue
        if check.numerics_ok is False:
            result.numerics_ok = False
            result.notes.append(f"setting '{name}': outputs differ from the reference "
                                f"(max abs err {check.max_abs_err:.1e})")
        variants[variant] = call
    return variants or {label: prepared.call}


def _measure_artifact(result: BackendResult, prepared) -> None:
    """Artifact size, written after setup so that it costs neither setup time nor memory."""
    result.artifact_bytes = prepared.artifact_bytes
    if prepared.measure_artifact is not None:
        try:
            result.artifact_bytes = prepared.measure_artifact()
        except Exception as exc:
            result.notes.append(f"artifact size unknown: {_describe(exc)}")
    result.artifact = prepared.artifact


def leaves(obj: Any) -> list[torch.Tensor]:
    """The tensor leaves of a model output (tensors, numpy arrays, dicts, ModelOutputs, lists)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, np.ndarray):
        return [torch.from_numpy(obj)]
    if isinstance(obj, dict):  # includes transformers' ModelOutput (an OrderedDict)
        return [t for v in obj.values() for t in leaves(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in leaves(v)]
    return [v for v in pytree.tree_leaves(obj) if isinstance(v, torch.Tensor)]


def _compare(result: BackendResult, actual: list[torch.Tensor], reference: list[torch.Tensor],
             rtol: float, atol: float) -> None:
    if len(actual) != len(reference):
        result.numerics_ok = False
        result.notes.append(f"{len(actual)} outputs, the reference has {len(reference)}")
        return
    max_abs = max_rel = 0.0
    ok = True
    for a, r in zip(actual, reference):
        a, r = a.detach().to(torch.float64), r.detach().to(torch.float64)
        if a.shape != r.shape:
            result.numerics_ok = False
            result.notes.append(f"output shape {list(a.shape)} != reference {list(r.shape)}")
            return
        if a.numel() == 0:
            continue
        diff = (a - r).abs()
        err = float(diff.max())
        scale = float(r.abs().max())
        max_abs = max(max_abs, err)
        max_rel = max(max_rel, err / scale if scale > 0 else err)
        ok &= bool((diff <= atol + rtol * r.abs()).all())  # NaN anywhere fails
    result.max_abs_err, result.max_rel_err, result.numerics_ok = max_abs, max_rel, ok


def _speedups(results: list[BackendResult]) -> None:
    eager = next((r for r in results if r.backend == "eager" and r.latency), None)
    for r in results:
        if eager is not None and r.latency is not None and r.latency.p50 > 0:
            r.speedup_vs_eager = eager.latency.p50 / r.latency.p50


def _model_info(subject: Subject, spec: str) -> dict[str, Any]:
    inputs = [{"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
              for t in subject.flat_inputs()]
    params = None
    if subject.module is not None:
        params = sum(p.numel() for p in subject.module.parameters())
    return {"name": subject.name, "spec": spec, "inputs": inputs, "parameters": params}


def _describe(exc: BaseException) -> str:
    return error_summary(exc)
