"""Losses and linear algebra that ONNX graphs carry -> "nll_loss", "det" (csrc/rt_loss.cpp).

nll_loss is lowered because exported graphs keep it (ONNX NegativeLogLikelihoodLoss and the
expansion of SoftmaxCrossEntropyLoss evaluate a loss at inference: calibration and evaluation
graphs); its kernel accumulates in double and checks every target.
"""

from __future__ import annotations

from graphopt.ir.dtypes import DType
from graphopt.native.lower._common import dtype_code
from graphopt.native.refs import numel
from graphopt.ops.registry import register_lowering

_FLOATS = (DType.float32, DType.float64)
_NLL_REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}
_TORCH_IGNORE_INDEX = -100  # F.nll_loss's default, what ignore_index=None means


@register_lowering("native", "nll_loss")
def lower_nll_loss(ctx) -> None:
    dtype = ctx.out_dtype(0)
    if dtype not in _FLOATS or ctx.in_dtype(0) != dtype:
        ctx.unsupported(f"nll_loss in {ctx.in_dtype(0)}")
    if ctx.in_dtype(1) not in (DType.int32, DType.int64):
        ctx.unsupported(f"nll_loss targets of dtype {ctx.in_dtype(1)}")
    reduction = ctx.attrs["reduction"]
    if reduction not in _NLL_REDUCTIONS:
        ctx.invalid(f"reduction {reduction!r} is not one of {sorted(_NLL_REDUCTIONS)}")
    x = ctx.contiguous(0)
    shape = x.shape
    if len(shape) < 2:
        ctx.unsupported(f"nll_loss of a rank-{len(shape)} input (expects [N, C, ...])")
    n, c, inner = shape[0], shape[1], numel(shape[2:])
    target = ctx.contiguous(1)
    if target.numel != n * inner:
        ctx.invalid(f"target {target.shape} does not match input {shape}")
    weight = ctx.cast(2, dtype) if ctx.has(2) else None
    ignore = ctx.attrs["ignore_index"]
    out = ctx.output(0)
    ctx.emit("nll_loss", [out, x, target, weight],
             [n, c, inner, dtype_code(ctx, target.dtype), _NLL_REDUCTIONS[reduction],
              _TORCH_IGNORE_INDEX if ignore is None else ignore, dtype_code(ctx, dtype)])


@register_lowering("native", "det")
def lower_det(ctx) -> None:
    dtype = ctx.in_dtype(0)
    if dtype not in _FLOATS:
        ctx.unsupported(f"det of {dtype}")
    x = ctx.contiguous(0)
    n = x.shape[-1]
    if len(x.shape) < 2 or x.shape[-2] != n:
        ctx.invalid(f"det of a non-square input {x.shape}")
    out = ctx.output(0)
    if out.numel == 0:
        return
    ctx.emit("det", [out, x], [numel(x.shape[:-2]), n, dtype_code(ctx, dtype)])
