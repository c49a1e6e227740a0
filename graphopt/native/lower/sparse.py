"""linear / fused_linear with a sparse weight -> the "sparse_linear" CSR kernel (rt_sparse.cpp).

Called first by the dense linear lowering (``linear.py``): when it emits the CSR kernel, the
dense GEMM is not emitted. Which kernel runs is decided per node at plan build, from the
builder's ``sparse`` mode (``graphopt.compile(..., backend="native", sparse=...)``):

* ``"auto"`` (default): the weight carries a CSR record (the IR encoding
  ``graphopt.ir.encodings.sparse_weight``: set by ``prune-magnitude`` / ``mark_sparse``) and
  ``use_sparse_kernel(record, rows)`` - this runtime's cost model, below, measured against the
  packed dense GEMM, which depends on the number of rows M - says CSR wins;
* ``"never"``: always the dense GEMM;
* ``"always"``: every constant float32 weight runs in CSR (a record is built from its zeros when
  it has none); for tests and measurements;
* ``"measure"``: like ``"auto"``, but each such linear is first timed both ways on this machine
  (``sparse_measure.py``, cached per machine); ``"auto"`` too follows a cached measurement of
  the same layer shape, density, epilogue and row count when there is one.

The plan says what was chosen: such nodes' steps have ``kernel == "sparse_linear"``.
"""

from __future__ import annotations

import math

from graphopt.ir.dtypes import DType
from graphopt.ir.encodings import SparseWeight, sparse_weight
from graphopt.native.lower._common import activation

SPARSE_MODES = ("auto", "never", "always", "measure")
ROW_PATH_MAX_ROWS = 4  # rt_sparse.cpp kSparseRowPathMaxRows: at most this many rows need no xt
TILE = 64  # sparse_gemm.h kTile

# Cost model of the native runtime's "sparse_linear" step (csrc/rt_sparse.cpp) against its
# packed dense "gemm" step: the density at or below which CSR wins, as a function of the rows M,
# measured (benchmarks/bench_prune.py, plan-step comparison on BERT-base's linears 768x768,
# 768x3072, 3072x768; AVX2, 2 threads, interleaved medians). CSR speedup over dense at
# 50 / 70 / 80 / 90 / 95% sparsity, range over the three shapes, three runs (2026-12-03, load
# average 3.1-5.0 on 2 cores: shared machine, ratios only):
#   M=1    run 1: 0.52-0.81 / 0.80-1.29 / 1.10-1.94 / 1.65-3.83 / 1.73-7.79
#          run 2: 0.69-0.86 / 1.08-1.43 / 1.60-2.15 / 2.88-5.17 / 3.89-10.4
#          run 3: 0.56-0.72 / 0.95-1.14 / 1.36-1.68 / 2.17-3.44 / 3.27-6.86   -> density 0.23
#   M=4    run 1: 0.36-0.44 / 0.54-0.74 / 0.76-1.04 / 1.58-1.80 / 2.58-3.27
#          run 2: 0.41-0.45 / 0.62-0.74 / 0.87-1.04 / 1.71-1.79 / 2.55-3.64
#          run 3: 0.33-0.43 / 0.51-0.72 / 0.71-1.02 / 1.59-1.73 / 2.75-3.25   -> 0.16
#   M=5    run 1: 0.21-0.27 / 0.35-0.45 / 0.53-0.67 / 1.03-1.26 / 1.57-2.24   -> 0.10
#   M=16   run 1: 0.34-0.52 / 0.57-0.81 / 0.78-1.30 / 1.84-2.13 / 2.76-3.73
#          run 2: 0.34      / 0.56-0.59 / 0.85-0.92 / 1.67-1.91 / 2.70-3.22
#          run 3: 0.30-0.36 / 0.50-0.64 / 0.76-0.94 / 1.51-1.85 / 2.59-3.27   -> 0.16
#   M=128  run 1: 0.77-0.88 / 1.18-1.42 / 1.74-2.04 / 2.92-3.43 / 5.10-5.57
#          run 2: 0.77-0.80 / 1.19-1.29 / 1.70-1.87 / 2.87-3.29 / 4.41-5.12
#          run 3: 0.81-0.86 / 1.30-1.33 / 1.86-1.95 / 3.30-3.52 / 5.22-5.44   -> 0.36
# Each crossover is where the slowest shape of the worst run breaks even (speedup interpolated
# between the measured sparsities), rounded down. Up to 4 rows CSR runs a gathered dot product
# per row against the dense GEMV, which streams the weight once: CSR wins early. From 5 rows the
# dense side is the 6x16 GEMM (already efficient at M = 5) and CSR costs about the same per
# (non-zero, 64-row tile) however few rows the tile holds: it wins late for a part-filled tile
# and earlier as tiles fill. Between the measured M the density is interpolated in log2(M);
# beyond them it is held.
SPARSE_CROSSOVER = ((1, 0.23), (4, 0.16), (5, 0.10), (16, 0.16), (128, 0.36))


def crossover_density(rows: int) -> float:
    """The density at or below which the CSR kernel beats the dense one for ``rows`` rows."""
    points = SPARSE_CROSSOVER
    m = max(int(rows), 1)
    if m <= points[0][0]:
        return points[0][1]
    for (m0, d0), (m1, d1) in zip(points, points[1:]):
        if m <= m1:
            t = (math.log2(m) - math.log2(m0)) / (math.log2(m1) - math.log2(m0))
            return d0 + t * (d1 - d0)
    return points[-1][1]


def use_sparse_kernel(sw: SparseWeight | None, rows: int = 128) -> bool:
    """Whether the CSR kernel beats the dense GEMM for ``rows`` input rows (the cost model
    above; the native lowering asks this for every linear whose weight has a record)."""
    if sw is None or rows < 1:
        return False
    return sw.density <= crossover_density(rows)


def chosen_record(ctx, rows: int):
    """The SparseWeight to run this linear node with, or None for the dense GEMM."""
    mode = getattr(ctx.builder, "sparse", "auto")
    if mode == "never" or not ctx.has(1):
        return None
    weight = ctx.node.inputs[1]
    data = ctx.const(1)
    if data is None or data is not weight.data or weight.dtype != DType.float32:
        return None  # a per-call or plan-folded weight: its zeros are unknown
    record = sparse_weight(weight)
    if record is not None and (record.transposed or record.shape != tuple(data.shape)):
        record = None
    if mode == "always":
        return record or SparseWeight.from_dense(data)
    if record is None:
        return None
    from graphopt.native.lower.sparse_measure import measured_choice

    # This machine's measurement of this layer (sparse_measure.py) overrules the model.
    measured = measured_choice(record, rows, ctx.attrs.get("activation", "none"),
                               ctx.builder.threads or 1, measure=mode == "measure")
    if measured is not None:
        return record if measured else None
    return record if use_sparse_kernel(record, rows) else None


def try_sparse_linear(ctx, fused: bool) -> bool:
    """Emit the CSR kernel for this node when ``chosen_record`` says so; False otherwise."""
    out_shape = ctx.out_shape(0)
    rows = 1
    for d in out_shape[:-1]:
        rows *= d
    record = chosen_record(ctx, rows)
    if record is None:
        return False
    residual = None
    if fused and ctx.has(3):
        if tuple(ctx.in_shape(3)) != tuple(out_shape):
            return False  # a broadcast residual: the dense path handles it
        residual = ctx.contiguous(3)
    x = ctx.ref(0)
    mat = x.matrix()
    if mat is None or mat[3] != 1:
        x = ctx.contiguous(0)
        mat = x.matrix()
    m, k, x_rs, _ = mat
    n = record.shape[0]
    bias = ctx.contiguous(2)
    attrs = ctx.attrs
    code, p0, p1 = activation(ctx, attrs.get("activation", "none"),
                              attrs.get("activation_params", ()))
    out = ctx.output(0, inplace=(3,) if residual is not None else ())
    in_place = residual is not None and out.buffer is residual.buffer and \
        out.offset == residual.offset
    builder = ctx.builder
    csr = [builder.const_ref(record.indptr, DType.int32),
           builder.const_ref(record.indices, DType.int32),
           builder.const_ref(record.values, DType.float32)]
    xt = None
    if m > ROW_PATH_MAX_ROWS:
        xt = ctx.temp((-(-m // TILE) * k * TILE,), DType.float32, "xt")
    ctx.emit("sparse_linear", [out, x, *csr, bias, residual, xt],
             [m, n, k, record.nnz, x_rs, code, int(in_place)], [p0, p1])
    return True
