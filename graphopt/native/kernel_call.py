"""One native kernel step on numpy arrays, outside any graph (kernel tests and benchmarks).

``KernelCall("qlinear", [out, x, w, ...], ints, floats, const=(2,))`` builds a one-step
``_C.NativePlan``: operands listed in ``const`` are plan constants (visible to the kernel's
factory, e.g. weights it packs at build time), the others are per-call buffers (the output
included: the kernel writes through its pointer). ``call.run()`` runs the step; the arrays
must stay alive and keep their place (the call holds references to them). Each array is handed
over with its byte size, so parameters that would make the kernel reach past an operand raise
:class:`~graphopt.native.errors.NativeError` (a ``ValueError``) instead of corrupting memory.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from graphopt import _extension
from graphopt.native.errors import NativeError
from graphopt.native.refs import SPACE_CONST, SPACE_INPUT


# ------------------------------------------------------------------------------ kernel table
@dataclass(frozen=True)
class IntParam:
    """One integer parameter (or list of them) of a kernel: ``count`` is None for one value, an
    int for a fixed-length list, or the name of an earlier ``rank`` parameter."""

    name: str
    type: str
    count: int | str | None = None


@dataclass(frozen=True)
class Slot:
    """An operand slot or a float parameter; ``optional`` ones may be None / left out."""

    name: str
    optional: bool = False


@dataclass(frozen=True)
class KernelSignature:
    """A kernel's calling convention as the C++ runtime declares it (csrc/rt_plan.h
    ``KernelSignature``, exported by ``_C.native_kernel_table()``)."""

    name: str
    operands: tuple[Slot, ...]
    ints: tuple[IntParam, ...]
    floats: tuple[Slot, ...]

    def int_count(self, ints: Sequence[int]) -> int | str:
        """How many integer parameters a call with these leading values must pass (list lengths
        are read from ``ints``); a string (what is wrong) when a length is missing or negative."""
        values: dict[str, int] = {}
        pos = 0
        for p in self.ints:
            if p.count is None:
                n = 1
                if pos < len(ints):
                    values[p.name] = int(ints[pos])
            elif isinstance(p.count, int):
                n = p.count
            else:
                if p.count not in values:
                    return f"'{p.count}' (the length of '{p.name}') is missing"
                n = values[p.count]
                if n < 0:
                    return f"'{p.count}' = {n} is negative"
            pos += n
        return pos

    def describe_ints(self) -> str:
        return ", ".join(p.name if p.count is None else f"{p.name}[{p.count}]"
                         for p in self.ints)

    def check(self, operands: Sequence, ints: Sequence[int], floats: Sequence[float],
              where: str) -> None:
        """Raises :class:`NativeError` (naming ``where`` and the kernel) when the call does not
        fit the signature: operand count or a missing required operand, integer or float
        parameter count."""
        def fail(what: str):
            raise NativeError(f"{where}: kernel '{self.name}' {what}")

        if len(operands) > len(self.operands):
            fail(f"takes {len(self.operands)} operands "
                 f"({', '.join(s.name for s in self.operands)}), got {len(operands)}")
        for i, slot in enumerate(self.operands):
            if not slot.optional and (i >= len(operands) or operands[i] is None):
                fail(f"needs operand {i} ({slot.name})")
        want = self.int_count(ints)
        if isinstance(want, str):
            fail(f"integer parameters ({self.describe_ints()}): {want}")
        if want != len(ints):
            fail(f"takes {want} integer parameters here ({self.describe_ints()}), "
                 f"got {len(ints)}")
        required = sum(not f.optional for f in self.floats)
        if not required <= len(floats) <= len(self.floats):
            names = ", ".join(f.name + ("?" if f.optional else "") for f in self.floats)
            count = (str(required) if required == len(self.floats)
                     else f"{required} to {len(self.floats)}")
            fail(f"takes {count} float parameters ({names or 'none'}), got {len(floats)}")


_TABLE: dict[str, KernelSignature] | None = None
_TABLE_LOCK = threading.Lock()


def kernel_table() -> dict[str, KernelSignature]:
    """Every native kernel's signature by name, read once from ``_C.native_kernel_table()``."""
    global _TABLE
    if _TABLE is None:
        with _TABLE_LOCK:
            if _TABLE is None:
                table = {}
                for entry in _extension.load().native_kernel_table():
                    table[entry["name"]] = KernelSignature(
                        entry["name"],
                        tuple(Slot(s["name"], bool(s["optional"])) for s in entry["operands"]),
                        tuple(IntParam(p["name"], p["type"], p["count"]) for p in entry["ints"]),
                        tuple(Slot(s["name"], bool(s["optional"])) for s in entry["floats"]))
                _TABLE = table
    return _TABLE


def check_call(kernel: str, operands: Sequence, ints: Sequence[int], floats: Sequence[float],
               where: str) -> None:
    """Validates one kernel call against the C++ kernel table (unknown kernel, operand and
    parameter counts); raises :class:`NativeError` naming ``where`` (the step or node) and the
    kernel. The kernel's factory still checks every value when the step is added."""
    sig = kernel_table().get(kernel)
    if sig is None:
        raise NativeError(f"{where}: unknown native kernel '{kernel}' (the runtime has: "
                          f"{', '.join(sorted(kernel_table()))})")
    sig.check(operands, ints, floats, where)


class KernelCall:
    """A native kernel bound to fixed numpy operands.

    ``validate=True`` checks the call against the kernel table first (Python-side
    :class:`NativeError`); by default the C++ factory alone checks it (what the safety tests
    exercise)."""

    def __init__(self, kernel: str, operands: Sequence[np.ndarray | None], ints=(), floats=(),
                 threads: int = 1, const: Sequence[int] = (), validate: bool = False):
        _C = _extension.load()
        if validate:
            check_call(kernel, list(operands), list(ints), list(floats), f"{kernel}_call")

        operands = [a if a is None or isinstance(a, np.ndarray) else np.asarray(a)
                    for a in operands]  # numpy scalars -> 0-d arrays
        self.arrays = [None if a is None else np.require(a, requirements="C")
                       for a in operands]
        for a, b in zip(operands, self.arrays):
            if a is not None and a is not b:
                raise NativeError("operands must be C-contiguous numpy arrays (views are "
                                  "described by the kernel's stride parameters)")
        self.plan = _C.NativePlan(threads)
        self._arena = np.zeros(64, np.uint8)
        self.plan.set_arena(self._arena.ctypes.data, self._arena.nbytes)
        specs, self._inputs = [], []
        for i, a in enumerate(self.arrays):
            if a is None:
                specs.append(None)
            elif i in const:
                specs.append((SPACE_CONST, self.plan.add_constant(a.ctypes.data, a.nbytes), 0))
            else:
                specs.append((SPACE_INPUT, len(self._inputs), 0))
                self._inputs.append((a.ctypes.data, a.nbytes))
        self.plan.add_step(kernel, f"{kernel}_call", specs, [int(i) for i in ints],
                           [float(f) for f in floats])

    def run(self) -> None:
        self.plan.run(self._inputs, [])
