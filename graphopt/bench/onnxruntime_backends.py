"""The benchmark's onnxruntime backends: ``onnxruntime`` (torch.onnx.export's model) and
``graphopt-onnxruntime`` (graphopt's pipeline lowered to ONNX).

Both run their session through the same call (torch -> numpy feeds, ``session.run``) with the
same ``SessionOptions`` (``intra_op_num_threads=threads``, one inter-op thread,
``ORT_ENABLE_ALL``): the difference between them is the ONNX graph alone. Each is timed with its
thread pool spinning (onnxruntime's default) and not spinning, reported at the faster (option
``spinning``: "both", the default, "on" or "off"). Registered on import of
``graphopt.bench.backends``.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from graphopt.bench.backends import (
    BackendUnavailable,
    Prepared,
    StageTimes,
    Subject,
    _first_line,
    _timed,
    bench_backend,
    choose_spin_settings,
    folder_bytes,
)
from graphopt.ir.graph import Graph


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
    return choose_spin_settings("onnxruntime", options.get("spinning", "both"), SPIN_SETTINGS,
                                on="spinning", off="no spinning")


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
    stages = StageTimes()
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

    stages = StageTimes(stages)
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


