"""``torch.compile(model, backend="graphopt")``: graphopt as a TorchDynamo backend.

Dynamo hands a backend each FX subgraph it captured (between graph breaks) with example inputs;
the backend returns a callable with the subgraph's contract (tensors and ints in, a tuple of
tensors out). Here each subgraph is traced into graphopt's IR (``graphopt.trace`` of the FX
module), optimized (``pipeline``, default "default") and compiled for ``backend`` (default
native), once per distinct input signature: shapes and the values of integer inputs (Dynamo
passes symbolic sizes as ints when it marks a dimension dynamic), so a new batch size plans
again instead of guessing. Parameters, which Dynamo lifts into inputs, are fixed into the graph
as constants (copies, so weights are packed once, as in ``graphopt.compile``); when a
parameter changes (identity, or its in-place version counter), the compiled signatures are
dropped and compiled again. A subgraph graphopt cannot take (an op it has no lowering for, a
trace failure) runs the FX module itself, with one ``GraphoptFallbackWarning`` naming the
reason: results stay right, and the warning says what to report.

Registered under the name "graphopt" through the ``torch_dynamo_backends`` entry point
(pyproject.toml); options through ``torch.compile(..., options={"backend": "onnxruntime",
"pipeline": "fusions", "threads": 2})``. ``compiled_subgraphs()`` counts what was taken over.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, Callable

import torch

from graphopt.errors import GraphoptError

_STATS = {"compiled": 0, "fallback": 0}
_LOCK = threading.Lock()
OPTIONS = ("backend", "pipeline", "threads")


class GraphoptFallbackWarning(UserWarning):
    """A Dynamo subgraph graphopt could not compile runs as the FX module Dynamo captured."""


def compiled_subgraphs() -> dict[str, int]:
    """How many input signatures of Dynamo subgraphs were compiled by graphopt, and how many
    fell back to the FX module (since the process started)."""
    with _LOCK:
        return dict(_STATS)


class _Bound(torch.nn.Module):
    """The FX module with its integer inputs and its parameters fixed: only the activations
    remain inputs, and the weights become constants that backends pack once."""

    def __init__(self, gm: torch.fx.GraphModule, ints: dict[int, int],
                 params: dict[int, torch.Tensor], count: int):
        super().__init__()
        self.gm, self.ints, self.count = gm, ints, count
        self.slots = {i: f"p{i}" for i in params}
        for i, tensor in params.items():
            # A copy: the compiled graph owns its weights (the runtime packs a constant once,
            # by address; the live parameter may change in place).
            self.register_buffer(self.slots[i], tensor.detach().clone(), persistent=False)

    def forward(self, *tensors):
        it = iter(tensors)
        args = [self.ints[i] if i in self.ints else
                getattr(self, self.slots[i]) if i in self.slots else next(it)
                for i in range(self.count)]
        return self.gm(*args)


class _Compiled:
    """The callable handed back to Dynamo: one graphopt module per input signature."""

    def __init__(self, gm: torch.fx.GraphModule, options: dict[str, Any]):
        self.gm = gm
        self.backend = options.get("backend", "native")
        self.pipeline = options.get("pipeline", "default")
        self.threads = options.get("threads")
        self.cache: dict[tuple, Callable | None] = {}
        self.versions: tuple = ()

    def __call__(self, *args):
        # Dynamo lifts the module's parameters into inputs: they are copied into the compiled
        # graphs as constants; when one changes (identity or in-place version), every compiled
        # signature is dropped and compiled again from the new weights.
        versions = tuple((id(a), a._version) for a in args if isinstance(a, torch.nn.Parameter))
        if versions != self.versions:
            self.cache.clear()
            self.versions = versions
        key = tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else ("int", a)
                    for a in args)
        run = self.cache.get(key, False)
        if run is False:
            run = self.cache[key] = self._compile(args)
        if run is None:
            return self.gm(*args)
        out = run(*[a for a in args if isinstance(a, torch.Tensor)
                    and not isinstance(a, torch.nn.Parameter)])
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)

    def _compile(self, args) -> Callable | None:
        import graphopt

        ints = {i: int(a) for i, a in enumerate(args) if not isinstance(a, torch.Tensor)}
        params = {i: a for i, a in enumerate(args) if isinstance(a, torch.nn.Parameter)}
        tensors = tuple(a for i, a in enumerate(args)
                        if isinstance(a, torch.Tensor) and i not in params)
        try:
            graph = graphopt.trace(_Bound(self.gm, ints, params, len(args)), tensors)
            if self.pipeline not in (None, "none"):
                graph = graphopt.optimize(graph, self.pipeline)
            module = graphopt.compile(graph, backend=self.backend, threads=self.threads,
                                      **({"fallback": "error"} if self.backend == "native"
                                         else {}))
        except (GraphoptError, RuntimeError, TypeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(f"graphopt: a torch.compile subgraph runs as captured by Dynamo "
                          f"(not compiled): {type(exc).__name__}: {reason}",
                          GraphoptFallbackWarning, stacklevel=3)
            with _LOCK:
                _STATS["fallback"] += 1
            return None
        with _LOCK:
            _STATS["compiled"] += 1
        return module


def graphopt_backend(gm: torch.fx.GraphModule, example_inputs, **kwargs) -> Callable:
    """The Dynamo backend: ``torch.compile(model, backend="graphopt", options={...})``."""
    options = dict(kwargs.get("options") or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise GraphoptError(f"torch.compile(backend='graphopt'): unknown options {unknown}; "
                            f"known: {', '.join(OPTIONS)}")
    return _Compiled(gm, options)
