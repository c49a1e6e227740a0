"""Helpers shared by the native lowerings."""

from __future__ import annotations

import math

from graphopt.ir.dtypes import DType
from graphopt.native.codes import ACTIVATION_CODES, DTYPE_CODES


def require_float32(ctx, *slots: int) -> None:
    for i in slots:
        if ctx.has(i) and ctx.in_dtype(i) != DType.float32:
            ctx.unsupported(f"input {i} is {ctx.in_dtype(i)}; this native kernel is float32 only")
    if ctx.out_dtype(0) != DType.float32:
        ctx.unsupported(f"result is {ctx.out_dtype(0)}; this native kernel is float32 only")


def dtype_code(ctx, dtype: DType) -> int:
    code = DTYPE_CODES.get(dtype)
    if code is None:
        ctx.unsupported(f"dtype {dtype} has no native kernels")
    return code


def activation(ctx, name: str, params=()) -> tuple[int, float, float]:
    """(code, p0, p1) of an epilogue activation."""
    code = ACTIVATION_CODES.get(name)
    if code is None:
        ctx.unsupported(f"activation '{name}' has no native implementation")
    p = [float(x) for x in params] + [0.0, 0.0]
    if name == "clamp":
        p = [(-math.inf if p[0] is None else p[0]), (math.inf if p[1] is None else p[1])]
    return code, p[0], p[1]


def reads_pad_marker(lowering):
    """Mark a native lowering that reads a folded zero pad on its input 0: the pad lowering
    (lower/shape.py) then emits no copy, only a marker whose ``meta["padded_from"]`` holds the
    unpadded input and its top / left padding (``pad_top_left``)."""
    lowering.reads_pad_marker = True
    return lowering


def accepts_padded_input(node, slot: int) -> bool:
    """Whether ``node``'s native lowering reads a folded pad marker in operand ``slot``: a
    capability of the lowering, not of the op (qconv_dynamic shares conv's traits, not this)."""
    lowering = node.opdef.lowerings.get("native")
    return slot == 0 and getattr(lowering, "reads_pad_marker", False)


def norm_axis(axis: int, rank: int) -> int:
    return axis % max(rank, 1)
