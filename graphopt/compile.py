"""``graphopt.compile``: one switch over the execution backends.

A backend is a factory ``(graph, *, threads, **options) -> callable``; the callable takes the
model's inputs (torch tensors or numpy arrays, in the pytree structure ``graphopt.run`` accepts)
and returns what ``graphopt.run`` returns. Backends register under a name, either directly::

    @register_backend("native")
    def compile_native(graph, *, threads=None, **options): ...

or lazily as ``"module:function"`` in :data:`BACKENDS`, so that importing graphopt does not
import onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from graphopt.errors import BackendOptionError, GraphoptError, UnknownBackendError, entry_point
from graphopt.ir.graph import Graph

BackendFactory = Callable[..., Callable[..., Any]]

BACKENDS: dict[str, BackendFactory | str] = {
    "onnxruntime": "graphopt.backends.onnxruntime_backend:compile_onnxruntime",
    "native": "graphopt.backends.native_backend:compile_native",
    "interpreter": "graphopt.compile:_compile_interpreter",
}


def register_backend(name: str):
    """Decorator registering ``fn(graph, *, threads=None, **options)`` as backend ``name``."""

    def decorate(fn: BackendFactory) -> BackendFactory:
        BACKENDS[name] = fn
        return fn

    return decorate


def get_backend(name: str) -> BackendFactory:
    """The factory of backend ``name``.

    Raises:
        UnknownBackendError: no such backend; the message lists the known ones.
    """
    entry = BACKENDS.get(name)
    if entry is None:
        known = ", ".join(sorted(BACKENDS))
        raise UnknownBackendError(f"unknown backend '{name}'; known backends: {known}")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        BACKENDS[name] = entry
    return entry


@entry_point("graphopt.compile")
def compile(graph: Graph, backend: str = "onnxruntime", threads: int | None = None,
            **options: Any) -> Callable[..., Any]:
    """Compile ``graph`` for ``backend``; returns a callable with ``graphopt.run``'s contract.

    Args:
        graph: the graph (it is not modified).
        backend: a name in :data:`BACKENDS` ("onnxruntime", "interpreter", ...).
        threads: intra-op threads (default: ``torch.get_num_threads()``).
        **options: backend options; for onnxruntime any ``onnxruntime.SessionOptions``
            attribute (e.g. ``graph_optimization_level="basic"``) plus ``opset``,
            ``contrib_ops`` and ``providers``.

    Raises:
        UnknownBackendError: ``backend`` is not registered.
        LoweringError: the backend cannot express some node (all such nodes are listed).

    Example::

        fn = graphopt.compile(graphopt.trace(model, (x,)), backend="onnxruntime", threads=2)
        y = fn(x)  # same structure as model(x)
    """
    if not isinstance(graph, Graph):
        raise GraphoptError(f"graphopt.compile takes a graphopt Graph, got {type(graph).__name__}"
                            " (trace a torch model with graphopt.trace or import ONNX with "
                            "graphopt.from_onnx first)")
    if not isinstance(backend, str):
        raise UnknownBackendError(f"backend must be a name (str), got {backend!r}")
    if threads is not None:
        from graphopt.limits import check_threads

        check_threads(threads, f"graphopt.compile(threads={threads!r})")
    return get_backend(backend)(graph, threads=threads, **options)


def _compile_interpreter(graph: Graph, *, threads: int | None = None, **options: Any):
    """The reference interpreter as a backend (threads are torch's intra-op threads)."""
    from graphopt.interpreter import run

    if options:
        raise BackendOptionError(f"the interpreter backend takes no options, got {sorted(options)}")

    def call(*args, **kwargs):
        if threads is None:
            return run(graph, *args, **kwargs)
        import torch

        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return run(graph, *args, **kwargs)
        finally:
            torch.set_num_threads(saved)

    return call
