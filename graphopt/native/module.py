"""The compiled callable of ``graphopt.compile(graph, backend="native")``."""

from __future__ import annotations

import numbers
import operator
import os
import sys
import threading
import warnings
from collections import OrderedDict
from typing import Any

import torch

from graphopt.errors import GraphoptError, InputMismatchError, LoweringError
from graphopt.interpreter import bind_symbols, flatten_inputs, unflatten_outputs
from graphopt.ir.graph import Graph
from graphopt.ir.types import dims_equal
from graphopt.limits import check_threads
from graphopt.native.builder import (
    BACKEND,
    NativeFallbackWarning,
    NativeUnsupportedError,
    PlanBuilder,
    check_fallback,
    check_precision,
)
from graphopt.native.plan import CPU, Device, ExecutionPlan

# Dynamic-shape graphs keep one plan per distinct input shape; beyond this many the least
# recently used goes.
MAX_CACHED_PLANS = 16
_STRIDED = torch.strided


def resolve_threads(threads: Any, what: str) -> int:
    """``threads`` (None or 0: torch's default) as a checked thread count (limits.check_threads:
    an integer in [1, thread budget]); anything else raises a GraphoptError naming ``what``."""
    if threads is None or (isinstance(threads, int) and not isinstance(threads, bool)
                           and threads == 0):
        threads = torch.get_num_threads()
    if not isinstance(threads, bool):
        try:
            threads = operator.index(threads)  # numpy integers too; floats stay and fail
        except TypeError:
            pass
    return check_threads(threads, what)


def check_declared_types(graph: Graph) -> None:
    """Every node's stored output types are what its op infers from its inputs' types.

    A kernel fills the buffer its lowering computes from the *input* shapes, while the buffer is
    sized from the *declared* output type: a graph whose declared types disagree (hand-built
    with ``output_types``, or edited after verification) would hand back uninitialised memory.
    Only shape and dtype matter here (quantization annotations do not size buffers). A node
    whose inference itself fails is left to its lowering, which names what is wrong.

    Raises:
        LoweringError: every node whose declared output types differ, with both types.
    """
    failures = []
    for node in graph.nodes:
        types = [None if v is None else v.type for v in node.inputs]
        try:
            inferred = node.opdef.infer_types(types, node.attrs)
        except Exception:  # noqa: BLE001  (the lowering reports a malformed node by name)
            continue
        if len(inferred) != len(node.outputs):
            failures.append((node.op, node.describe(), f"has {len(node.outputs)} output(s), "
                             f"the op infers {len(inferred)}"))
            continue
        for value, want in zip(node.outputs, inferred):
            have = value.type
            if (have.dtype != want.dtype or have.rank != want.rank
                    or not all(dims_equal(a, b) for a, b in zip(have.shape, want.shape))):
                failures.append((node.op, node.describe(),
                                 f"malformed node: %{value.name} is declared {have}, but the op "
                                 f"infers {want} from its inputs"))
    if failures:
        raise LoweringError(BACKEND, failures)


def _caller_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel of the first frame outside the graphopt package, so a
    warning points at the user's ``compile`` or call line."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


MAX_SPIN_US = 1_000_000  # csrc/rt_threadpool.h kMaxSpinUs


def check_spin_us(spin_us) -> int | None:
    """None, or a whole number of microseconds in [0, MAX_SPIN_US]."""
    if spin_us is None:
        return None
    if isinstance(spin_us, bool) or not isinstance(spin_us, numbers.Integral) \
            or not 0 <= int(spin_us) <= MAX_SPIN_US:
        raise GraphoptError(f"spin_us must be None or an integer number of microseconds in "
                            f"[0, {MAX_SPIN_US}], got {spin_us!r}")
    return int(spin_us)


class NativeModule:
    """A graph compiled for graphopt's native C++ runtime; call it like the model.

    Static-shape graphs are planned once, here. Graphs with symbolic dims are planned on the
    first call with each distinct set of input shapes (plans are cached, at most
    ``MAX_CACHED_PLANS``, least recently used dropped first); a node the runtime cannot run is
    then reported at that first call. A module may be called from several threads at once: the
    plan cache is locked, and each plan serialises its own runs (they share its arena).

    Attributes:
        graph: the compiled graph (not modified).
        threads: OpenMP threads of the kernels.
        fallback: "reference" (default): nodes without a native kernel run through their
            reference implementation (splits the plan into native segments around them), with
            one NativeFallbackWarning naming their ops; "error": such nodes raise
            NativeUnsupportedError (None is accepted as "error").
        sparse: "auto" (linears with a CSR-recorded weight use the sparse kernel where the
            cost model, or a cached measurement, says it wins), "measure" (time each first),
            "never" or "always" (see native/lower/sparse.py).
        layout: convolution activations in the channel-blocked layout: "auto" (where the
            runtime has AVX-512 blocked kernels), "blocked" or "nchw" (native/lower/blocked.py).
            A plan-time choice: saved artifacts plan again with "auto".
        precision: "fp32" (default) or "bf16": linear layers and matmuls by a constant weight
            round both operands to bfloat16 and sum the products in fp32, on AMX tiles where the
            CPU has them (graphopt.native.cpu_features()["bf16_gemm_kernel"] says which);
            everything else (norms, softmax, attention, residual adds) stays fp32.
        codebook: "auto" (default), "decode" or "lookup": codebook-shared weights
            (``codebook_decode``) decoded to float32 when the plan is built, or read by linear
            layers through the codebook inside the product (a quarter of the weight memory;
            faster for weights beyond the caches); "auto" takes the lookup for weights of
            8 MiB or more at up to 16 rows (native/lower/codebook.py).
        spin_us: microseconds the runtime's idle helper threads spin after each parallel loop
            before they sleep (None: GRAPHOPT_NATIVE_SPIN_US, else 50; at most 1,000,000). Long
            spins keep a helper ready between calls that come in quick succession, as
            onnxruntime's default spinning does, at the price of a busy core between them.
    """

    def __init__(self, graph: Graph, threads: int | None = None,
                 fallback: str | None = "reference", device: Device = CPU, sparse: str = "auto",
                 layout: str = "auto", precision: str = "fp32", codebook: str = "auto",
                 spin_us: int | None = None):
        from graphopt.native.lower.blocked import LAYOUTS
        from graphopt.native.lower.codebook import CODEBOOK_MODES
        from graphopt.native.lower.sparse import SPARSE_MODES

        fallback = check_fallback(fallback)
        if sparse not in SPARSE_MODES:
            raise GraphoptError(f"sparse must be one of {SPARSE_MODES}, got {sparse!r}")
        if layout not in LAYOUTS:
            raise GraphoptError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if codebook not in CODEBOOK_MODES:
            raise GraphoptError(f"codebook must be one of {CODEBOOK_MODES}, got {codebook!r}")
        self.codebook = codebook
        self.spin_us = check_spin_us(spin_us)
        self.graph = graph
        self.threads = resolve_threads(threads, "NativeModule(threads=...)")
        check_declared_types(graph)
        self.fallback = fallback
        self.sparse = sparse
        self.layout = layout
        self.precision = check_precision(precision)
        self.device = device
        self._plans: OrderedDict[tuple, ExecutionPlan] = OrderedDict()
        self._plans_lock = threading.Lock()  # the cache and _last, across calling threads
        self._last: ExecutionPlan | None = None
        self._num_inputs = len(graph.inputs)
        self._warned_fallback: set[str] = set()  # ops already named in a warning
        if all(v.type.is_static for v in graph.inputs):
            shapes = [tuple(v.shape) for v in graph.inputs]
            with self._plans_lock:
                self._last = self._build(shapes, {})
        else:
            self._check_lowerings()

    # ------------------------------------------------------------------------------- plans
    def _build(self, shapes: list[tuple[int, ...]], bindings: dict) -> ExecutionPlan:
        """Plans these input shapes and caches the plan (call with ``_plans_lock`` held)."""
        self.graph.check_borrowed_constants()  # a new plan packs the weights again
        builder = PlanBuilder(self.graph, shapes, bindings, fallback=self.fallback,
                              threads=self.threads, sparse=self.sparse,
                              layout=self.layout, precision=self.precision,
                              codebook=self.codebook)
        plan = builder.build()
        self._warn_fallback(builder.fallback_ops)
        plan.device = self.device
        plan.spin_us = self.spin_us
        plan.compile()
        while len(self._plans) >= MAX_CACHED_PLANS:
            self._plans.popitem(last=False)
        self._plans[tuple(tuple(s) for s in shapes)] = plan
        return plan

    @property
    def num_cached_plans(self) -> int:
        return len(self._plans)

    def _check_lowerings(self) -> None:
        """Without static shapes, at least report ops that have no native lowering at all."""
        from graphopt.native import lower  # noqa: F401

        missing = [(n.op, n.describe(), f"no native kernel for op '{n.op}'")
                   for n in self.graph.nodes if "native" not in n.opdef.lowerings]
        if missing and self.fallback == "reference":
            self._warn_fallback([op for op, _, _ in missing])
        elif missing:
            raise NativeUnsupportedError(missing)

    def _warn_fallback(self, ops: list[str]) -> None:
        """One warning per op that newly runs through its reference implementation."""
        new = sorted(set(ops) - self._warned_fallback)
        if not new:
            return
        self._warned_fallback.update(new)
        warnings.warn(NativeFallbackWarning(
            f"native backend: no native kernel runs these nodes of op(s) {', '.join(new)}; "
            "they run through their reference implementation (torch, between native "
            "segments: slower). Pass fallback=\"error\" to fail instead; plan.fallback_nodes "
            "lists the nodes."), stacklevel=_caller_stacklevel())

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
        key = tuple(t.shape for t in tensors)
        plan = self._plans.get(key)  # one dict read: atomic under the GIL
        if plan is None:
            with self._plans_lock:
                plan = self._plans.get(key)  # another thread may have built it meanwhile
                if plan is None:
                    # bind_symbols checks dtypes and shapes against the graph's inputs
                    plan = self._build([tuple(t.shape) for t in tensors],
                                       bind_symbols(self.graph, tensors))
                self._last = plan
        else:
            if len(self._plans) > 1:  # least recently used first out: refresh this one
                with self._plans_lock:
                    if key in self._plans:
                        self._plans.move_to_end(key)
            self._last = plan
            for value, t, dtype in zip(self.graph.inputs, tensors, plan.input_torch_dtypes):
                if t.dtype != dtype:
                    raise InputMismatchError(
                        f"input %{value.name} expects dtype {value.dtype}, got {t.dtype}")
        for i, t in enumerate(tensors):
            if not t.is_cpu or t.layout is not _STRIDED:
                raise InputMismatchError(
                    f"input %{self.graph.inputs[i].name}: the native backend runs on dense CPU "
                    f"tensors, got a {t.layout} tensor on {t.device}")
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
