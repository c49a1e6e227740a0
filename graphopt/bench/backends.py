"""The benchmark's backends: how each one turns the model into a zero-argument call.

A backend is registered with ``@bench_backend(name)`` as a function
``prepare(subject, options) -> Prepared``. ``subject`` holds the model, its example inputs, the
pipeline and thread count, and builds the traced and optimized graphs once for all graphopt
backends (their times count in every graphopt backend's setup, as if each ran alone). A backend
that cannot run here raises :class:`BackendUnavailable`; any other exception is reported as an
error of that backend. Backends built on a graphopt graph also provide ``lower(graph, subject,
options)`` so that the per-pass attribution can time pipeline prefixes.

Both ONNX Runtime backends run their session through the same call (torch -> numpy feeds,
``session.run``), with the same ``SessionOptions`` (``intra_op_num_threads=threads``, one
inter-op thread, ``ORT_ENABLE_ALL``): the difference between them is the ONNX graph alone.
Each is timed with its thread pool spinning (onnxruntime's default) and not spinning, and
reported at the faster (option ``spinning``: "both", the default, "on" or "off").
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.utils._pytree as pytree

from graphopt.ir.graph import Graph


class BackendUnavailable(Exception):
    """This backend cannot run in this environment (the message says why)."""


@dataclass
class Prepared:
    """A backend ready to time.

    Attributes:
        call: runs the model once on the example inputs, returns its outputs.
        stages: setup seconds by stage (trace, optimize, export, lower, session...).
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
    stages: dict[str, float] = field(default_factory=dict)
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
        self._optimized: Graph | None = None
        self._optimize_s = 0.0
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

            start = time.perf_counter()
            try:
                self._graph = graphopt.trace(self.module, self.args, self.kwargs or None)
            except Exception as exc:
                self._errors["trace"] = exc
                raise
            self._graph_s = time.perf_counter() - start
        else:
            self.reused_s += self._graph_s
        return self._graph, {"trace": self._graph_s}

    def optimized(self) -> tuple[Graph, dict[str, float]]:
        """The graph after the pipeline and ``{"trace": s, "optimize": s}``."""
        if "optimize" in self._errors:
            raise self._errors["optimize"]
        graph, stages = self.graph()
        if self._optimized is None:
            optimize = _optimize_fn()
            start = time.perf_counter()
            try:
                self._optimized, self.pass_report = optimize(graph, self.pipeline, report=True)
            except Exception as exc:
                self._errors["optimize"] = exc
                raise
            self._optimize_s = time.perf_counter() - start
        else:
            self.reused_s += self._optimize_s
        return self._optimized, {**stages, "optimize": self._optimize_s}

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


def _timed(stages: dict[str, float], key: str):
    class _Timer:
        def __enter__(self):
            self.start = time.perf_counter()

        def __exit__(self, *exc):
            stages[key] = stages.get(key, 0.0) + time.perf_counter() - self.start

    return _Timer()


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


# --------------------------------------------------------------------------- onnxruntime
def _import_ort():
    try:
        import onnxruntime as ort
        import torch.onnx  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime is not installed ({exc})") from exc
    return ort


# onnxruntime's intra-op spinning: its default (on) and off; which is faster depends on the
# model (many short ops: spinning; few long ones: either) and on what else runs.
SPIN_CONFIG = "session.intra_op.allow_spinning"
SPIN_SETTINGS = {"spinning": "1", "no spinning": "0"}


def spin_settings(options: dict) -> dict[str, str]:
    """The spinning settings to time: {name: allow_spinning value}, from option ``spinning``."""
    from graphopt.errors import BackendOptionError

    wanted = str(options.get("spinning", "both")).strip().lower()
    if wanted == "both":
        return dict(SPIN_SETTINGS)
    if wanted in ("on", "1", "true", "spinning"):
        return {"spinning": "1"}
    if wanted in ("off", "0", "false", "no spinning"):
        return {"no spinning": "0"}
    raise BackendOptionError(f"onnxruntime option spinning={options['spinning']!r}: use "
                             "'both' (time each, report the faster), 'on' or 'off'")


def _ort_session(path_or_bytes: Any, threads: int, options: dict, spinning: str = "1"):
    ort = _import_ort()
    from graphopt.backends.onnxruntime_backend import session_options

    so_options = {k: v for k, v in options.items()
                  if k not in ("exporter", "opset", "spinning")}
    so = session_options(threads, **so_options)
    so.add_session_config_entry(SPIN_CONFIG, spinning)
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def ort_sessions(path_or_bytes: Any, threads: int, spinning: str = "both",
                 **options: Any) -> dict[str, Any]:
    """One onnxruntime session per spinning setting ({"spinning": s, "no spinning": s} for
    "both"), for scripts that time onnxruntime at its best (see ``timing.time_at_best``)."""
    return {name: _ort_session(path_or_bytes, threads, options, value)
            for name, value in spin_settings({"spinning": spinning}).items()}


def _spin_variants(first: Any, make_session: Callable[[str], Any], options: dict,
                   make_call: Callable[[Any], Callable[[], Any]]):
    """The first session's setting and a factory of the other settings' calls (or None)."""
    wanted = spin_settings(options)
    names = list(wanted)
    if len(names) < 2:
        return None

    def settings() -> dict[str, Callable[[], Any]]:
        calls = {names[0]: make_call(first)}
        for name in names[1:]:
            calls[name] = make_call(make_session(wanted[name]))
        return calls

    return settings


def _ort_call(session, names: list[str], tensors: list[torch.Tensor]) -> Callable[[], Any]:
    """The ORT call both ONNX Runtime backends use: numpy views of torch inputs in, arrays out."""
    pairs = list(zip(names, tensors))

    def call():
        return session.run(None, {name: t.numpy() for name, t in pairs})

    return call


def _export_onnx(module, subject: Subject, path: str, exporter: str, opset: int | None):
    import logging
    import warnings

    names = [f"input_{i}" for i in range(len(subject.flat_inputs()))]
    # The dynamo exporter logs missing torchvision ops and onnxscript's constant-folding misses.
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "legacy":
                torch.onnx.export(module, subject.args, path, kwargs=subject.kwargs or None,
                                  input_names=names, dynamo=False, opset_version=opset or 17)
            else:
                torch.onnx.export(module, subject.args, path, kwargs=subject.kwargs or None,
                                  dynamo=True, verbose=False, opset_version=opset)
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
    return names


@bench_backend("onnxruntime")
def prepare_onnxruntime(subject: Subject, options: dict) -> Prepared:
    """onnxruntime on torch.onnx.export's model (dynamo exporter, else the TorchScript one)."""
    stages: dict[str, float] = {}
    notes: list[str] = []
    tensors = subject.flat_inputs()
    _import_ort()  # one-time import costs are not the backend's setup
    if subject.onnx_path is not None:
        path, folder = subject.onnx_path, os.path.dirname(subject.onnx_path)
        notes.append("the original ONNX file")
        names = None
        artifact_bytes = os.path.getsize(path)
    else:
        module = subject.require_module("onnxruntime")
        folder = subject.artifact_path("onnxruntime")
        path = os.path.join(folder, "model.onnx")
        wanted = options.get("exporter", "auto")
        order = ["dynamo", "legacy"] if wanted == "auto" else [wanted]
        names, errors = None, []
        for exporter in order:
            try:
                with _timed(stages, "export"):
                    names = _export_onnx(module, subject, path, exporter, options.get("opset"))
                notes.append(f"torch.onnx.export with the {exporter} exporter")
                break
            except Exception as exc:
                errors.append(f"{exporter}: {type(exc).__name__}: {_first_line(exc)}")
        if names is None:
            raise RuntimeError("torch.onnx.export failed: " + "; ".join(errors))
        if errors:
            notes.append("fell back after " + "; ".join(errors))
        artifact_bytes = folder_bytes(folder)
    spins = spin_settings(options)
    first_spin = next(iter(spins.values()))
    with _timed(stages, "session"):
        session = _ort_session(path, subject.threads, options, first_spin)
    inputs = [i.name for i in session.get_inputs()]
    if names is not None and all(n in names for n in inputs):
        feeds = [tensors[names.index(n)] for n in inputs]  # unused inputs were dropped
    elif len(inputs) == len(tensors):
        feeds = tensors
    else:
        raise RuntimeError(f"the exported model takes {len(inputs)} inputs, the model "
                           f"{len(tensors)}")
    sessions = [session]

    def make_session(spinning: str):
        sessions.append(_ort_session(path, subject.threads, options, spinning))
        return sessions[-1]

    settings = _spin_variants(session, make_session, options,
                              lambda sess: _ort_call(sess, inputs, feeds))
    return Prepared(_ort_call(session, inputs, feeds), stages, artifact_bytes,
                    "ONNX file (+ external data)", notes, keepalive=sessions,
                    settings=settings)


def lower_graphopt_onnxruntime(graph: Graph, subject: Subject, options: dict,
                               stages: dict[str, float] | None = None) -> Prepared:
    """graphopt.compile(graph, "onnxruntime"), run through the shared ORT call."""
    import onnx

    import graphopt
    from graphopt.interpreter import flatten_inputs

    stages = dict(stages or {})
    _import_ort()
    options = dict(options)
    spins = spin_settings(options)
    options.pop("spinning", None)
    config = {SPIN_CONFIG: next(iter(spins.values())), **options.pop("session_config", {})}
    with _timed(stages, "lower+session"):
        module = graphopt.compile(graph, backend="onnxruntime", threads=subject.threads,
                                  session_config=config, **options)
    tensors = [t.contiguous() for t in flatten_inputs(graph, subject.args, subject.kwargs)]
    session = getattr(module, "session", None)
    settings = None
    if session is None:
        call = lambda: module(*subject.args, **subject.kwargs)  # noqa: E731
    else:
        names = list(module.input_names)
        call = _ort_call(session, names, tensors)
        spin_options = {"spinning": "both"} if len(spins) > 1 else {}
        settings = _spin_variants(
            session, lambda spinning: module.new_session({SPIN_CONFIG: spinning}),
            spin_options, lambda sess: _ort_call(sess, names, tensors))
    proto = getattr(module, "onnx_model", None)
    tmp = getattr(module, "_tmpdir", None)

    def measure() -> int | None:
        if tmp is not None:  # large models: already on disk with external data
            return folder_bytes(tmp.name)
        if proto is None:
            return None
        path = os.path.join(subject.artifact_path("graphopt-onnxruntime"),
                            f"model_{id(graph)}.onnx")
        onnx.save(proto, path)
        size = os.path.getsize(path)
        os.remove(path)
        return size

    return Prepared(call, stages, artifact="ONNX file", keepalive=module,
                    measure_artifact=measure, settings=settings)


@bench_backend("graphopt-onnxruntime", lower=lower_graphopt_onnxruntime)
def prepare_graphopt_onnxruntime(subject: Subject, options: dict) -> Prepared:
    """graphopt pipeline, lowered to ONNX, run by onnxruntime."""
    graph, stages = subject.optimized()
    return lower_graphopt_onnxruntime(graph, subject, options, stages)


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
    stages = dict(stages or {})
    with _timed(stages, "lower"):
        fn = factory(graph, threads=subject.threads, **options)
    measure, artifact = None, "none (not serializable)"
    if callable(getattr(fn, "save", None)):
        artifact = "native artifact (fn.save)"

        def measure() -> int:
            path = os.path.join(subject.artifact_path("graphopt-native"), f"model_{id(graph)}")
            fn.save(path)
            return os.path.getsize(path) if os.path.isfile(path) else folder_bytes(path)

    return Prepared(lambda: fn(*subject.args, **subject.kwargs), stages, artifact=artifact,
                    keepalive=fn, measure_artifact=measure)


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

    stages = dict(stages or {})
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
