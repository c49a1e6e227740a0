"""Reductions -> "reduce" (csrc/rt_reduce.cpp) over a contiguous [outer, R, inner] view.

Reduced axes that are adjacent need no copy; otherwise they are permuted to the end into a
scratch buffer first. Integer sums and products accumulate in int64 (torch's result dtype).
"""

from __future__ import annotations

from graphopt.ir.dtypes import DType
from graphopt.native.codes import REDUCE_CODES
from graphopt.native.lower._common import dtype_code
from graphopt.native.refs import numel
from graphopt.ops.registry import register_lowering

_FLOAT_ONLY = {"mean", "var", "std", "logsumexp"}


def _reduce(ctx, op: str, axes) -> None:
    x_shape = ctx.in_shape(0)
    rank = len(x_shape)
    axes = sorted({a % max(rank, 1) for a in axes}) if rank else []
    in_dtype = ctx.in_dtype(0)
    if op in ("sum", "prod") and not in_dtype.is_floating:
        compute = DType.int64
    else:
        compute = in_dtype
    if op in _FLOAT_ONLY and not compute.is_floating:
        ctx.unsupported(f"{op} of {compute}")
    if compute in (DType.float16, DType.bfloat16):
        ctx.unsupported(f"{op} of {compute}")
    x = ctx.cast(0, compute)
    if rank == 0:
        outer, r, inner = 1, 1, 1
    elif axes == list(range(axes[0], axes[-1] + 1)):
        outer = numel(x_shape[: axes[0]])
        r = numel(x_shape[axes[0]: axes[-1] + 1])
        inner = numel(x_shape[axes[-1] + 1:])
    else:
        kept = [i for i in range(rank) if i not in axes]
        moved = x.permuted(kept + axes)
        tmp = ctx.temp(moved.shape, compute, "moved")
        ctx.copy(tmp, moved)
        x = tmp
        outer, r, inner = numel(tuple(x_shape[i] for i in kept)), numel(
            tuple(x_shape[i] for i in axes)), 1
    if r == 0 and op in ("amax", "amin", "argmax", "argmin"):
        ctx.unsupported(f"{op} over an empty axis")
    out = ctx.output(0)
    ctx.emit("reduce", [out, x],
             [REDUCE_CODES[op], dtype_code(ctx, compute), outer, r, inner],
             [float(ctx.attrs.get("correction", 0.0))])


def _register(op: str) -> None:
    @register_lowering("native", op)
    def lower(ctx, _op=op) -> None:
        axes = ctx.attrs["axes"] or tuple(range(len(ctx.in_shape(0))))
        _reduce(ctx, _op, axes)


for _op in ("sum", "mean", "prod", "amax", "amin", "var", "std", "logsumexp", "all", "any"):
    _register(_op)


def _arg(ctx, op: str) -> None:
    axis = ctx.attrs["axis"]
    rank = len(ctx.in_shape(0))
    axes = tuple(range(rank)) if axis is None else (axis,)
    _reduce(ctx, op, axes)


@register_lowering("native", "argmax")
def lower_argmax(ctx) -> None:
    _arg(ctx, "argmax")


@register_lowering("native", "argmin")
def lower_argmin(ctx) -> None:
    _arg(ctx, "argmin")
