"""The benchmark's backends: how each one turns the model into a zero-argument call.

A backend is registered with ``@bench_backend(name)`` as a function
``prepare(subject, options) -> Prepared``. ``subject`` holds the model, its example inputs, the
pipeline and thread count, and builds the traced and optimized graphs once for all graphopt
backends (their times count in every graphopt backend's setup, as if each ran alone). A backend
that cannot run here raises :class:`BackendUnavailable`; any other exception is reported as an
error of that backend. Backends built on a graphopt graph also provide ``lower(graph, subject,
options)`` so that the per-pass attribution can time pipeline prefixes.

Here: the registry, ``Subject``, and the eager, torch.compile, native and graphopt-torch
backends; the two onnxruntime backends are in ``graphopt.bench.onnxruntime_backends``.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.utils._pytree as pytree

from graphopt.ir.graph import Graph
from graphopt.stagereport import measure


class BackendUnavailable(Exception):
    """This backend cannot run in this environment (the message says why)."""


@dataclass
class Prepared:
    """A backend ready to time.

    Attributes:
        call: runs the model once on the example inputs, returns its outputs.
        stages: setup seconds by stage (trace, optimize, export, lower, session...); a
            :class:`StageTimes` also holds each stage's peak memory.
        artifact_bytes / artifact: size on disk of what the backend ships, and what that is.
        measure_artifact: when the artifact is not written during setup, a function that
            writes it and returns its size (run outside the timed and memory-probed setup).
        notes: remarks for the report (exporter used, fallbacks).
        keepalive: objects that must live while ``call`` is used (sessions, temp dirs).
        settings: for a backend whose best run-time setting depends on the model and the
            machine (onnxruntime's thread-pool spinning), a function returning one call per
            setting, ``call`` among them; the harness times each and reports the fastest. It
            runs after setup time and memory are measured: the extra sessions are the same
            model under other settings, not part of what the backend needs.
    """

    call: Callable[[], Any]
    stages: dict[str, float] = field(default_factory=lambda: StageTimes())
    artifact_bytes: int | None = None
    artifact: str = ""
    notes: list[str] = field(default_factory=list)
    keepalive: Any = None
    measure_artifact: Callable[[], int | None] | None = None
    settings: Callable[[], dict[str, Callable[[], Any]]] | None = None


@dataclass
class BenchBackend:
    name: str
    prepare: Callable[["Subject", dict], Prepared]
    doc: str
    lower: Callable[[Graph, "Subject", dict], Prepared] | None = None


BENCH_BACKENDS: dict[str, BenchBackend] = {}
DEFAULT_BACKENDS = ("eager", "torch-compile", "onnxruntime", "graphopt-onnxruntime",
                    "graphopt-native", "graphopt-torch")


def bench_backend(name: str, lower: Callable | None = None):
    """Register ``prepare(subject, options) -> Prepared`` as benchmark backend ``name``."""

    def decorate(fn):
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        BENCH_BACKENDS[name] = BenchBackend(name, fn, doc, lower)
        return fn

    return decorate


class Subject:
    """The model under test and everything shared between backends.

    Args:
        name: display name.
        module: the PyTorch model (None for ONNX inputs: eager-based backends are unavailable).
        args / kwargs: example inputs.
        graph: an already built graph (ONNX/.pt2 inputs), else traced on first use.
        graph_s: seconds it took to build ``graph`` (counted as the "trace" stage).
        onnx_path: the original ONNX file, run directly by the "onnxruntime" backend.
        pipeline: the graphopt pipeline for the graphopt backends.
        threads: intra-op threads for every backend.
        workdir: where artifacts are written to measure their size.
    """

    def __init__(self, name: str, module: torch.nn.Module | None, args: tuple,
                 kwargs: dict | None = None, *, graph: Graph | None = None,
                 graph_s: float | None = None, onnx_path: str | None = None,
                 pipeline: Any = "default", threads: int = 1, workdir: str = "."):
        self.name = name
        self.module = module
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.onnx_path = onnx_path
        self.pipeline = pipeline
        self.threads = threads
        self.workdir = workdir
        self._graph = graph
        self._graph_s = graph_s or 0.0
        self._graph_peak = 0.0  # MiB above the start of the trace (0: given, not traced)
        self._optimized: Graph | None = None
        self._optimize_s = 0.0
        self._optimize_peak = 0.0
        self.pass_report = None
        self._errors: dict[str, BaseException] = {}
        self.reused_s = 0.0  # shared-stage seconds reused from cache since the last take

    # ---------------------------------------------------------------------- shared stages
    def graph(self) -> tuple[Graph, dict[str, float]]:
        """The traced graph and ``{"trace": seconds}``."""
        if "trace" in self._errors:
            raise self._errors["trace"]
        if self._graph is None:
            if self.module is None:
                raise BackendUnavailable("no graph and no PyTorch module to trace")
            import graphopt

            try:
                with measure("trace") as cost:
                    self._graph = graphopt.trace(self.module, self.args, self.kwargs or None)
            except Exception as exc:
                self._errors["trace"] = exc
                raise
            self._graph_s, self._graph_peak = cost.seconds, cost.peak_increase_mib
        else:
            self.reused_s += self._graph_s
        return self._graph, StageTimes({"trace": self._graph_s}, {"trace": self._graph_peak})

    def optimized(self) -> tuple[Graph, dict[str, float]]:
        """The graph after the pipeline and ``{"trace": s, "optimize": s}``."""
        if "optimize" in self._errors:
            raise self._errors["optimize"]
        graph, stages = self.graph()
        if self._optimized is None:
            optimize = _optimize_fn()
            try:
                self._optimized, self.pass_report = optimize(graph, self.pipeline, report=True)
            except Exception as exc:
                self._errors["optimize"] = exc
                raise
            cost = self.pass_report.stage
            self._optimize_s, self._optimize_peak = cost.seconds, cost.peak_increase_mib
        else:
            self.reused_s += self._optimize_s
        return self._optimized, StageTimes({**stages, "optimize": self._optimize_s},
                                           {**stages.peaks, "optimize": self._optimize_peak})

    def take_reused(self) -> float:
        value, self.reused_s = self.reused_s, 0.0
        return value

    def require_module(self, backend: str) -> torch.nn.Module:
        if self.module is None:
            raise BackendUnavailable(f"{backend} needs a PyTorch module; this model is an "
                                     "ONNX file")
        return self.module

    def flat_inputs(self) -> list[torch.Tensor]:
        leaves = pytree.tree_leaves((self.args, self.kwargs))
        return [x.contiguous() for x in leaves if isinstance(x, torch.Tensor)]

    def artifact_path(self, name: str) -> str:
        folder = os.path.join(self.workdir, name)
        os.makedirs(folder, exist_ok=True)
        return folder


def _optimize_fn() -> Callable:
    import graphopt

    optimize = getattr(graphopt, "optimize", None)
    if optimize is None:
        raise BackendUnavailable("graphopt.optimize is not part of this build")
    return optimize


def folder_bytes(folder: str) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


class StageTimes(dict):
    """Setup seconds by stage (a plain dict), with each stage's peak resident memory above
    its start in ``peaks`` (MiB): the bench's per-stage setup columns."""

    def __init__(self, stages: dict[str, float] | None = None,
                 peaks: dict[str, float] | None = None) -> None:
        super().__init__(stages or {})
        self.peaks: dict[str, float] = {**getattr(stages, "peaks", {}), **(peaks or {})}


@contextlib.contextmanager
def _timed(stages: dict[str, float], key: str):
    """Add the block's seconds to ``stages[key]`` and, for :class:`StageTimes`, its peak
    memory to ``stages.peaks[key]`` (graphopt.stagereport: nested inside the harness's
    probe of the whole setup without hiding its peak)."""
    with measure(key) as cost:
        yield
    stages[key] = stages.get(key, 0.0) + cost.seconds
    if isinstance(stages, StageTimes):
        stages.peaks[key] = max(stages.peaks.get(key, 0.0), cost.peak_increase_mib)


# -------------------------------------------------------------------------------- PyTorch
@bench_backend("eager")
def prepare_eager(subject: Subject, options: dict) -> Prepared:
    """The PyTorch model as is (torch.no_grad)."""
    module = subject.require_module("eager")
    args, kwargs = subject.args, subject.kwargs
    return Prepared(lambda: module(*args, **kwargs), artifact="torch.save(state_dict)",
                    measure_artifact=lambda: _saved_bytes(module.state_dict()))


# torch.compile's settings worth trying on CPU inference (PyTorch's performance tuning guide
# and inductor's own docs): its default, weight freezing (constant-folds the parameters into
# the graph, the CPU inference recommendation), and max-autotune on top of freezing (benchmarks
# GEMM / conv templates at compile time; slow to compile). Each is a torch.compile ``options``
# dict of inductor config patches, applied while that setting compiles.
COMPILE_SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "freezing": {"freezing": True},
    "max-autotune+freezing": {"freezing": True, "max_autotune": True},
}


def compile_settings(options: dict) -> dict[str, dict[str, Any]]:
    """The torch.compile settings to time, from option ``settings``: "best" (all of
    ``COMPILE_SETTINGS``, the default) or comma-separated names; option ``mode`` (a
    torch.compile mode) times that one mode alone, as before."""
    from graphopt.errors import BackendOptionError

    wanted = str(options.get("settings", "best")).strip()
    if wanted == "best":
        return dict(COMPILE_SETTINGS)
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    unknown = [n for n in names if n not in COMPILE_SETTINGS]
    if unknown or not names:
        raise BackendOptionError(f"torch-compile option settings={wanted!r}: use 'best' or "
                                 f"names among {', '.join(COMPILE_SETTINGS)}")
    return {n: COMPILE_SETTINGS[n] for n in names}


@bench_backend("torch-compile")
def prepare_torch_compile(subject: Subject, options: dict) -> Prepared:
    """torch.compile (inductor): its default, freezing and max-autotune + freezing timed, the
    fastest reported (options: settings, or mode / backend for one setting); compiles on the
    first call of each."""
    module = subject.require_module("torch-compile")
    import torch._dynamo

    torch._dynamo.reset()
    args, kwargs = subject.args, subject.kwargs
    mode = options.get("mode")
    if mode is not None or options.get("backend") not in (None, "inductor"):
        compiled = torch.compile(module, backend=options.get("backend", "inductor"), mode=mode,
                                 dynamic=False)
        notes = [f"mode={mode or 'default'}; compilation happens in the first call"]
        return Prepared(lambda: compiled(*args, **kwargs), notes=notes, artifact="none")
    settings = compile_settings(options)
    names = list(settings)
    first = torch.compile(module, dynamic=False, options=dict(settings[names[0]]) or None)
    first_call = lambda: first(*args, **kwargs)  # noqa: E731
    notes = [f"settings tried: {', '.join(names)}; each compiles in its first call"]

    def more() -> dict[str, Callable[[], Any]]:
        calls = {names[0]: first_call}
        for name in names[1:]:
            # A separate compile of the same module; dynamo recompiles for the new backend
            # options instead of reusing the first setting's graph.
            compiled = torch.compile(module, dynamic=False, options=dict(settings[name]))
            calls[name] = lambda compiled=compiled: compiled(*args, **kwargs)
        return calls

    return Prepared(first_call, notes=notes, artifact="none",
                    settings=more if len(names) > 1 else None)


# --------------------------------------------------------------------------------- native
def _native_factory() -> Callable:
    """The native backend's factory; BackendUnavailable when this build has none."""
    import importlib

    from graphopt.compile import BACKENDS, get_backend

    if "native" not in BACKENDS:
        # The module registering it may not have been imported yet.
        for name in ("graphopt.backends.native", "graphopt.backends.native_backend"):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:
                    raise BackendUnavailable(f"{name} cannot load: {exc}") from exc
            except ImportError as exc:
                raise BackendUnavailable(f"{name} cannot load: {exc}") from exc
    if "native" not in BACKENDS:
        raise BackendUnavailable("graphopt's native backend is not part of this build")
    try:
        return get_backend("native")
    except ImportError as exc:
        raise BackendUnavailable(f"graphopt's native backend cannot load: {exc}") from exc


def lower_graphopt_native(graph: Graph, subject: Subject, options: dict,
                          stages: dict[str, float] | None = None) -> Prepared:
    """graphopt.compile(graph, "native"); unavailable when the build has no native backend."""
    factory = _native_factory()
    stages = StageTimes(stages)
    # A benchmarked "graphopt-native" is native end to end: a node that would run through its
    # reference implementation fails the subject instead of timing torch under this label.
    options = {"fallback": "error", **options}
    spin = native_spin_settings(options.pop("spinning", "both"))
    if "spin_us" in options:  # the caller fixed the spin: that one setting
        spin = {f"spin_us={options['spin_us']}": options.pop("spin_us")}
    names = list(spin)
    with _timed(stages, "lower"):
        fn = factory(graph, threads=subject.threads, spin_us=spin[names[0]], **options)
    measure, artifact = None, "none (not serializable)"
    if callable(getattr(fn, "save", None)):
        artifact = "native artifact (fn.save)"

        def measure() -> int:
            path = os.path.join(subject.artifact_path("graphopt-native"), f"model_{id(graph)}")
            fn.save(path)
            return os.path.getsize(path) if os.path.isfile(path) else folder_bytes(path)

    first_call = lambda: fn(*subject.args, **subject.kwargs)  # noqa: E731

    def more() -> dict[str, Callable[[], Any]]:
        calls = {names[0]: first_call}
        for name in names[1:]:
            other = factory(graph, threads=subject.threads, spin_us=spin[name], **options)
            calls[name] = lambda other=other: other(*subject.args, **subject.kwargs)
        return calls

    return Prepared(first_call, stages, artifact=artifact, keepalive=fn,
                    measure_artifact=measure, settings=more if len(names) > 1 else None)


# The native pool's spinning settings, as onnxruntime's (onnxruntime_backends.SPIN_SETTINGS):
# the runtime default (idle helpers spin 50 us, then sleep) and spinning about as long as
# onnxruntime's pool does after a run (~50 ms of CPU measured on the 2-core Zen 4).
NATIVE_SPIN_SETTINGS = {"default spin": None, "spinning": 50_000}


def native_spin_settings(wanted: Any) -> dict[str, int | None]:
    """The native spinning settings to time, from option ``spinning`` ("both", "on", "off")."""
    return choose_spin_settings("graphopt-native", wanted, NATIVE_SPIN_SETTINGS,
                                on="spinning", off="default spin")


def choose_spin_settings(backend: str, wanted: Any, settings: dict[str, Any], on: str,
                         off: str) -> dict[str, Any]:
    """The settings a backend's ``spinning`` option asks to time: "both" (each, the faster
    reported), "on" (only ``settings[on]``) or "off" (only ``settings[off]``)."""
    from graphopt.errors import BackendOptionError

    choice = str(wanted).strip().lower()
    if choice == "both":
        return dict(settings)
    if choice in ("on", "1", "true", on):
        return {on: settings[on]}
    if choice in ("off", "0", "false", off):
        return {off: settings[off]}
    raise BackendOptionError(f"{backend} option spinning={wanted!r}: use 'both' (time each, "
                             "report the faster), 'on' or 'off'")


@bench_backend("graphopt-native", lower=lower_graphopt_native)
def prepare_graphopt_native(subject: Subject, options: dict) -> Prepared:
    """graphopt pipeline, compiled by graphopt's native C++ runtime."""
    _native_factory()  # fail fast, before tracing and optimizing
    graph, stages = subject.optimized()
    return lower_graphopt_native(graph, subject, options, stages)


# ---------------------------------------------------------------------------------- torch
def lower_graphopt_torch(graph: Graph, subject: Subject, options: dict,
                         stages: dict[str, float] | None = None) -> Prepared:
    """graphopt.to_torch(graph): a regular nn.Module, called with torch.no_grad."""
    import graphopt

    stages = StageTimes(stages)
    with _timed(stages, "lower"):
        module = graphopt.to_torch(graph)
    prepared = Prepared(lambda: module(*subject.args, **subject.kwargs), stages,
                        artifact="torch.save(module)", keepalive=module)

    def measure() -> int:
        try:
            return _saved_bytes(module)
        except Exception:
            prepared.artifact = "torch.save(state_dict) (the module does not pickle)"
            return _saved_bytes(module.state_dict())

    prepared.measure_artifact = measure
    return prepared


@bench_backend("graphopt-torch", lower=lower_graphopt_torch)
def prepare_graphopt_torch(subject: Subject, options: dict) -> Prepared:
    """graphopt pipeline, lowered back to a torch.nn.Module (graphopt.to_torch)."""
    graph, stages = subject.optimized()
    return lower_graphopt_torch(graph, subject, options, stages)


def _saved_bytes(obj: Any) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes


def _first_line(exc: BaseException) -> str:
    from graphopt.bench.report import error_summary

    return error_summary(exc, with_type=False)


# The onnxruntime backends live in their own module (sessions, spinning settings, export); it
# registers them on import and its public names are re-exported here.
from graphopt.bench.onnxruntime_backends import (  # noqa: E402
    SPIN_CONFIG,
    SPIN_SETTINGS,
    lower_graphopt_onnxruntime,
    ort_sessions,
    prepare_graphopt_onnxruntime,
    prepare_onnxruntime,
    spin_settings,
)

__all__ = ["BENCH_BACKENDS", "DEFAULT_BACKENDS", "BackendUnavailable", "BenchBackend",
           "Prepared", "Subject", "SPIN_CONFIG", "SPIN_SETTINGS", "bench_backend",
           "lower_graphopt_onnxruntime", "ort_sessions", "prepare_graphopt_onnxruntime",
           "prepare_onnxruntime", "spin_settings"]
