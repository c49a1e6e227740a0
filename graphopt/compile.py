"""``graphopt.compile``: one switch over the execution backends.

A backend is a factory ``(graph, *, threads, **options) -> callable``; the callable takes the
model's inputs (torch tensors or numpy arrays, in the pytree structure ``graphopt.run`` accepts)
and returns what ``graphopt.run`` returns. Backends register under a name, either directly::

    @register_backend("native")
    def compile_native(graph, *, threads=None, **options): ...

or lazily as ``"module:function"`` in :data:`BACKENDS`, so that importing graphopt does not
import onnxruntime.

:class:`Target` (backend, ISA, threads) is where a graph will run, in one validated value:
``compile``, ``graphopt.benchmark`` and ``graphopt.quantize`` take it as ``target=``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from graphopt.config import Config
from graphopt.errors import BackendOptionError, GraphoptError, UnknownBackendError, entry_point
from graphopt.ir.graph import Graph
from graphopt.stagereport import reports_stage

BackendFactory = Callable[..., Callable[..., Any]]

BACKENDS: dict[str, BackendFactory | str] = {
    "onnxruntime": "graphopt.backends.onnxruntime_backend:compile_onnxruntime",
    "native": "graphopt.backends.native_backend:compile_native",
    "interpreter": "graphopt.compile:_compile_interpreter",
}

# Backend name -> the key of its lowerings in ``OpDef.lowerings`` (graphopt/native/lower,
# graphopt/onnx/lower_*): what a backend can run is the ops with a lowering under that key.
# A backend not listed (the interpreter: every op's reference implementation; one registered
# by a user) is not checked ahead of compile (e.g. by ``graphopt.quantize(target=...)``).
LOWERING_KEYS: dict[str, str] = {"onnxruntime": "onnx", "native": "native"}


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


# The kernel families of the native runtime, lowest first ("portable": plain C++). The runtime
# picks one per process at first use (csrc/cpu.h); GRAPHOPT_DISABLE_AVX512=1 / _AVX2=1 lower it.
ISAS = ("auto", "portable", "avx2", "avx512")


@dataclass(frozen=True)
class Target(Config):
    """Where a graph will run: backend, instruction set and threads, in one validated value.

    ``graphopt.compile``, ``graphopt.benchmark`` and ``graphopt.quantize`` take it as
    ``target=`` in place of loose ``backend=`` / ``threads=`` arguments.

    Attributes:
        backend: a name in :data:`BACKENDS` (``"onnxruntime"``, ``"native"``, ...).
        isa: ``"auto"`` (whatever this machine runs) or one of :data:`ISAS`; anything but
            ``"auto"`` is checked against this process's native kernels at compile time.
        threads: intra-op threads (None: ``torch.get_num_threads()`` when used).

    Example::

        target = graphopt.Target("native", threads=2)
        fn = graphopt.compile(graph, target=target)
    """

    backend: str = "onnxruntime"
    isa: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str):
            raise UnknownBackendError(f"backend must be a name (str), got {self.backend!r}")
        if self.backend not in BACKENDS:
            raise UnknownBackendError(f"unknown backend '{self.backend}'; known backends: "
                                      f"{', '.join(sorted(BACKENDS))}")
        self._check_choice("isa", ISAS)
        if self.threads is not None:
            from graphopt.limits import check_threads

            check_threads(self.threads, f"Target(threads={self.threads!r})")

    _error = BackendOptionError
    _entry = "Target"

    @classmethod
    def host(cls, backend: str = "native", threads: int | None = None) -> "Target":
        """This machine: the ISA its native kernels use, ``threads`` or torch's thread count."""
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        return cls(backend, host_isa(), threads)

    @classmethod
    def from_args(cls, target: "Target | None" = None, *, backend: str | None = None,
                  threads: int | None = None, isa: str | None = None,
                  default_backend: str = "onnxruntime") -> "Target":
        """``target``, or one built from loose arguments; both at once must agree.

        Raises:
            BackendOptionError: ``target`` is not a Target, or a loose argument contradicts it.
        """
        if target is None:
            return cls(default_backend if backend is None else backend,
                       "auto" if isa is None else isa, threads)
        if not isinstance(target, Target):
            raise BackendOptionError(f"target must be a graphopt.Target, got "
                                     f"{type(target).__name__}")
        loose = {"backend": backend, "threads": threads, "isa": isa}
        clashes = [f"{k}={v!r}" for k, v in loose.items()
                   if v is not None and v != getattr(target, k)]
        if clashes:
            raise BackendOptionError(f"{', '.join(clashes)} contradicts target={target}; pass "
                                     "one or the other")
        return target

    def check_host(self) -> None:
        """Raise ``BackendOptionError`` unless this process's native kernels are ``isa``."""
        if self.isa == "auto":
            return
        have = host_isa()
        if have != self.isa:
            hint = ("this CPU or build lacks it" if ISAS.index(self.isa) > ISAS.index(have) else
                    "the runtime picks the best one at start; run with "
                    + ("GRAPHOPT_DISABLE_AVX2=1" if self.isa == "portable"
                       else "GRAPHOPT_DISABLE_AVX512=1") + " to get it")
            raise BackendOptionError(f"target isa '{self.isa}' but this process runs '{have}' "
                                     f"kernels ({hint})")


def host_isa() -> str:
    """The ISA the native kernels of this process use ("portable" without the extension)."""
    from graphopt._extension import load_or_none

    ext = load_or_none()
    if ext is None:
        return "portable"
    kernel = str(ext.cpu_features().get("sgemm_kernel", ""))
    return next((isa for isa in ("avx512", "avx2") if kernel.startswith(isa)), "portable")


def _stage_name(graph: Any = None, backend: str = "onnxruntime", *args: Any,
                target: Target | None = None, **options: Any) -> str:
    return f"compile {target.backend if target is not None else backend}"


@reports_stage(_stage_name)
@entry_point("graphopt.compile")
def compile(graph: Graph, backend: str = "onnxruntime", threads: int | None = None,
            *, target: Target | None = None, **options: Any) -> Callable[..., Any]:
    """Compile ``graph`` for ``backend``; returns a callable with ``graphopt.run``'s contract.

    Args:
        graph: the graph (it is not modified).
        backend: a name in :data:`BACKENDS` ("onnxruntime", "interpreter", ...).
        threads: intra-op threads (default: ``torch.get_num_threads()``).
        target: a :class:`Target` (backend, isa, threads) in place of ``backend`` / ``threads``
            (which may then only repeat it).
        **options: backend options; for onnxruntime any ``onnxruntime.SessionOptions``
            attribute (e.g. ``graph_optimization_level="basic"``) plus ``opset``,
            ``contrib_ops`` and ``providers``.
        report: also return a :class:`~graphopt.stagereport.StageReport` (time, peak RSS):
            ``(fn, report)``.

    Raises:
        UnknownBackendError: ``backend`` is not registered.
        BackendOptionError: ``target`` contradicts ``backend`` / ``threads``, or its ``isa`` is
            not the one this process's native kernels use.
        LoweringError: the backend cannot express some node (all such nodes are listed).
        StaleConstantError: weights the graph borrowed from the traced model were changed in
            place since the trace.

    Example::

        fn = graphopt.compile(graphopt.trace(model, (x,)), backend="onnxruntime", threads=2)
        y = fn(x)  # same structure as model(x)
    """
    if not isinstance(graph, Graph):
        raise GraphoptError(f"graphopt.compile takes a graphopt Graph, got {type(graph).__name__}"
                            " (trace a torch model with graphopt.trace or import ONNX with "
                            "graphopt.from_onnx first)")
    if target is None:
        if threads is not None:
            from graphopt.limits import check_threads

            check_threads(threads, f"graphopt.compile(threads={threads!r})")
        target = Target(backend, "auto", threads)
    else:  # the defaults of the loose arguments do not count as contradicting the target
        target = Target.from_args(target, backend=None if backend == "onnxruntime" else backend,
                                  threads=threads)
    target.check_host()
    graph.check_borrowed_constants()
    return get_backend(target.backend)(graph, threads=target.threads, **options)


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
