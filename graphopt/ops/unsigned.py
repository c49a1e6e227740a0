"""Reference semantics of the elementwise ops on uint16 / uint32 / uint64 (ONNX has them).

torch holds these dtypes but has almost no kernels for them (no add, no comparison), so the
reference interpreter computes the elementwise ops on them with numpy, whose unsigned
arithmetic is the one ONNX specifies: wrapping add / sub / mul, floor division (= truncation:
no negative values), remainder, shifts, bitwise ops, comparisons. Data-movement ops (reshape,
concat, slice, gather, cast...) have torch kernels for these dtypes and run through the op's
own reference. ``call`` is what ``OpDef.call_reference`` (the interpreter's entry) does when an
operand is a wide unsigned tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from graphopt.errors import GraphoptError

WIDE_UNSIGNED_TORCH = (torch.uint16, torch.uint32, torch.uint64)


def _div(a, b, rounding_mode=None):
    if np.any(b == 0):
        raise ZeroDivisionError("integer division by zero")
    if rounding_mode is None:  # true division: torch gives the default float dtype
        return np.true_divide(a, b).astype(np.float32)
    return np.floor_divide(a, b)


def _remainder(a, b):
    if np.any(b == 0):
        raise ZeroDivisionError("integer remainder by zero")
    return np.remainder(a, b)


def _shift(a, b, direction):
    bits = a.dtype.itemsize * 8
    wide = b >= bits  # torch / ONNX: shifting by the width or more gives 0
    b = np.where(wide, 0, b).astype(a.dtype)
    out = np.left_shift(a, b) if direction == "LEFT" else np.right_shift(a, b)
    return np.where(wide, 0, out).astype(a.dtype)


# op -> numpy implementation taking the operands as arrays and the node's attributes.
_NUMPY: dict[str, Callable[..., np.ndarray]] = {
    "add": lambda a, b: np.add(a, b), "sub": lambda a, b: np.subtract(a, b),
    "mul": lambda a, b: np.multiply(a, b), "div": _div, "remainder": _remainder,
    "fmod": _remainder,  # no negative values: fmod == remainder
    "maximum": lambda a, b: np.maximum(a, b), "minimum": lambda a, b: np.minimum(a, b),
    "eq": lambda a, b: np.equal(a, b), "ne": lambda a, b: np.not_equal(a, b),
    "lt": lambda a, b: np.less(a, b), "le": lambda a, b: np.less_equal(a, b),
    "gt": lambda a, b: np.greater(a, b), "ge": lambda a, b: np.greater_equal(a, b),
    "bitwise_and": lambda a, b: np.bitwise_and(a, b),
    "bitwise_or": lambda a, b: np.bitwise_or(a, b),
    "bitwise_xor": lambda a, b: np.bitwise_xor(a, b),
    "bitwise_not": lambda x: np.invert(x), "bitshift": _shift,
    "abs": lambda x: x.copy(), "sign": lambda x: (x > 0).astype(x.dtype),
    "where": lambda cond, a, b: np.where(cond, a, b),
    "clamp": lambda x, min=None, max=None: np.clip(x, min, max).astype(x.dtype),
}


def reads_wide_unsigned(args: list) -> bool:
    return any(isinstance(a, torch.Tensor) and a.dtype in WIDE_UNSIGNED_TORCH for a in args)


def call(op: str, reference: Callable, args: list, attrs: dict[str, Any]):
    """The op's result on operands some of which are uint16/32/64 tensors."""
    impl = _NUMPY.get(op)
    if impl is None:
        try:
            return reference(*args, **attrs)
        except (RuntimeError, NotImplementedError) as exc:
            raise GraphoptError(f"'{op}' has no reference implementation for uint16/32/64 "
                                f"operands (torch has no kernel: {exc})") from exc
    arrays = [a.numpy() if isinstance(a, torch.Tensor) else a for a in args]
    with np.errstate(over="ignore"):
        out = impl(*arrays, **attrs)
    return torch.from_numpy(np.ascontiguousarray(out))
