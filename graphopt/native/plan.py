"""The execution plan and how it runs.

An :class:`ExecutionPlan` is what :class:`~graphopt.native.builder.PlanBuilder` produced for one
set of input shapes: steps (kernel calls with operands resolved to (space, index, offset)),
the static arena (``peak_bytes``), the plan constants and where each graph output lives. The
device turns its steps into runnable segments once:

* without reference steps, one C++ ``NativePlan`` runs every step: a call is one Python -> C++
  transition (``NativePlan.run`` with the input and output data pointers);
* each reference step (``fallback="reference"``) is run by Python between native segments.

:class:`Device` is the seam for other devices: it owns buffer allocation and segment
compilation. Only :class:`CpuDevice` exists; a CUDA device would allocate the arena and outputs
with ``torch.empty(..., device="cuda")``, register CUDA kernels under the same names in C++ and
create ``NativePlan(threads, device=cuda)`` with a stream in its execution context.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from graphopt import _extension
from graphopt.errors import LoweringError
from graphopt.limits import check_bytes
from graphopt.native import refs as R
from graphopt.native.builder import Step
from graphopt.native.errors import NativeError
from graphopt.native.memory import ALIGNMENT, MemoryPlan


class Device:
    """Where a plan's buffers live and its kernels run."""

    name = "abstract"

    def empty_bytes(self, nbytes: int) -> torch.Tensor:
        raise NotImplementedError

    def native_plan(self, threads: int):
        raise NotImplementedError


class CpuDevice(Device):
    name = "cpu"

    def empty_bytes(self, nbytes: int) -> torch.Tensor:
        return torch.empty(max(int(nbytes), 1), dtype=torch.uint8)

    def native_plan(self, threads: int):
        return _extension.load().NativePlan(threads)


CPU = CpuDevice()


# Debug mode: every arena buffer gets its own exact-size allocation (no sharing), so that
# AddressSanitizer sees a kernel that overruns its buffer (``make asan`` sets it).
SEPARATE_BUFFERS_ENV = "GRAPHOPT_NATIVE_SEPARATE_BUFFERS"


def _operand(ref: R.TensorRef | None, separate: dict | None = None):
    if ref is None:
        return None
    buf = ref.buffer
    if separate is not None and buf.space == R.SPACE_ARENA:
        # An extra per-call input slot, not a constant: kernels treat constant operands as
        # plan-time data (a GEMM packs a constant B once at build).
        return (R.SPACE_INPUT, separate[buf.key], ref.offset)
    offset = ref.offset + (buf.offset if buf.space == R.SPACE_ARENA else 0)
    return (buf.space, max(buf.index, 0), offset)


class ExecutionPlan:
    """A compiled plan for one set of input shapes.

    Attributes:
        steps: the builder's steps, in execution order.
        memory: the arena plan; ``peak_bytes`` is the planned activation memory.
        input_shapes / input_dtypes: what the plan was built for.
        outputs: one TensorRef per graph output (views of call-output buffers).
        fallback_nodes: nodes run by the reference implementation.
    """

    def __init__(self, builder, memory: MemoryPlan, device: Device = CPU, threads: int = 1):
        self.graph = builder.graph
        self.steps = builder.steps
        self.buffers = builder.buffers
        self.lifetimes = builder.lifetimes
        self.memory = memory
        self.input_shapes = builder.input_shapes
        self.input_dtypes = [v.dtype for v in builder.graph.inputs]
        self.outputs = builder.outputs
        self.constants = builder.const_arrays
        self.fallback_nodes = builder.fallback_nodes
        self.output_buffers = sorted((b for b in builder.buffers if b.space == R.SPACE_OUTPUT),
                                     key=lambda b: b.index)
        self.device = device
        self.threads = threads
        # Microseconds the pool's idle helpers spin after each parallel loop (None: the
        # runtime's default); NativeModule(spin_us=...) sets it before compile().
        self.spin_us: int | None = None
        self.input_torch_dtypes = [d.torch for d in self.input_dtypes]
        self._out_nbytes = [b.nbytes for b in self.output_buffers]
        # Per output buffer: allocate it as the typed tensor of the output that covers it whole
        # (the usual case: the result is returned without a view), else as raw bytes.
        self._out_alloc: list[tuple[tuple[int, ...], torch.dtype] | None] = []
        self._direct: list[int | None] = []  # output k -> index of its buffer if returned as is
        whole: dict[int, R.TensorRef] = {}
        for ref in self.outputs:
            if (ref.buffer.space == R.SPACE_OUTPUT and ref.is_contiguous and ref.offset == 0
                    and ref.nbytes == ref.buffer.nbytes):
                whole.setdefault(ref.buffer.index, ref)
        for buf in self.output_buffers:
            ref = whole.get(buf.index)
            self._out_alloc.append(None if ref is None else (ref.shape, ref.dtype.torch))
        for ref in self.outputs:
            direct = whole.get(ref.buffer.index) if ref.buffer.space == R.SPACE_OUTPUT else None
            self._direct.append(ref.buffer.index if direct is ref else None)
        self._segments: list[Any] | None = None
        self._arena: torch.Tensor | None = None
        self._lock = threading.Lock()

    @property
    def peak_bytes(self) -> int:
        """Planned peak activation bytes (the arena; inputs, outputs and weights excluded)."""
        return self.memory.peak_bytes

    @property
    def num_segments(self) -> int:
        self.compile()
        return len(self._segments)

    # ------------------------------------------------------------------------------ compile
    def compile(self, device: Device | None = None, threads: int | None = None) -> None:
        """Create the arena and the runnable segments (done once, on first run)."""
        if self._segments is not None:
            return
        self.device = device or self.device
        self.threads = threads or self.threads
        check_bytes(self.memory.peak_bytes + ALIGNMENT,
                    f"the native plan's activation arena ({len(self.steps)} steps)")
        arena = self.device.empty_bytes(self.memory.peak_bytes + ALIGNMENT)
        shift = (-arena.data_ptr()) % ALIGNMENT
        self._arena = arena
        self._arena_view = arena[shift:]
        arena_ptr = arena.data_ptr() + shift
        self._separate: dict[int, int] | None = None
        self._separate_tensors: dict[int, torch.Tensor] = {}
        self._separate_ptrs: list[tuple[int, int]] = []
        if os.environ.get(SEPARATE_BUFFERS_ENV, "0") not in ("", "0"):
            # Each arena buffer its own allocation (so ASan sees an overflow between two of
            # them), handed to the runtime as extra input slots after the graph's inputs.
            self._separate = {}
            for buf in self.buffers:
                if buf.space == R.SPACE_ARENA and buf.first is not None:
                    t = torch.empty(buf.nbytes, dtype=torch.uint8)
                    self._separate_tensors[buf.key] = t
                    self._separate[buf.key] = len(self.input_shapes) + len(self._separate_ptrs)
                    self._separate_ptrs.append((t.data_ptr(), buf.nbytes))
        segments: list[Any] = []
        current = None
        for step in self.steps:
            if step.kernel == "reference":
                current = None
                segments.append(step)
                continue
            if current is None:
                current = self.device.native_plan(self.threads)
                if self.spin_us is not None:
                    current.spin_us = self.spin_us
                current.set_arena(arena_ptr, self.memory.peak_bytes)
                for array in self.constants:
                    current.add_constant(array.ctypes.data, array.nbytes)
                segments.append(current)
            try:
                current.add_step(step.kernel, step.name,
                                 [_operand(r, self._separate) for r in step.operands],
                                 step.ints, step.floats)
            except NativeError as exc:
                # The runtime checks every step's parameters and operand extents; a refusal
                # here is a node the lowering got wrong (or a malformed graph it let through).
                raise LoweringError("native", [(step.op or step.kernel, step.name,
                                                f"the runtime rejected its '{step.kernel}' "
                                                f"step: {exc}")]) from exc
        self._segments = segments

    # ---------------------------------------------------------------------------------- run
    def run(self, inputs: Sequence[torch.Tensor], profile: bool = False):
        """Runs on contiguous CPU tensors (already checked); returns the flat output tensors
        (and, with ``profile``, a list of (step name, kernel, seconds))."""
        self.compile()
        in_ptrs = [(t.data_ptr(), t.nbytes) for t in inputs] + self._separate_ptrs
        out_bufs = [self.device.empty_bytes(b.nbytes) if alloc is None
                    else torch.empty(alloc[0], dtype=alloc[1])
                    for b, alloc in zip(self.output_buffers, self._out_alloc)]
        out_ptrs = [(t.data_ptr(), n) for t, n in zip(out_bufs, self._out_nbytes)]
        timings = []
        with self._lock:  # the arena is shared by every call of this plan
            for seg in self._segments:
                if not isinstance(seg, Step):
                    if profile:
                        secs = seg.run_profiled(in_ptrs, out_ptrs)
                        timings += [(seg.step_name(i), seg.step_kernel(i), s)
                                    for i, s in enumerate(secs)]
                    else:
                        seg.run(in_ptrs, out_ptrs)
                else:
                    self._run_reference(seg, inputs, out_bufs)
        results = [out_bufs[d] if d is not None else self._view(ref, inputs, out_bufs)
                   for ref, d in zip(self.outputs, self._direct)]
        return (results, timings) if profile else results

    def _view(self, ref: R.TensorRef, inputs, out_bufs) -> torch.Tensor:
        buf = ref.buffer
        if buf.space == R.SPACE_ARENA and self._separate is not None:
            base, offset = self._separate_tensors[buf.key], ref.offset
        elif buf.space == R.SPACE_ARENA:
            base, offset = self._arena_view, buf.offset + ref.offset
        elif buf.space == R.SPACE_OUTPUT:
            base, offset = out_bufs[buf.index].reshape(-1).view(torch.uint8), ref.offset
        elif buf.space == R.SPACE_INPUT:
            base, offset = inputs[buf.index].reshape(-1).view(torch.uint8), ref.offset
        else:
            array = self.constants[buf.index]
            base = torch.from_numpy(array.reshape(-1).view(np.uint8))
            offset = ref.offset
        torch_dtype = ref.dtype.torch
        itemsize = ref.itemsize
        usable = (base.numel() - offset % itemsize) // itemsize * itemsize
        flat = base[offset % itemsize: offset % itemsize + usable].view(torch_dtype)
        return torch.as_strided(flat, ref.shape, ref.strides, offset // itemsize)

    def _run_reference(self, step, inputs, out_bufs) -> None:
        args = [None if r is None else self._view(r, inputs, out_bufs) for r in step.operands]
        with torch.no_grad():
            result = step.node.opdef.call_reference(args, step.attrs)
        results = result if isinstance(result, (tuple, list)) else (result,)
        for ref, value in zip(step.outputs, results):
            self._view(ref, inputs, out_bufs).copy_(value)

    # ------------------------------------------------------------------------------- report
    def describe(self) -> str:
        """Text dump: one line per step with operand placements, then the memory summary."""
        lines = [(f"plan: {len(self.steps)} steps, arena {self.peak_bytes} bytes "
                  f"(no reuse: {self.memory.total_bytes}), {len(self.constants)} constants")]
        for i, step in enumerate(self.steps):
            ops = []
            for ref in step.operands:
                if ref is None:
                    ops.append("-")
                    continue
                space = R.SPACE_NAMES[ref.buffer.space]
                where = (f"@{ref.buffer.offset + ref.offset}" if ref.buffer.space == R.SPACE_ARENA
                         else f"{ref.buffer.index}+{ref.offset}")
                ops.append(f"{space}{where}{list(ref.shape)}")
            lines.append(f"  {i:4d} {step.kernel:10s} {step.name:28s} {' '.join(ops)}")
        return "\n".join(lines)

