"""Ops that make tensors from attributes or shapes: arange, full, shape (plan-time values),
tril / triu (a plan-time mask and "where").

Their results depend only on attributes and on the input shapes, which a plan fixes, so the
builder folds them when it can; these lowerings cover the rest (a symbolic ``end`` bound at
this call, an input that is not a constant).
"""

from __future__ import annotations

import numpy as np
import torch

from graphopt.ir.dtypes import DType, torch_to_numpy
from graphopt.limits import check_bytes, numel_of
from graphopt.native import refs as R
from graphopt.native.lower.shape import _bit_pattern
from graphopt.ops.registry import register_lowering


def _constant_output(ctx, tensor: torch.Tensor) -> None:
    """Output 0 is this plan-time value (checked against the declared shape)."""
    if tuple(tensor.shape) != ctx.out_shape(0):
        ctx.invalid(f"computes shape {tuple(tensor.shape)}, declared {ctx.out_shape(0)}")
    array, _ = torch_to_numpy(tensor.to(ctx.out_dtype(0).torch))
    ctx.builder.consts[ctx.node.outputs[0]] = array


@register_lowering("native", "arange")
def lower_arange(ctx) -> None:
    a = ctx.attrs
    shape = ctx.out_shape(0)
    check_bytes(numel_of(shape) * ctx.out_dtype(0).itemsize, f"%{ctx.name} (op 'arange')")
    _constant_output(ctx, torch.arange(a["start"], a["end"], a["step"],
                                       dtype=ctx.out_dtype(0).torch))


@register_lowering("native", "full")
def lower_full(ctx) -> None:
    dtype = ctx.out_dtype(0)
    out = ctx.output(0)
    if out.numel:
        ctx.emit("fill", [out], [dtype.itemsize, out.numel, _bit_pattern(ctx.attrs["value"],
                                                                          dtype)])


@register_lowering("native", "shape")
def lower_shape(ctx) -> None:
    start, end = ctx.attrs["start"], ctx.attrs["end"]
    _constant_output(ctx, torch.tensor(ctx.in_shape(0)[start:end], dtype=torch.int64))


def _triangle(ctx, lower: bool) -> None:
    shape = ctx.in_shape(0)
    if len(shape) < 2:
        ctx.invalid(f"input of rank {len(shape)}: tril / triu need a matrix")
    rows, cols = shape[-2:]
    k = ctx.attrs["diagonal"]
    mask = (np.tril if lower else np.triu)(np.ones((rows, cols), dtype=bool), k)
    dtype = ctx.out_dtype(0)
    cond = ctx.builder.const_ref(mask, DType.bool).expanded(shape)
    zero = ctx.builder.const_ref(np.zeros((), dtype=dtype.numpy), dtype).expanded(shape)
    x = ctx.ref(0)
    out = ctx.output(0, inplace=(0,))
    if out.numel == 0:
        return
    dims, (sc, sa, sb) = R.collapse_dims(shape, cond.strides, x.strides, zero.strides)
    ctx.emit("where", [out, cond, x, zero], [dtype.itemsize, len(dims), *dims, *sc, *sa, *sb])


@register_lowering("native", "tril")
def lower_tril(ctx) -> None:
    _triangle(ctx, lower=True)


@register_lowering("native", "triu")
def lower_triu(ctx) -> None:
    _triangle(ctx, lower=False)
