"""Graph -> execution plan: lowering, views, in-place reuse, liveness, memory plan.

The builder walks the graph once, in order, with static shapes (symbols bound to the call's
input shapes). For each node it:

* folds it at plan time when every input is a plan-time constant (the reference implementation
  computes it once; e.g. BERT's attention mask expansion of a constant);
* otherwise calls the op's native lowering (``register_lowering("native", op)``), which reads
  its inputs as :class:`TensorRef` views, asks for output buffers (possibly in place of an
  input that dies at this node) and emits kernel steps;
* view ops only make new views (no step): copies are planned where a consumer needs contiguous
  data that a view cannot provide.

Afterwards graph outputs get buffers of the call's own (the returned tensors), and the arena
buffers get offsets from :func:`graphopt.native.memory.plan_memory`.

A node without a native kernel becomes a reference step with ``fallback="reference"`` (the
default of ``graphopt.compile``: torch, run from Python, splitting the plan into native segments
around it); with ``fallback="error"`` it raises :class:`NativeUnsupportedError` listing all such
nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from graphopt.errors import GraphoptError, LoweringError
from graphopt.interpreter import node_attrs
from graphopt.ir.dtypes import DType, numpy_to_torch, torch_to_numpy
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.types import normalize_dim
from graphopt.limits import check_bytes, numel_of
from graphopt.native import refs as R
from graphopt.native.kernel_call import check_call
from graphopt.native.lowering_context import BACKEND, LoweringContext, Unsupported
from graphopt.native.memory import Lifetime, MemoryPlan, plan_memory
from graphopt.native.refs import Buffer, TensorRef
from graphopt.native.widen import has_half, lower_widened
from graphopt.ops.registry import PURE

__all__ = ["BACKEND", "FALLBACKS", "LoweringContext", "NativeFallbackWarning",
           "NativeUnsupportedError", "OutputSpec", "PlanBuilder", "Step", "Unsupported",
           "check_fallback", "PRECISIONS", "check_precision"]

INF = math.inf


class NativeUnsupportedError(LoweringError):
    """The native backend has no kernel for some nodes (each listed with op, node and reason).

    Raised with ``fallback="error"``; the default, ``fallback="reference"``, runs such nodes
    with their reference implementation instead (slower: it splits the plan) and warns once.
    """

    def __init__(self, failures: list[tuple[str, str, str]]):
        super().__init__(BACKEND, failures)
        self.args = (str(self) + "\nPass fallback=\"reference\" to run these nodes with their "
                     "reference implementation.",)


FALLBACKS = ("reference", "error")


# Compute precision of the GEMMs against constant weights (linear layers, matmuls by a weight):
# "fp32", or "bf16": operands rounded to bfloat16, products summed in fp32 (AMX tiles where the
# CPU has them, the fp32 kernels on the rounded values elsewhere). Everything else stays fp32.
PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise GraphoptError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def check_fallback(fallback: str | None) -> str:
    """``fallback`` as one of FALLBACKS (None, the pre-0.2 spelling of "error", is accepted)."""
    if fallback is None:
        return "error"
    if fallback not in FALLBACKS:
        raise GraphoptError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    return fallback


class NativeFallbackWarning(UserWarning):
    """Some nodes have no native kernel and run through their reference implementation."""


@dataclass
class Step:
    """One kernel call (``kernel`` is a C++ kernel name) or one reference node (``"reference"``).

    ``operands``: the kernel's tensor operands in its documented order (None: absent). For a
    reference step: the node's inputs; ``outputs`` are its output views.
    """

    kernel: str
    name: str
    operands: list[TensorRef | None]
    ints: list[int] = field(default_factory=list)
    floats: list[float] = field(default_factory=list)
    node: Node | None = None
    outputs: list[TensorRef] = field(default_factory=list)
    attrs: dict | None = None
    op: str | None = None  # the lowered node's op (error messages)


@dataclass
class OutputSpec:
    """Where graph output k lives: a view of call-output buffer ``buffer.index``."""

    ref: TensorRef


class PlanBuilder:
    """Builds one :class:`~graphopt.native.plan.ExecutionPlan` for one set of input shapes."""

    def __init__(self, graph: Graph, input_shapes: list[tuple[int, ...]],
                 bindings: dict | None = None, fallback: str | None = "error", threads: int = 1,
                 sparse: str = "auto", layout: str = "auto", precision: str = "fp32",
                 codebook: str = "auto"):
        from graphopt.native.lower.blocked import LAYOUTS
        from graphopt.native.lower.codebook import CODEBOOK_MODES
        from graphopt.native.lower.sparse import SPARSE_MODES

        fallback = check_fallback(fallback)
        if codebook not in CODEBOOK_MODES:
            raise GraphoptError(f"codebook must be one of {CODEBOOK_MODES}, got {codebook!r}")
        self.codebook = codebook  # shared weights decoded at plan time or read (lower/codebook)
        # Values no kernel computes: a codebook weight read through its indices by its readers.
        self.virtual: dict[Value, tuple] = {}
        if sparse not in SPARSE_MODES:
            raise GraphoptError(f"sparse must be one of {SPARSE_MODES}, got {sparse!r}")
        if layout not in LAYOUTS:
            raise GraphoptError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.sparse = sparse  # CSR kernel choice for sparse weights (native/lower/sparse.py)
        self.layout = layout  # convolution activation layout (native/lower/blocked.py)
        self.precision = check_precision(precision)  # "bf16": weight GEMMs in bf16 (linear.py)
        self.graph = graph
        self.bindings = dict(bindings or {})
        self.fallback = fallback
        self.threads = threads
        self.input_shapes = [tuple(s) for s in input_shapes]
        self.steps: list[Step] = []
        self.buffers: list[Buffer] = []
        self.env: dict[Value, TensorRef] = {}
        self.consts: dict[Value, np.ndarray] = {}  # plan-time data (graph constants, folded)
        self.const_arrays: list[np.ndarray] = []  # plan constants, by index
        self._const_buffers: dict[int, Buffer] = {}  # id(array) -> buffer
        self._materialized: dict[Value, TensorRef] = {}
        # Values held in the channel-blocked layout (native/lower/blocked.py). A value lives
        # in ``env`` (plain), here, or both: plain_ref() reorders a blocked one on first demand.
        self.blocked: dict[Value, TensorRef] = {}
        # Concatenations left unmade (native/lower/kv_segments.py): value -> its two pieces
        # and axis; plain_ref() makes the concatenation for a reader that needs it whole.
        self.segments: dict[Value, tuple[TensorRef, TensorRef, int]] = {}
        self._shapes: dict[Value, tuple[int, ...]] = {}
        self.last_use: dict[Value, float] = {}
        self.failures: list[tuple[str, str, str]] = []
        self.fallback_nodes: list[str] = []
        self.fallback_ops: list[str] = []
        self.outputs: list[TensorRef] = []
        self.num_output_buffers = 0
        # id(value) -> (codes, scale, zero point) of an input several qlinear_dynamic nodes
        # share (native/lower/quant.py: quantized once).
        self.quantized_inputs: dict[int, tuple] = {}

    # ------------------------------------------------------------------------------ shapes
    def shape(self, value: Value) -> tuple[int, ...]:
        shape = self._shapes.get(value)
        if shape is None:
            dims = []
            for d in value.shape:
                if not isinstance(d, int):
                    d = normalize_dim(d.subs(self.bindings))
                if not isinstance(d, int):
                    raise GraphoptError(f"%{value.name}: dim {d} does not resolve to an integer "
                                        "from the input shapes")
                dims.append(d)
            shape = self._shapes[value] = tuple(dims)
        return shape

    # ----------------------------------------------------------------------------- buffers
    def new_buffer(self, nbytes: int, label: str = "", space: int = R.SPACE_ARENA,
                   index: int = -1) -> Buffer:
        check_bytes(int(nbytes), f"native buffer {label or len(self.buffers)}")
        buf = Buffer(len(self.buffers), int(nbytes), space, index, label=label)
        self.buffers.append(buf)
        return buf

    def new_ref(self, shape, dtype: DType, label: str = "", pending_end: float = -1) -> TensorRef:
        shape = tuple(int(d) for d in shape)
        buf = self.new_buffer(R.numel(shape) * dtype.itemsize, label)
        buf.pending_end = pending_end
        return TensorRef(buf, 0, shape, R.contiguous_strides(shape), dtype)

    def const_ref(self, array: np.ndarray, dtype: DType, strided: bool = False) -> TensorRef:
        """A view of a plan constant (registered on first use): contiguous, unless ``strided``
        and the array is a transposed view (``Graph.add_constant(transposed_view=True)``),
        which is then registered without a copy and read through its strides."""
        shape = tuple(array.shape)
        if strided and array.ndim == 2 and not array.flags.c_contiguous \
                and array.T.flags.c_contiguous:
            buf = self._register_const(array.T)
            return TensorRef(buf, 0, shape, (1, shape[0]), dtype)
        buf = self._register_const(np.require(array, requirements="C"))
        return TensorRef(buf, 0, shape, R.contiguous_strides(shape), dtype)

    def _register_const(self, array: np.ndarray):
        buf = self._const_buffers.get(id(array))
        if buf is None:
            buf = self.new_buffer(array.nbytes, "const", R.SPACE_CONST, len(self.const_arrays))
            buf.pending_end = INF
            self.const_arrays.append(array)
            self._const_buffers[id(array)] = buf
        return buf

    def emit(self, kernel: str, name: str, operands, ints=(), floats=(), **extra) -> Step:
        step = Step(kernel, name, list(operands), [int(i) for i in ints],
                    [float(f) for f in floats], **extra)
        if kernel != "reference":
            # The C++ kernel table is the calling convention: a wrong operand or parameter
            # count is a lowering bug, reported here with the node rather than by the runtime.
            where = f"node {name}" + (f" (op '{step.op}')" if step.op else "")
            check_call(kernel, step.operands, step.ints, step.floats, where)
        index = len(self.steps)
        for ref in list(step.operands) + list(step.outputs):
            if ref is not None:
                ref.buffer.touch(index)
        self.steps.append(step)
        return step

    def emit_copy(self, dst: TensorRef, src: TensorRef, name: str) -> None:
        """dst[...] = src[...] (shapes equal; either may be strided)."""
        if dst.numel == 0:
            return
        shape, (ds, ss) = R.collapse_dims(dst.shape, dst.strides, src.strides)
        self.emit("copy", name, [dst, src],
                  [dst.itemsize, len(shape), *shape, *ds, *ss])

    def plain_ref(self, value: Value) -> TensorRef | None:
        """The plain (strided) view of ``value``; a value computed in the blocked layout is
        reordered once, here, for the first reader that needs it plain."""
        ref = self.env.get(value)
        if ref is None and value in self.blocked:
            from graphopt.native.lower.blocked import emit_from_blocked

            ref = self.env[value] = emit_from_blocked(self, value, self.blocked[value])
        elif ref is None and value in self.segments:
            from graphopt.native.lower.kv_segments import join_segments

            ref = self.env[value] = join_segments(self, value, self.segments[value])
        return ref

    def holds(self, value: Value) -> bool:
        """Whether ``value`` was computed (plainly, blocked or as concatenation pieces)."""
        return value in self.env or value in self.blocked or value in self.segments

    def materialize(self, value: Value, ref: TensorRef, name: str) -> TensorRef:
        """A contiguous copy of view ``ref`` of ``value`` (made once per value)."""
        cached = self._materialized.get(value)
        if cached is not None:
            return cached
        out = self.new_ref(ref.shape, ref.dtype, f"{value.name}.contiguous",
                           self.last_use.get(value, INF))
        self.emit_copy(out, ref, name)
        self._materialized[value] = out
        return out

    # ------------------------------------------------------------------------------- build
    def build(self):
        from graphopt.native import lower  # noqa: F401  (registers the lowerings)
        from graphopt.native.plan import ExecutionPlan

        graph = self.graph
        needed = self._needed_nodes()
        order = {node: i for i, node in enumerate(needed)}
        for node in needed:
            for v in node.inputs:
                if v is not None:
                    self.last_use[v] = max(self.last_use.get(v, -1), order[node])
        for v in graph.outputs:
            self.last_use[v] = INF

        for i, value in enumerate(graph.inputs):
            buf = self.new_buffer(R.numel(self.input_shapes[i]) * value.dtype.itemsize,
                                  value.name, R.SPACE_INPUT, i)
            buf.pending_end = INF
            shape = self.input_shapes[i]
            self.env[value] = TensorRef(buf, 0, shape, R.contiguous_strides(shape), value.dtype)
        for value in graph.constants.values():
            self.consts[value] = value.data

        for node in needed:
            self._lower_node(node, order[node])
        if self.failures:
            raise NativeUnsupportedError(self.failures)
        self._finalize_outputs()
        memory = self._plan_memory()
        return ExecutionPlan(self, memory, threads=self.threads)

    def _needed_nodes(self) -> list[Node]:
        live: set[Value] = {v for v in self.graph.outputs}
        needed: list[Node] = []
        for node in reversed(self.graph.nodes):
            if any(out in live for out in node.outputs):
                needed.append(node)
                live.update(v for v in node.inputs if v is not None)
        return list(reversed(needed))

    def devirtualize(self, value: Value) -> None:
        """Give a virtual codebook weight (lower/codebook.py) its decoded array after all: for
        a reader that cannot take it through its codebook (a fallback, a declined lookup)."""
        if value in self.virtual:
            indices, centroids = self.virtual.pop(value)
            table = np.concatenate([np.zeros(1, np.float32), centroids])
            self.consts[value] = table[indices.astype(np.int64)]

    def _foldable(self, node: Node) -> bool:
        return node.has_trait(PURE) and all(v is None or v in self.consts for v in node.inputs)

    def _fold(self, node: Node) -> bool:
        """Computes the node at plan time; False (nothing stored) when the reference fails or
        its result does not have the node's declared shape (lowering it normally then says
        what is wrong). A result of another dtype is cast to the declared one: the kernels
        that read the constant go by the declared type."""
        args = [None if v is None else numpy_to_torch(self.consts[v], v.dtype)
                for v in node.inputs]
        try:
            with torch.no_grad():
                result = node.opdef.call_reference(args, node_attrs(node, self.bindings))
        except Exception:  # noqa: BLE001  (any failure of the reference: lower it instead)
            return False
        results = result if isinstance(result, (tuple, list)) else (result,)
        arrays = []
        for out, tensor in zip(node.outputs, results):
            declared = self._static_shape(out)
            if not isinstance(tensor, torch.Tensor) or (
                    declared is not None and tuple(tensor.shape) != declared):
                return False
            if tensor.dtype != out.dtype.torch:
                tensor = tensor.to(out.dtype.torch)
            array, _ = torch_to_numpy(tensor)
            arrays.append(array)
        if len(arrays) != len(node.outputs):
            return False
        for out, array in zip(node.outputs, arrays):
            self.consts[out] = array
        return True

    def _check_fold_size(self, node: Node) -> None:
        """A folded result is as large as the node's outputs say: check that against the
        memory budget before the reference computes it (a crafted graph can ask for a
        constant of terabytes, e.g. an expand of a scalar)."""
        shapes = [self._static_shape(v) for v in node.outputs]
        nbytes = sum(numel_of(s) * v.dtype.itemsize for s, v in zip(shapes, node.outputs)
                     if s is not None)
        check_bytes(nbytes, f"folding {node.describe()} (op '{node.op}') at plan time")

    def _static_shape(self, value: Value) -> tuple[int, ...] | None:
        """The value's shape, or None when it depends on data (not on the input shapes)."""
        try:
            return self.shape(value)
        except GraphoptError:
            return None

    def _lower_node(self, node: Node, index: int) -> None:
        from graphopt.native.lower.codebook import keep_virtual

        if keep_virtual(self, node):
            return
        if self._foldable(node):
            self._check_fold_size(node)
            if self._fold(node):
                return
        lowering = node.opdef.lowerings.get(BACKEND)
        ctx = LoweringContext(self, node, index)
        materialized_before, env_before = set(self._materialized), set(self.env)
        blocked_before = set(self.blocked)
        try:
            if lowering is None:
                raise Unsupported(f"no native kernel for op '{node.op}'")
            lowering(ctx)
            missing = [v.name for v in node.outputs
                       if not self.holds(v) and v not in self.consts]
            if missing:
                raise GraphoptError(f"native lowering of {node.op} did not define {missing}")
        except GraphoptError:
            raise
        except (ValueError, IndexError, KeyError, TypeError, ZeroDivisionError,
                OverflowError) as exc:
            # A lowering met a node its checks did not anticipate (inconsistent attributes or
            # shapes from a crafted graph): name the node rather than leak a Python error.
            raise LoweringError(BACKEND, [(node.op, node.describe(),
                                           f"malformed node ({type(exc).__name__}: {exc})")]) \
                from exc
        except Unsupported as exc:
            self._rollback(ctx.first_step, materialized_before, env_before, blocked_before)
            if lowering is not None and has_half(node) and self._lower_widened(node, index,
                                                                               lowering):
                return
            if self.fallback == "reference":
                self._reference_step(node, index)
            else:
                self.failures.append((node.op, node.describe(), str(exc)))
                for out in node.outputs:  # placeholders so later nodes can still be checked
                    self.env.setdefault(out, self.new_ref(self.shape(out), out.dtype, out.name))

    def _rollback(self, first_step: int, materialized_before, env_before, blocked_before) -> None:
        """Discard whatever a lowering emitted or defined before giving up."""
        del self.steps[first_step:]
        for v in set(self._materialized) - materialized_before:
            del self._materialized[v]
        for v in set(self.env) - env_before:
            del self.env[v]
        for v in set(self.blocked) - blocked_before:
            del self.blocked[v]

    def _lower_widened(self, node: Node, index: int, lowering) -> bool:
        """float16 / bfloat16 operands computed in float32 (native/widen.py); False (nothing
        kept) when the float32 form has no kernel either."""
        first_step = len(self.steps)
        state = set(self._materialized), set(self.env), set(self.blocked)
        consts_before = set(self.consts)
        try:
            lower_widened(self, node, index, lowering)
        except (ValueError, IndexError, KeyError, TypeError, ZeroDivisionError,
                OverflowError) as exc:
            raise LoweringError(BACKEND, [(node.op, node.describe(),
                                           f"malformed node ({type(exc).__name__}: {exc})")]) \
                from exc
        except Unsupported:
            self._rollback(first_step, *state)
            for v in set(self.consts) - consts_before:
                del self.consts[v]
            return False
        return True

    def _reference_step(self, node: Node, index: int) -> None:
        inputs = []
        for v in node.inputs:
            self.devirtualize(v)
            if v is None:
                inputs.append(None)
            elif self.holds(v):
                inputs.append(self.plain_ref(v))
            else:
                inputs.append(self.const_ref(self.consts[v], v.dtype))
        outputs = [self.new_ref(self.shape(v), v.dtype, v.name, self.last_use.get(v, -1))
                   for v in node.outputs]
        for v, ref in zip(node.outputs, outputs):
            self.env[v] = ref
        self.fallback_nodes.append(node.describe())
        self.fallback_ops.append(node.op)
        self.emit("reference", node.name, inputs, node=node, outputs=outputs,
                  attrs=node_attrs(node, self.bindings))

    def _finalize_outputs(self) -> None:
        for value in self.graph.outputs:
            ref = self.plain_ref(value)
            if ref is None:  # a constant (or folded) output
                ref = self.const_ref(self.consts[value], value.dtype)
            buf = ref.buffer
            whole = ref.is_contiguous and ref.offset == 0 and ref.nbytes == buf.nbytes
            if buf.space == R.SPACE_ARENA and whole:
                buf.space = R.SPACE_OUTPUT
                buf.index = self.num_output_buffers
                self.num_output_buffers += 1
            elif buf.space == R.SPACE_OUTPUT:
                pass  # another view of an output buffer
            else:
                out = self.new_ref(ref.shape, ref.dtype, value.name, INF)
                out.buffer.space = R.SPACE_OUTPUT
                out.buffer.index = self.num_output_buffers
                self.num_output_buffers += 1
                self.emit_copy(out, ref, f"{value.name}.output")
                ref = out
            self.outputs.append(ref)

    def _plan_memory(self) -> MemoryPlan:
        lifetimes = [Lifetime(b.key, b.nbytes, b.first, b.last) for b in self.buffers
                     if b.space == R.SPACE_ARENA and b.first is not None]
        memory = plan_memory(lifetimes)
        for b in self.buffers:
            if b.space == R.SPACE_ARENA and b.first is not None:
                b.offset = memory.offsets[b.key]
        self.lifetimes = lifetimes
        return memory
