"""Benchmark results: per-backend records, the whole report, and its JSON / markdown / text forms.

JSON schema (``BenchmarkReport.to_dict()``, ``"schema": "graphopt-bench/1"``)::

    {schema, created, duration_s,
     model:   {name, spec, inputs: [{shape, dtype}], parameters},
     config:  {backends, order, pipeline, threads, warmup, rounds, rounds_done, min_sample_s,
               max_time_s, reference, rtol, atol, per_pass, backend_options, progress, name,
               workdir, target: null | {backend, isa, threads}}   (BenchmarkConfig.to_dict()
               plus what the run resolved: threads, order, rounds_done, reference),
     machine: {cpu_model, logical_cpus, usable_cpus, cpu_flags, memory_gib, load_avg_1m,
               competing_cpus (other processes' CPU use at the start), platform, python,
               versions: {torch, onnxruntime, onnx, numpy, graphopt, transformers, ...},
               threading: {torch_threads, torch_interop_threads, torch_parallel_backend,
               native_isa, environment: {OMP_NUM_THREADS, OMP_WAIT_POLICY, ...: set ones}}},
     results: [{backend, status, reason, latency_ms: {p50, p90, p10, min, mean, iqr, samples,
                calls_per_sample} | null, speedup_vs_eager, setup_s, first_call_s,
                setup_stages: {stage: s}, setup_stage_peaks_mib: {stage: MiB}, peak_mem_mib, resident_mem_mib, memory_method,
                max_abs_err, max_rel_err, numerics_ok, artifact_bytes, artifact, notes,
                setting, settings_p50_ms: {setting: p50}}],
     per_pass: null | {backend, pipeline, stages: [{label, passes, nodes, p50_ms, p90_ms,
                iqr_ms, saved_ms, speedup}]}}

``status`` is "ok", "unavailable" (the backend cannot run here: package or build missing,
no PyTorch module for an ONNX input), "unknown" (no such backend) or "error" (it failed:
``reason`` says where). Only "ok" results carry latencies.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from graphopt.bench.machine import load_text
from graphopt.timing import percentile  # noqa: F401  (re-exported: the report's percentiles)

SCHEMA = "graphopt-bench/1"
STATUSES = ("ok", "unavailable", "unknown", "error")


@dataclass
class LatencyStats:
    """Per-call latency over the timed rounds, in milliseconds.

    Each round times ``calls_per_sample`` back-to-back calls and contributes one sample (their
    mean); ``iqr`` = p75 - p25 is the spread shown next to p50.
    """

    p50: float
    p90: float
    p10: float
    min: float
    mean: float
    iqr: float
    samples: list[float]
    calls_per_sample: int = 1

    @classmethod
    def from_samples(cls, seconds: list[float], calls_per_sample: int = 1) -> "LatencyStats":
        ms = [s * 1000.0 for s in seconds]
        return cls(p50=percentile(ms, 50), p90=percentile(ms, 90), p10=percentile(ms, 10),
                   min=min(ms), mean=statistics.fmean(ms),
                   iqr=percentile(ms, 75) - percentile(ms, 25), samples=ms,
                   calls_per_sample=calls_per_sample)


@dataclass
class BackendResult:
    """What one backend did: status, latency, setup time, memory, numerics, artifact size.

    Attributes:
        backend: the backend's name.
        status: "ok", "unavailable", "unknown" or "error"; ``reason`` explains the last three.
        latency: timed-round statistics (None unless status is "ok").
        speedup_vs_eager: eager p50 / this p50 (None without an eager result).
        setup_s: preparation before the first call (trace, optimize, export, lower, session...).
        first_call_s: the first call alone (where lazy compilers such as inductor compile).
        setup_stages: ``setup_s`` split by stage, in seconds.
        setup_stage_peaks_mib: each setup stage's peak RSS above its own start, in MiB
            (``graphopt.stagereport``; stages shared by several backends, trace and
            optimize, were measured once, by the first backend that ran them).
        peak_mem_mib: peak RSS increase over the RSS before this backend's setup, during setup,
            first call and warm-up (see ``memory_method``).
        resident_mem_mib: RSS still held after warm-up (compiled code, weight copies, arenas).
        memory_method: "proc-hwm" (VmHWM reset per backend through /proc/self/clear_refs) or
            "ru_maxrss" (process-wide peak: only growth beyond earlier peaks shows) or "none".
        max_abs_err: max |out - ref| over all output elements; ``max_rel_err`` the same divided
            by max |ref| of that output (scale-relative, so near-zero elements do not blow up).
        numerics_ok: every output within ``atol + rtol * |ref|``.
        artifact_bytes: size on disk of what this backend would ship (``artifact`` says what).
        notes: anything else worth knowing (exporter used, fallbacks...).
        setting: for a backend that offers several settings (onnxruntime: "spinning", its
            default, and "no spinning"), the one whose p50 was lowest: ``latency`` is its.
        settings_p50_ms: every setting tried, with its p50 (empty for one-setting backends).
    """

    backend: str
    status: str = "ok"
    reason: str = ""
    latency: LatencyStats | None = None
    speedup_vs_eager: float | None = None
    setup_s: float | None = None
    first_call_s: float | None = None
    setup_stages: dict[str, float] = field(default_factory=dict)
    setup_stage_peaks_mib: dict[str, float] = field(default_factory=dict)
    peak_mem_mib: float | None = None
    resident_mem_mib: float | None = None
    memory_method: str = "none"
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    numerics_ok: bool | None = None
    artifact_bytes: int | None = None
    artifact: str = ""
    notes: list[str] = field(default_factory=list)
    setting: str = ""
    settings_p50_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["latency_ms"] = out.pop("latency")
        return _clean(out)


@dataclass
class PassStage:
    """One point of a per-pass attribution: the graph after ``passes`` (cumulative prefix)."""

    label: str
    passes: list[str]
    nodes: int
    p50_ms: float | None = None
    p90_ms: float | None = None
    iqr_ms: float | None = None
    saved_ms: float | None = None  # previous stage's p50 minus this one's
    speedup: float | None = None  # unoptimized p50 / this p50


@dataclass
class PerPassReport:
    """Speedup attributed to passes by timing the pipeline prefix after each changing pass."""

    backend: str
    pipeline: str
    stages: list[PassStage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    def table(self) -> str:
        rows = [(str(i), s.label, str(s.nodes), _ms(s.p50_ms), _ms(s.iqr_ms),
                 _signed_ms(s.saved_ms), _x(s.speedup)) for i, s in enumerate(self.stages)]
        text = _table(("#", "after", "nodes", "p50", "iqr", "saved", "speedup"), rows,
                      right={0, 2, 3, 4, 5, 6})
        head = f"per-pass attribution on {self.backend} (pipeline: {self.pipeline})"
        return "\n".join([head, text] + [f"note: {n}" for n in self.notes])


@dataclass
class BenchmarkReport:
    """The result of :func:`graphopt.benchmark`; ``str(report)`` is the terminal table."""

    model: dict[str, Any]
    config: dict[str, Any]
    machine: dict[str, Any]
    results: list[BackendResult]
    created: str = ""
    duration_s: float = 0.0
    per_pass: PerPassReport | None = None

    def __getitem__(self, backend: str) -> BackendResult:
        for r in self.results:
            if r.backend == backend:
                return r
        raise KeyError(f"no result for backend '{backend}'; have "
                       f"{', '.join(r.backend for r in self.results)}")

    @property
    def ok_results(self) -> list[BackendResult]:
        return [r for r in self.results if r.ok]

    # ------------------------------------------------------------------------------ formats
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "created": self.created,
            "duration_s": round(self.duration_s, 3),
            "model": _clean(self.model),
            "config": _clean(self.config),
            "machine": _clean(self.machine),
            "results": [r.to_dict() for r in self.results],
            "per_pass": self.per_pass.to_dict() if self.per_pass else None,
        }

    def to_json(self, path: str | None = None, indent: int = 2) -> str:
        """The report as JSON text (also written to ``path`` when given)."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            _write(path, text + "\n")
        return text

    def table(self) -> str:
        """The terminal table: one row per backend, unavailable/failed ones with their reason."""
        header = ("backend", "p50 ms", "p90 ms", "min ms", "iqr ms", "vs eager", "setup s",
                  "peak MiB", "max abs err", "artifact")
        rows, footnotes = [], []
        for r in self.results:
            if r.ok:
                lat = r.latency
                err = "-" if r.max_abs_err is None else f"{r.max_abs_err:.1e}"
                if r.numerics_ok is False:
                    err += " !"
                rows.append((r.backend, _ms(lat.p50), _ms(lat.p90), _ms(lat.min), _ms(lat.iqr),
                             _x(r.speedup_vs_eager), _s(_total_setup(r)), _mib(r.peak_mem_mib),
                             err, _size(r.artifact_bytes)))
            else:
                rows.append((r.backend, r.status, "", "", "", "", "", "", "", ""))
                footnotes.append(f"{r.backend}: {r.status}: {r.reason}")
        lines = [self.headline(), _table(header, rows, right=set(range(1, 10)))]
        busy = self.busy_warning()
        if busy:
            lines.append(busy)
        if any(r.numerics_ok is False for r in self.results):
            lines.append(f"! outputs differ from {self.config.get('reference')} beyond "
                         f"rtol={self.config.get('rtol')}, atol={self.config.get('atol')}")
        lines += footnotes
        lines += self.setup_lines()
        lines += [f"{r.backend}: fastest setting '{r.setting}' of " + ", ".join(
            f"{k} {_ms(v)}" for k, v in r.settings_p50_ms.items()) + " ms p50"
            for r in self.results if r.setting]
        if self.per_pass is not None:
            lines += ["", self.per_pass.table()]
        return "\n".join(lines)

    def setup_lines(self) -> list[str]:
        """Per backend, its setup stages with their time and peak memory (the setup columns
        split by stage): ``native setup: trace 1.20 s +310 MiB, optimize 0.80 s +20 MiB``."""
        lines = []
        for r in self.results:
            if len(r.setup_stages) < 2 and not r.setup_stage_peaks_mib:
                continue
            parts = []
            for stage, seconds in r.setup_stages.items():
                peak = r.setup_stage_peaks_mib.get(stage)
                parts.append(f"{stage} {_s(seconds)} s" + ("" if peak is None else
                                                          f" +{peak:.0f} MiB"))
            lines.append(f"{r.backend} setup: " + ", ".join(parts))
        return lines

    def headline(self) -> str:
        m, c = self.machine, self.config
        inputs = ", ".join(f"{i['dtype']}{list(i['shape'])}" for i in self.model.get("inputs", []))
        return (f"{self.model.get('name')} ({inputs}) | pipeline {c.get('pipeline')!r} | "
                f"{c.get('threads')} threads | {c.get('rounds_done')} interleaved rounds, "
                f"{c.get('warmup')} warm-up | {m.get('cpu_model')}, {load_text(m)}")

    def busy_warning(self) -> str:
        """A warning when other processes competed for the CPUs at the start of the run.

        torch's OpenMP threads degrade badly when cores are oversubscribed (100x slower on
        small convs seen on 2 shared cores); onnxruntime's thread pool much less. The judge is
        ``competing_cpus`` (other processes' CPU use sampled at the start, see
        ``machine.competing_cpu_load``); reports without it fall back to the load average,
        which also counts this benchmark's own recent work.
        """
        cpus = self.machine.get("usable_cpus")
        threads = self.config.get("threads") or 1
        other = self.machine.get("competing_cpus")
        what = "other processes used {} CPUs"
        if other is None:
            other, what = self.machine.get("load_avg_1m"), "load average {}"
        if other is None or not cpus or other < cpus - threads + 0.75:
            return ""
        return (f"warning: {what.format(other)} of {cpus} at the start: other processes "
                f"competed for the cores; timings (torch's above all) are not reliable")

    def to_markdown(self, path: str | None = None) -> str:
        """A markdown section: headline, results table, reasons, machine and versions."""
        header = ("backend", "status", "p50 ms", "p90 ms", "iqr ms", "speedup vs eager",
                  "setup s", "first call s", "peak MiB", "max abs err", "max rel err",
                  "artifact")
        busy = self.busy_warning()
        lines = [f"## {self.model.get('name')}", "", self.headline()]
        lines += ["", f"**{busy}**"] if busy else []
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in self.results:
            lat = r.latency
            cells = [r.backend, r.status if r.ok else f"{r.status}: {r.reason}",
                     _ms(lat.p50) if lat else "", _ms(lat.p90) if lat else "",
                     _ms(lat.iqr) if lat else "", _x(r.speedup_vs_eager), _s(r.setup_s),
                     _s(r.first_call_s), _mib(r.peak_mem_mib),
                     "" if r.max_abs_err is None else f"{r.max_abs_err:.1e}",
                     "" if r.max_rel_err is None else f"{r.max_rel_err:.1e}",
                     _size(r.artifact_bytes)]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        notes = [f"- {r.backend}: {n}" for r in self.results for n in r.notes]
        notes += [f"- {line}" for line in self.setup_lines()]
        notes += [f"- {r.backend}: fastest setting '{r.setting}' (p50 " + ", ".join(
            f"{k} {_ms(v)}" for k, v in r.settings_p50_ms.items()) + " ms)"
            for r in self.results if r.setting]
        if notes:
            lines += ["", "Notes:", ""] + notes
        if self.per_pass is not None:
            p = self.per_pass
            lines += ["", f"### Per-pass attribution ({p.backend})", "",
                      "| # | after | nodes | p50 ms | saved ms | speedup |",
                      "|---|---|---|---|---|---|"]
            for i, s in enumerate(p.stages):
                lines.append(f"| {i} | {s.label} | {s.nodes} | {_ms(s.p50_ms)} | "
                             f"{_signed_ms(s.saved_ms)} | {_x(s.speedup)} |")
        m = self.machine
        versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
        lines += ["", f"Machine: {m.get('cpu_model')}, {m.get('usable_cpus')} usable CPUs, "
                  f"{m.get('memory_gib')} GiB; {m.get('platform')}; Python {m.get('python')}; "
                  f"{versions}.", ""]
        text = "\n".join(lines)
        if path is not None:
            _write(path, text)
        return text

    def plot(self, path: str) -> str:
        """Write the latency/speedup figure (PNG or any matplotlib format); returns ``path``."""
        from graphopt.bench.plot import plot_report

        return plot_report(self, path)

    def __str__(self) -> str:
        return self.table()


# ------------------------------------------------------------------------------ formatting
def error_summary(exc: BaseException, with_type: bool = True) -> str:
    """One line for an exception: its first line, plus the first detail after a "...:" heading."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if text.endswith(":") and len(lines) > 1:
        text += " " + lines[1].lstrip("- ")
    if not with_type:
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _total_setup(r: BackendResult) -> float | None:
    if r.setup_s is None:
        return None
    return r.setup_s + (r.first_call_s or 0.0)


def _ms(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if v < 1 else (f"{v:.2f}" if v < 100 else f"{v:.1f}")


def _signed_ms(v: float | None) -> str:
    return "-" if v is None else ("+" if v >= 0 else "-") + _ms(abs(v))


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _mib(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], right: set[int]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tuples -> lists, floats rounded to 6 significant digits."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else float(f"{obj:.6g}")
    return obj


def _write(path: str, text: str) -> None:
    import os

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def write_results(path: str, data: dict) -> None:
    """A benchmark script's result JSON at ``path`` (its folder created), and a line saying so:
    what the scripts under benchmarks/ end with."""
    _write(path, json.dumps(data, indent=1))
    print(f"wrote {path}")
