"""linear / fused_linear with a sparse weight -> the "sparse_linear" CSR kernel (rt_sparse.cpp).

Called first by the dense linear lowering (``linear.py``): when it emits the CSR kernel, the
dense GEMM is not emitted. Which kernel runs is decided per node at plan build, from the
builder's ``sparse`` mode (``graphopt.compile(..., backend="native", sparse=...)``):

* ``"auto"`` (default): the weight carries a CSR record (``graphopt.prune.sparse``: set by
  ``prune-magnitude`` / ``mark_sparse``) and ``use_sparse_kernel(record, rows)`` - the cost model
  measured against the packed dense GEMM, which depends on the number of rows M - says CSR wins;
* ``"never"``: always the dense GEMM;
* ``"always"``: every constant float32 weight runs in CSR (a record is built from its zeros when
  it has none); for tests and measurements.

The plan says what was chosen: such nodes' steps have ``kernel == "sparse_linear"``.
"""

from __future__ import annotations

from graphopt.ir.dtypes import DType
from graphopt.native.lower._common import activation

SPARSE_MODES = ("auto", "never", "always")
ROW_PATH_MAX_ROWS = 4  # rt_sparse.cpp kSparseRowPathMaxRows: at most this many rows need no xt
TILE = 64  # sparse_gemm.h kTile


def chosen_record(ctx, rows: int):
    """The SparseWeight to run this linear node with, or None for the dense GEMM."""
    from graphopt.prune.sparse import SparseWeight, sparse_weight, use_sparse_kernel

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
