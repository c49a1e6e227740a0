"""Attribute a pipeline's speedup to its passes by timing pipeline prefixes.

The pipeline runs once with an instrument that snapshots the graph after every pass run that
changed it (passes that change nothing cannot change latency). Each snapshot, and the
unoptimized graph, is lowered with one graphopt backend and all of them are timed interleaved
in one loop, so the per-stage differences are measured under the same conditions::

    #  after                      nodes   p50    saved   speedup
    0  unoptimized                  412  9.81        -     1.00x
    1  canonicalize (fixpoint#1)    380  9.52   +0.290     1.03x
    2  fuse-attention               236  7.10   +2.420     1.38x

``saved`` is the previous stage's p50 minus this stage's: positive means the pass helped.
Differences below the IQR are noise. With more than ``max_stages`` changing pass runs,
consecutive runs are merged into one stage (``a+b``).
"""

from __future__ import annotations

import time
from typing import Any

from graphopt.bench.backends import BENCH_BACKENDS, Subject, _optimize_fn
from graphopt.bench.report import LatencyStats, PassStage, PerPassReport, error_summary
from graphopt.timing import Clock, calibrate, progress_bar, run_interleaved
from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.transform.instruments import Instrument


class SnapshotInstrument(Instrument):
    """Keeps ``(label, name, graph.clone())`` after every pass run that changed the graph."""

    def __init__(self) -> None:
        self.snapshots: list[tuple[str, str, Graph]] = []

    def after_pass(self, record, graph: Graph) -> None:
        if record.changed:
            label = record.label + (f" ({record.path})" if record.path else "")
            self.snapshots.append((label, record.name, graph.clone()))


def graph_backends() -> list[str]:
    """Benchmark backends that can lower an arbitrary graph (usable for attribution)."""
    return [name for name, b in BENCH_BACKENDS.items() if b.lower is not None]


def attribute_passes(subject: Subject, backend: str = "graphopt-onnxruntime",
                     pipeline: Any = None, *, rounds: int = 20, warmup: int = 3,
                     min_sample_s: float = 0.01, max_time_s: float | None = None,
                     clock: Clock = time.perf_counter, progress: bool | None = None,
                     options: dict | None = None, max_stages: int = 12) -> PerPassReport:
    """Time the graph after each changing pass of ``pipeline`` on ``backend``.

    Args:
        subject: the model (``graphopt.bench.backends.Subject``).
        backend: a graphopt benchmark backend (see :func:`graph_backends`).
        pipeline: the pipeline (default: the subject's).
        rounds / warmup / min_sample_s / max_time_s / clock / progress: as in ``benchmark``.
        options: the backend's options.
        max_stages: merge consecutive changing pass runs beyond this many stages.

    Raises:
        GraphoptError: ``backend`` cannot lower graphs.
    """
    entry = BENCH_BACKENDS.get(backend)
    if entry is None or entry.lower is None:
        raise GraphoptError(f"per-pass attribution needs a graphopt backend ("
                            f"{', '.join(graph_backends())}), got '{backend}'")
    pipeline = subject.pipeline if pipeline is None else pipeline
    graph, _ = subject.graph()
    snap = SnapshotInstrument()
    _optimize_fn()(graph, pipeline, instruments=[snap])
    report = PerPassReport(backend, str(pipeline))
    stages, graphs = _stages(graph, snap.snapshots, max_stages, report)
    # keep: the prepared stages stay alive until their timing is done.
    calls, inner, keep = _prepare_stages(entry, subject, stages, graphs, options, warmup,
                                         min_sample_s, clock, progress, backend, report)
    bar = progress_bar(len(calls) * rounds, "per-pass timing", progress)
    # The same schedule as graphopt.benchmark's: rotated blocks with a pause, so the spinning
    # pool of one stage's onnxruntime session cannot slow the next stage down.
    samples, _ = run_interleaved(calls, inner, rounds, clock, max_time_s=max_time_s,
                                 progress=bar, on_error=lambda name, exc: None, rotate=True,
                                 block=4, pause_s=0.1, block_warmup=1)
    bar.close()
    _record_latencies(stages, samples)
    del keep
    report.stages = stages
    return report


def _stages(graph: Graph, snapshots: list, max_stages: int, report: PerPassReport):
    """The stages to time (the unoptimized graph, then each group of changing pass runs) and
    the graph after each; notes merged runs and an unchanged graph in ``report``."""
    stages = [PassStage("unoptimized", [], len(graph.nodes))]
    graphs = [graph]
    for group in _groups(snapshots, max_stages):
        names = [label for label, _, _ in group]
        unique = list(dict.fromkeys(name for _, name, _ in group))
        label = names[0] if len(group) == 1 else "+".join(unique) + f" ({len(group)} runs)"
        stages.append(PassStage(label, names, len(group[-1][2].nodes)))
        graphs.append(group[-1][2])
    if len(snapshots) > max_stages:
        report.notes.append(f"{len(snapshots)} changing pass runs merged into "
                            f"{max_stages} stages")
    if len(stages) == 1:
        report.notes.append("no pass changed the graph")
    return stages, graphs


def _prepare_stages(entry, subject: Subject, stages: list[PassStage], graphs: list[Graph],
                    options: dict | None, warmup: int, min_sample_s: float, clock: Clock,
                    progress: bool | None, backend: str, report: PerPassReport):
    """Lower and calibrate every stage's graph, keyed by the stage's index as text.

    Returns ``(calls, inner, keep)``: the callables to time, their calibrated inner loop
    counts, and the prepared objects (to be kept alive while timing). A stage that cannot
    run is noted in ``report`` and left out.
    """
    calls, inner, keep = {}, {}, []
    bar = progress_bar(len(stages), "per-pass setup", progress)
    for i, (stage, g) in enumerate(zip(stages, graphs)):
        try:
            prepared = entry.lower(g, subject, dict(options or {}))
            prepared.call()
            inner[str(i)] = calibrate(prepared.call, warmup, min_sample_s, clock)
        except Exception as exc:
            report.notes.append(f"stage {i} ({stage.label}) cannot run on {backend}: "
                                f"{error_summary(exc)}")
        else:
            calls[str(i)] = prepared.call
            keep.append(prepared)
        bar.update(1)
    bar.close()
    return calls, inner, keep


def _record_latencies(stages: list[PassStage], samples: dict) -> None:
    """Fill in each timed stage's latency, its speedup over the first timed stage, and the
    time saved against the previous timed stage."""
    previous = None
    base = None
    for i, stage in enumerate(stages):
        if not samples.get(str(i)):
            continue
        stats = LatencyStats.from_samples(samples[str(i)])
        stage.p50_ms, stage.p90_ms, stage.iqr_ms = stats.p50, stats.p90, stats.iqr
        base = stats.p50 if base is None else base
        stage.speedup = base / stats.p50 if stats.p50 > 0 else None
        if previous is not None:
            stage.saved_ms = previous - stats.p50
        previous = stats.p50


def _groups(snapshots: list, max_stages: int) -> list[list]:
    n = len(snapshots)
    if n <= max_stages:
        return [[s] for s in snapshots]
    bounds = [round(i * n / max_stages) for i in range(max_stages + 1)]
    return [snapshots[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
