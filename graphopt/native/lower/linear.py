"""linear / fused_linear / matmul / fused_matmul -> the "gemm" kernel (csrc/rt_linear.cpp);
a float64 or integer matmul -> "matmul_wide" (csrc/rt_wide.cpp).

A linear whose weight is sparse enough runs the CSR kernel instead (``sparse.py``); one whose
weight is read through its codebook runs "linear_codebook" (``codebook.py``). A weight
that is a plan constant is packed once when the plan is built; activations are read in
place through their strides (a transposed or sliced view needs no copy). A residual that dies
at this node becomes the output buffer and the product accumulates onto it. With
``precision="bf16"`` a product whose B is a constant shared by the batch (a weight) computes in
bf16 with fp32 sums (csrc/rt_bf16.h); products of two activations stay fp32. ``linear_bf16``
(``graphopt.quantize(graph, "bf16-compute")``) always takes that kernel.
"""

from __future__ import annotations

import numpy as np
import torch

from graphopt.ir.dtypes import DType, numpy_to_torch
from graphopt.native.lower._common import activation, dtype_code, require_float32
from graphopt.native.lower.codebook import lookup_weight, reads_codebook_weight
from graphopt.native.lower.sparse import try_sparse_linear
from graphopt.native.refs import SPACE_CONST
from graphopt.ops.registry import register_lowering


# matmul outside float32: the "matmul_wide" kernel (csrc/rt_wide.cpp), exact sums in
# double for float64, products wrapping like numpy / torch for the integers.
WIDE_MATMUL_DTYPES = (DType.float64, DType.int64, DType.int32, DType.int16, DType.int8,
                      DType.uint8)


def _emit_gemm(ctx, a, a_rows_cols, b, b_strides, n, batch, a_batch, b_batch, bias, residual,
               act, alpha=1.0, bf16=None):
    m, k, a_rs, a_cs = a_rows_cols
    slots = (3,) if residual is not None and alpha == 1.0 else ()
    out = ctx.output(0, inplace=slots)
    in_place = residual is not None and out.buffer is residual.buffer and \
        out.offset == residual.offset
    code, p0, p1 = act
    if bf16 is None:
        bf16 = ctx.builder.precision == "bf16" and b.buffer.space == SPACE_CONST and \
            not any(b_batch)
    ctx.emit("gemm", [out, a, b, bias, residual],
             [len(batch), *batch, *a_batch, *b_batch, m, n, k, a_rs, a_cs, *b_strides, code,
              int(in_place), int(bf16)],
             [alpha, p0, p1])


def _codebook_linear(ctx, fused: bool) -> bool:
    """A weight read through its codebook (lower/codebook.py): one "linear_codebook" step."""
    shared = lookup_weight(ctx, 1)
    if shared is None:
        return False
    indices, centroids = shared
    x, (rows, k, a_rs, a_cs) = _input_matrix(ctx)
    n = indices.shape[0]
    code, p0, p1 = activation(ctx, ctx.attrs.get("activation", "none"),
                              ctx.attrs.get("activation_params", ()))
    residual = ctx.contiguous(3) if fused and ctx.has(3) else None
    ctx.emit("linear_codebook",
             [ctx.output(0), x, ctx.builder.const_ref(indices, DType.uint8),
              ctx.builder.const_ref(centroids, DType.float32), ctx.contiguous(2), residual],
             [rows, n, k, a_rs, a_cs, centroids.size, code], [p0, p1])
    return True


def _linear(ctx, fused: bool) -> None:
    require_float32(ctx, 0, 2, 3)
    if _codebook_linear(ctx, fused):
        return
    require_float32(ctx, 1)
    if try_sparse_linear(ctx, fused):  # a sparse weight the cost model sends to CSR
        return
    x, (rows, k, a_rs, a_cs) = _input_matrix(ctx)
    w = ctx.weight_ref(1)  # [N, K]: B(k, n) = W[n, k], any strides (the GEMM packs it)
    n = w.shape[0]
    bias = ctx.contiguous(2)
    residual = ctx.contiguous(3) if fused and ctx.has(3) else None
    attrs = ctx.attrs
    act = activation(ctx, attrs.get("activation", "none"), attrs.get("activation_params", ()))
    _emit_gemm(ctx, x, (rows, k, a_rs, a_cs), w, (w.strides[1], w.strides[0]), n, [], [], [],
               bias, residual, act)


def _input_matrix(ctx):
    """Input 0 read in place as a (rows, K) matrix view, else a contiguous copy of it:
    (ref, (rows, k, row_stride, col_stride))."""
    x = ctx.ref(0)
    mat = x.matrix()
    if mat is None:
        x = ctx.contiguous(0)
        mat = x.matrix()
    return x, mat


@register_lowering("native", "linear_bf16")
def lower_linear_bf16(ctx) -> None:
    """The bf16 GEMM whatever the compile precision: the op itself says bf16 (its weight is
    widened to f32 at plan time, exactly; the kernel rounds x and repacks the weight)."""
    require_float32(ctx, 0, 2, 3)
    bits = ctx.const(1)
    if bits is None or ctx.in_dtype(1) is not DType.bfloat16:
        ctx.unsupported("the bf16 weight is not a bf16 constant")
    wide = numpy_to_torch(bits, DType.bfloat16).to(torch.float32).numpy()
    w = ctx.builder.const_ref(np.ascontiguousarray(wide), DType.float32)
    x, (rows, k, a_rs, a_cs) = _input_matrix(ctx)
    residual = ctx.contiguous(3) if ctx.has(3) else None
    attrs = ctx.attrs
    act = activation(ctx, attrs.get("activation", "none"), attrs.get("activation_params", ()))
    _emit_gemm(ctx, x, (rows, k, a_rs, a_cs), w, (w.strides[1], w.strides[0]), w.shape[0], [],
               [], [], ctx.contiguous(2), residual, act, bf16=True)


@register_lowering("native", "linear")
@reads_codebook_weight
def lower_linear(ctx) -> None:
    _linear(ctx, fused=False)


@register_lowering("native", "fused_linear")
@reads_codebook_weight
def lower_fused_linear(ctx) -> None:
    _linear(ctx, fused=True)


def _batch_strides(ref, batch_rank: int, batch_shape) -> list[int]:
    """Strides of ref's batch dims aligned to the broadcast batch (0 where broadcast)."""
    dims = ref.shape[:-2]
    strides = ref.strides[:-2]
    lead = batch_rank - len(dims)
    out = []
    for i in range(batch_rank):
        j = i - lead
        if j < 0 or dims[j] == 1:
            out.append(0)
        else:
            out.append(strides[j])
    return out


def _matmul(ctx, fused: bool) -> None:
    wide = not fused and ctx.out_dtype(0) in WIDE_MATMUL_DTYPES
    if wide and not ctx.in_dtype(0) == ctx.in_dtype(1) == ctx.out_dtype(0):
        ctx.unsupported(f"matmul of {ctx.in_dtype(0)} and {ctx.in_dtype(1)}")
    if not wide:
        require_float32(ctx, 0, 1, 2, 3)
    a, b = ctx.ref(0), ctx.ref(1)
    if a.numel == 0 or b.numel == 0:
        ctx.unsupported("empty matmul operands")
    if len(a.shape) == 1:
        a = a.with_view(a.offset, (1, a.shape[0]), (0, a.strides[0]))
    if len(b.shape) == 1:
        b = b.with_view(b.offset, (b.shape[0], 1), (b.strides[0], 0))
    if fused and ctx.attrs["trans_a"]:
        a = a.permuted(list(range(len(a.shape) - 2)) + [len(a.shape) - 1, len(a.shape) - 2])
    if fused and ctx.attrs["trans_b"]:
        b = b.permuted(list(range(len(b.shape) - 2)) + [len(b.shape) - 1, len(b.shape) - 2])
    m, k = a.shape[-2:]
    n = b.shape[-1]
    rank = max(len(a.shape), len(b.shape)) - 2
    batch = []
    for i in range(rank):
        da = a.shape[i - (rank - (len(a.shape) - 2))] if i >= rank - (len(a.shape) - 2) else 1
        db = b.shape[i - (rank - (len(b.shape) - 2))] if i >= rank - (len(b.shape) - 2) else 1
        batch.append(max(da, db))
    if wide:
        ctx.emit("matmul_wide", [ctx.output(0), a, b],
                 [dtype_code(ctx, ctx.out_dtype(0)), len(batch), *batch,
                  *_batch_strides(a, rank, batch), *_batch_strides(b, rank, batch), m, n, k,
                  a.strides[-2], a.strides[-1], b.strides[-2], b.strides[-1]])
        return
    bias = ctx.contiguous(2) if fused else None
    residual = ctx.contiguous(3) if fused and ctx.has(3) else None
    attrs = ctx.attrs
    act = activation(ctx, attrs.get("activation", "none"), attrs.get("activation_params", ()))
    alpha = float(attrs.get("alpha", 1.0)) if fused else 1.0
    _emit_gemm(ctx, a, (m, k, a.strides[-2], a.strides[-1]), b, (b.strides[-2], b.strides[-1]), n,
               batch, _batch_strides(a, rank, batch), _batch_strides(b, rank, batch), bias,
               residual, act, alpha)


@register_lowering("native", "matmul")
def lower_matmul(ctx) -> None:
    _matmul(ctx, fused=False)


@register_lowering("native", "fused_matmul")
def lower_fused_matmul(ctx) -> None:
    _matmul(ctx, fused=True)
