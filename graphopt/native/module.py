"""The compiled callable of ``graphopt.compile(graph, backend="native")``."""

from __future__ import annotations

from typing import Any

import torch

from graphopt.errors import InputMismatchError
from graphopt.interpreter import bind_symbols, flatten_inputs, unflatten_outputs
from graphopt.ir.graph import Graph
from graphopt.native.builder import NativeUnsupportedError, PlanBuilder
from graphopt.native.plan import CPU, Device, ExecutionPlan

# Dynamic-shape graphs keep one plan per distinct input shape; beyond this many the oldest goes.
MAX_CACHED_PLANS = 16


class NativeModule:
    """A graph compiled for graphopt's native C++ runtime; call it like the model.

    Static-shape graphs are planned once, here. Graphs with symbolic dims are planned on the
    first call with each distinct set of input shapes (plans are cached, at most
    ``MAX_CACHED_PLANS``); a node the runtime cannot run is then reported at that first call.

    Attributes:
        graph: the compiled graph (not modified).
        threads: OpenMP threads of the kernels.
        fallback: None, or "reference" to run nodes without a native kernel through their
            reference implementation (splits the plan into native segments around them).
        sparse: "auto" (linears with a CSR-recorded weight use the sparse kernel where the
            cost model says it wins), "never" or "always" (see native/lower/sparse.py).
    """

    def __init__(self, graph: Graph, threads: int | None = None, fallback: str | None = None,
                 device: Device = CPU, sparse: str = "auto"):
        self.graph = graph
        self.threads = int(threads or torch.get_num_threads())
        self.fallback = fallback
        self.sparse = sparse
        self.device = device
        self._plans: dict[tuple, ExecutionPlan] = {}
        self._last: ExecutionPlan | None = None
        self._num_inputs = len(graph.inputs)
        if all(v.type.is_static for v in graph.inputs):
            shapes = [tuple(v.shape) for v in graph.inputs]
            self._last = self._build(shapes, {})
        else:
            self._check_lowerings()

    # ------------------------------------------------------------------------------- plans
    def _build(self, shapes: list[tuple[int, ...]], bindings: dict) -> ExecutionPlan:
        builder = PlanBuilder(self.graph, shapes, bindings, fallback=self.fallback,
                              threads=self.threads, sparse=self.sparse)
        plan = builder.build()
        plan.device = self.device
        plan.compile()
        if len(self._plans) >= MAX_CACHED_PLANS:
            self._plans.pop(next(iter(self._plans)))
        self._plans[tuple(tuple(s) for s in shapes)] = plan
        return plan

    def _check_lowerings(self) -> None:
        """Without static shapes, at least report ops that have no native lowering at all."""
        from graphopt.native import lower  # noqa: F401

        if self.fallback == "reference":
            return
        missing = [(n.op, n.describe(), f"no native kernel for op '{n.op}'")
                   for n in self.graph.nodes if "native" not in n.opdef.lowerings]
        if missing:
            raise NativeUnsupportedError(missing)

    @property
    def plan(self) -> ExecutionPlan | None:
        """The plan of the static shapes (or of the latest call for dynamic-shape graphs)."""
        return self._last

    @property
    def peak_bytes(self) -> int | None:
        return None if self._last is None else self._last.peak_bytes

    def plan_for(self, *args: Any, **kwargs: Any) -> ExecutionPlan:
        """The plan used for these inputs (built if needed)."""
        return self._prepare(args, kwargs)[0]

    def _prepare(self, args, kwargs) -> tuple[ExecutionPlan, list[torch.Tensor]]:
        if not kwargs and len(args) == self._num_inputs and all(
                type(a) is torch.Tensor for a in args):
            tensors = list(args)  # what flatten_inputs returns for flat tensor arguments
        else:
            tensors = flatten_inputs(self.graph, args, kwargs)
        plan = self._plans.get(tuple(t.shape for t in tensors))
        if plan is None:
            bindings = bind_symbols(self.graph, tensors)
            plan = self._build([tuple(t.shape) for t in tensors], bindings)
        else:
            for value, t, dtype in zip(self.graph.inputs, tensors, plan.input_torch_dtypes):
                if t.dtype != dtype:
                    raise InputMismatchError(
                        f"input %{value.name} expects dtype {value.dtype}, got {t.dtype}")
        self._last = plan
        for i, t in enumerate(tensors):
            if t.device.type != "cpu":
                raise InputMismatchError(f"the native backend runs on CPU tensors, got {t.device}")
            if t.requires_grad or not t.is_contiguous():
                tensors[i] = t.detach().contiguous()
        return plan, tensors

    # -------------------------------------------------------------------------------- call
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        plan, tensors = self._prepare(args, kwargs)
        return unflatten_outputs(self.graph, plan.run(tensors))

    def save(self, path) -> None:
        """Write the compiled model to ``path`` (see graphopt/native/artifact.py);
        ``graphopt.native.load(path)`` plans it again."""
        from graphopt.native.artifact import save

        save(self, path)

    def profile(self, *args: Any, **kwargs: Any) -> list[tuple[str, str, float]]:
        """Runs once and returns (step name, kernel, seconds) per native step."""
        plan, tensors = self._prepare(args, kwargs)
        return plan.run(tensors, profile=True)[1]
