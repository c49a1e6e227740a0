"""Errors of the native runtime's C++ core (graphopt._C), as graphopt errors.

The extension translates its C++ exceptions into these (csrc/rt_bindings.cpp): a plan step
whose parameters or operands are invalid (an index out of range, a size that overflows, an
operand that would reach past its buffer, a buffer too small for a call), and data errors met
while running (an index tensor out of bounds, an integer division by zero). They subclass
``ValueError`` / ``IndexError`` too, the exceptions such calls raised before, so code that
caught those keeps working.
"""

from __future__ import annotations

from graphopt.errors import GraphoptError


class NativeError(GraphoptError, ValueError):
    """The native runtime refused a plan step or a run; the message names the kernel, the
    step (its graph node) and the operand or parameter at fault."""


class NativeIndexError(NativeError, IndexError):
    """An index read from the data is out of bounds (embedding / gather / index), or a step
    index passed to ``NativePlan.step_kernel`` / ``step_name`` is."""


__all__ = ["NativeError", "NativeIndexError"]
