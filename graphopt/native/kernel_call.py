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

from collections.abc import Sequence

import numpy as np

from graphopt import _extension
from graphopt.native.errors import NativeError
from graphopt.native.refs import SPACE_CONST, SPACE_INPUT


class KernelCall:
    """A native kernel bound to fixed numpy operands."""

    def __init__(self, kernel: str, operands: Sequence[np.ndarray | None], ints=(), floats=(),
                 threads: int = 1, const: Sequence[int] = ()):
        _C = _extension.load()

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
