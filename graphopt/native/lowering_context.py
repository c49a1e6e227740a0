"""What a native lowering sees: :class:`LoweringContext`, one node being lowered.

A lowering (``register_lowering("native", op)``, see ``graphopt/native/lower/``) reads the
node's attributes, shapes and inputs (as :class:`~graphopt.native.refs.TensorRef` views or
plan-time constants) through the context, asks it for output buffers (possibly in place of an
input that dies at this node) and emits kernel steps into the
:class:`~graphopt.native.builder.PlanBuilder` that owns it. ``ctx.unsupported`` raises
:class:`Unsupported` (the builder then reports the node or falls back to its reference
implementation); ``ctx.invalid`` raises a ``LoweringError`` at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from graphopt.errors import LoweringError
from graphopt.interpreter import node_attrs
from graphopt.ir.dtypes import DType, numpy_to_torch, torch_to_numpy
from graphopt.ir.graph import Node
from graphopt.native import refs as R
from graphopt.native.codes import DTYPE_CODES
from graphopt.native.refs import TensorRef
from graphopt.ops.registry import ELEMENTWISE

if TYPE_CHECKING:
    from graphopt.native.builder import PlanBuilder, Step

BACKEND = "native"


class Unsupported(Exception):
    """Raised by a lowering that cannot handle this node (the reason is the message)."""


class LoweringContext:
    """What a native lowering sees of the node it lowers (see graphopt/native/lower/)."""

    def __init__(self, builder: PlanBuilder, node: Node, index: int):
        self.builder = builder
        self.node = node
        self.index = index
        self.first_step = len(builder.steps)
        self._attrs: dict | None = None

    # ------------------------------------------------------------------------- node facts
    @property
    def name(self) -> str:
        return self.node.name

    @property
    def attrs(self) -> dict[str, Any]:
        if self._attrs is None:
            self._attrs = node_attrs(self.node, self.builder.bindings)
        return self._attrs

    @property
    def num_inputs(self) -> int:
        return len(self.node.inputs)

    def has(self, i: int) -> bool:
        return i < len(self.node.inputs) and self.node.inputs[i] is not None

    def in_shape(self, i: int) -> tuple[int, ...]:
        return self.builder.shape(self.node.inputs[i])

    def in_dtype(self, i: int) -> DType:
        return self.node.inputs[i].dtype

    def out_shape(self, i: int = 0) -> tuple[int, ...]:
        return self.builder.shape(self.node.outputs[i])

    def out_dtype(self, i: int = 0) -> DType:
        return self.node.outputs[i].dtype

    def unsupported(self, reason: str):
        """This backend cannot run the node (fallback="reference" may run it instead)."""
        raise Unsupported(reason)

    def invalid(self, reason: str):
        """The node itself is malformed (attributes, weights and shapes disagree): no backend
        should run it, so this raises at once, with no reference fallback."""
        raise LoweringError(BACKEND, [(self.node.op, self.node.describe(),
                                       f"malformed node: {reason}")])

    # ----------------------------------------------------------------------------- inputs
    def const(self, i: int) -> np.ndarray | None:
        """Plan-time data of input i (a weight or folded value), else None."""
        v = self.node.inputs[i] if i < len(self.node.inputs) else None
        return None if v is None else self.builder.consts.get(v)

    def ref(self, i: int) -> TensorRef | None:
        """Input i as a (possibly strided) view; None for an absent optional input."""
        v = self.node.inputs[i] if i < len(self.node.inputs) else None
        if v is None:
            return None
        self.builder.devirtualize(v)
        ref = self.builder.plain_ref(v)
        if ref is None:
            ref = self.builder.const_ref(self.builder.consts[v], v.dtype)
        return ref

    def weight_ref(self, i: int) -> TensorRef | None:
        """Input i for a kernel that reads it through its strides: like :meth:`ref`, but a
        constant stored as a transposed view (a [in, out] weight used as [out, in]) is read in
        place instead of copied into C order."""
        v = self.node.inputs[i] if i < len(self.node.inputs) else None
        if v is not None:
            self.builder.devirtualize(v)
        if v is None or v not in self.builder.consts or self.builder.plain_ref(v) is not None:
            return self.ref(i)
        return self.builder.const_ref(self.builder.consts[v], v.dtype, strided=True)

    def blocked_ref(self, i: int) -> TensorRef | None:
        """Input i in the channel-blocked layout when it was computed in it, else None
        (native/lower/blocked.py)."""
        v = self.node.inputs[i] if i < len(self.node.inputs) else None
        return None if v is None else self.builder.blocked.get(v)

    def contiguous(self, i: int) -> TensorRef | None:
        """Input i as a contiguous tensor (copied once if it is a non-contiguous view)."""
        ref = self.ref(i)
        if ref is None or ref.is_contiguous:
            return ref
        return self.builder.materialize(self.node.inputs[i], ref, f"{self.name}.in{i}")

    def cast(self, i: int, dtype: DType, contiguous: bool = True) -> TensorRef:
        """Input i converted to ``dtype`` (at plan time for constants)."""
        v = self.node.inputs[i]
        if v.dtype == dtype:
            return self.contiguous(i) if contiguous else self.ref(i)
        data = self.const(i)
        if data is not None:
            converted = numpy_to_torch(data, v.dtype).to(dtype.torch)
            return self.builder.const_ref(torch_to_numpy(converted)[0], dtype)
        src = self.contiguous(i)
        out = self.builder.new_ref(src.shape, dtype, f"{v.name}.{dtype}", self.index)
        if v.dtype not in DTYPE_CODES or dtype not in DTYPE_CODES:
            self.unsupported(f"no native cast from {v.dtype} to {dtype}")
        self.emit("cast", [out, src], [DTYPE_CODES[v.dtype], DTYPE_CODES[dtype], src.numel])
        return out

    # ---------------------------------------------------------------------------- outputs
    def output(self, i: int = 0, inplace: tuple[int, ...] = ()) -> TensorRef:
        """A contiguous buffer for output i; reuses input slot ``inplace[k]``'s buffer when that
        input is a whole contiguous arena tensor of the same byte size that nothing reads after
        this node (and no other input of this node views it)."""
        value = self.node.outputs[i]
        shape, dtype = self.out_shape(i), self.out_dtype(i)
        end = self.builder.last_use.get(value, -1)
        for slot in inplace:
            ref = self._inplace_candidate(slot, shape, dtype)
            if ref is not None:
                ref.buffer.pending_end = max(end, self.index)
                out = TensorRef(ref.buffer, ref.offset, shape, R.contiguous_strides(shape), dtype)
                out.meta["inplace_of"] = slot
                self.builder.env[value] = out
                return out
        out = self.builder.new_ref(shape, dtype, value.name, end)
        self.builder.env[value] = out
        return out

    def _inplace_candidate(self, slot: int, shape, dtype: DType) -> TensorRef | None:
        if not self.has(slot):
            return None
        ref = self.ref(slot)
        v = self.node.inputs[slot]
        mat = self.builder._materialized.get(v)
        if not ref.is_contiguous and mat is not None:
            ref = mat
        buf = ref.buffer
        if (buf.space != R.SPACE_ARENA or not ref.is_contiguous
                or ref.dtype.itemsize != dtype.itemsize or ref.numel != R.numel(shape)
                or buf.pending_end > self.index):
            return None
        # Another operand in the same buffer would be overwritten while the step reads it;
        # the same value twice is safe only for an elementwise op (each element is read before
        # it is written): a fused_linear whose residual is also its input (x + W x) is not.
        elementwise = self.node.has_trait(ELEMENTWISE)
        for j, other in enumerate(self.node.inputs):
            if j == slot or other is None or (other is v and elementwise):
                continue
            other_ref = self.builder.env.get(other)
            if other_ref is not None and other_ref.buffer is buf:
                return None
            other_mat = self.builder._materialized.get(other)
            if other_mat is not None and other_mat.buffer is buf:
                return None
        return ref

    def set_output(self, i: int, ref: TensorRef) -> None:
        """Output i is the view ``ref`` (no step)."""
        value = self.node.outputs[i]
        end = self.builder.last_use.get(value, -1)
        ref.buffer.pending_end = max(ref.buffer.pending_end, end)
        self.builder.env[value] = ref

    def temp(self, shape, dtype: DType, label: str = "tmp") -> TensorRef:
        """Scratch buffer live around this node's steps."""
        return self.builder.new_ref(shape, dtype, f"{self.name}.{label}", self.index)

    # ------------------------------------------------------------------------------ steps
    def emit(self, kernel: str, operands, ints=(), floats=()) -> Step:
        return self.builder.emit(kernel, self.name, operands, ints, floats, op=self.node.op)

    def copy(self, dst: TensorRef, src: TensorRef) -> None:
        self.builder.emit_copy(dst, src, self.name)
