"""``graphopt.benchmark``: compare backends on one model, fairly by construction.

Method:
    1. Same thread count everywhere: ``torch.set_num_threads(threads)`` for the whole run and
       ``intra_op_num_threads=threads`` (one inter-op thread) for onnxruntime sessions.
    2. Each backend, one after the other: setup (timed, with a per-stage breakdown), first call
       (timed separately: lazy compilers such as inductor compile there; its outputs are
       compared with the reference), ``warmup`` more calls that also calibrate how many
       back-to-back calls make one sample (``min_sample_s``). Peak and retained memory are
       measured around these steps (see ``BackendResult``).
    3. Timed rounds, interleaved: every round times each backend once, in the same order
       (A B C A B C ...), with the garbage collector off; ``max_time_s`` may end them early.
    4. Per backend: p50/p90/p10/min/mean/IQR over rounds, speedup = eager p50 / p50.

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
from graphopt.bench.timing import Clock, calibrate, progress_bar, run_interleaved
from graphopt.compile import Target


def benchmark(model: Any, args: Sequence[Any] = (), kwargs: dict | None = None, *,
              backends: Sequence[str | BenchBackend] = DEFAULT_BACKENDS,
              pipeline: Any = "default", threads: int | None = None, warmup: int = 3,
              rounds: int = 20, min_sample_s: float = 0.01, max_time_s: float | None = None,
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
        rounds: timed rounds.
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
        rounds=rounds, min_sample_s=min_sample_s, max_time_s=max_time_s, rtol=rtol, atol=atol,
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

    def failed(backend: str, exc: BaseException) -> None:
        result = next(r for r in results if r.backend == backend)
        result.status, result.reason = "error", f"failed while timing: {_describe(exc)}"

    samples, rounds_done = run_interleaved(calls, inner, cfg.rounds, clock,
                                           max_time_s=cfg.max_time_s, progress=bar,
                                           on_error=failed)
    bar.close()
    for r in results:
        if r.ok and samples.get(r.backend):
            r.latency = LatencyStats.from_samples(samples[r.backend], inner[r.backend])
    _speedups(results)
    config = _report_config(cfg, entries, subject.threads)
    config.update(order=order, rounds_done=rounds_done, reference=reference_name)
    report = BenchmarkReport(config=config, results=results, **header)
    del keep, calls  # free the backends before the per-pass runs
    if cfg.per_pass:
        report.per_pass = _per_pass(subject, cfg, clock)
    return report


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
    backend_options = cfg.backend_options or {}
    warmup, min_sample_s, rtol, atol = cfg.warmup, cfg.min_sample_s, cfg.rtol, cfg.atol
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
            bar.update(1)
            continue
        probe = MemoryProbe()
        probe.start()
        subject.take_reused()
        step = "setup"
        try:
            start = time.perf_counter()
            prepared = backend.prepare(subject, dict(backend_options.get(label, {})))
            result.setup_s = time.perf_counter() - start + subject.take_reused()
            result.setup_stages = dict(prepared.stages)
            result.notes += prepared.notes
            step = "first call"
            start = time.perf_counter()
            out = prepared.call()
            result.first_call_s = time.perf_counter() - start
            _compare(result, leaves(out), reference, rtol, atol)
            step = "warm-up"
            inner[label] = calibrate(prepared.call, warmup, min_sample_s, clock)
        except BackendUnavailable as exc:
            result.status, result.reason = "unavailable", str(exc)
        except Exception as exc:
            result.status, result.reason = "error", f"{step} failed: {_describe(exc)}"
        else:
            calls[label] = prepared.call
            keep.append(prepared)
        result.peak_mem_mib, result.resident_mem_mib = probe.stop()
        result.memory_method = probe.method
        if result.ok:
            _measure_artifact(result, prepared)
        bar.update(1)
    bar.close()
    return results, calls, inner, keep


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
