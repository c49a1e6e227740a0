"""Sparse weights: the CSR form of a zero-heavy constant, for backends with sparse kernels.

Unstructured pruning keeps weights dense (zeros folded in), so every backend runs the pruned
graph unchanged. ``attach_sparse(value)`` additionally records a ``SparseWeight`` on the constant:
its sparsity and the CSR arrays of the weight as an ``[out_features, in_features]`` matrix (the
layout of ``linear``'s weight; conv weights are ``[C_out, C_in/groups * kh * kw]``; a ``matmul``
right operand ``[K, N]`` is stored transposed, ``transposed=True``). A backend asks
``sparse_weight(value)`` and, when ``use_sparse_kernel(sw, rows)`` says the sparse kernel wins,
calls ``sparse_linear`` (the native ``graphopt._C.sparse_linear`` CSR kernel,
``csrc/sparse_gemm.cpp``) instead of its dense GEMM.

The record is attached to the constant's (read-only) array, so it survives ``graph.clone()``
(clones share arrays) and disappears as soon as a pass replaces the array (a pruned, folded or
transposed weight is a new array whose zeros must be re-examined: ``mark_sparse(graph)``).
It is not part of the IR text form; ``mark_sparse`` rebuilds it from the zeros.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np

from graphopt.ir.graph import Graph, Value

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


@dataclass(frozen=True, eq=False)
class SparseWeight:
    """CSR of a weight seen as ``[rows=out_features, cols=in_features]`` (row-major)."""

    shape: tuple[int, int]
    indptr: np.ndarray  # int32 [rows + 1]
    indices: np.ndarray  # int32 [nnz], column of each stored value
    values: np.ndarray  # float32 [nnz]
    transposed: bool = False  # CSR of data.T (a matmul right operand [K, N])

    @property
    def nnz(self) -> int:
        return int(len(self.values))

    @property
    def density(self) -> float:
        return self.nnz / max(self.shape[0] * self.shape[1], 1)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def to_dense(self) -> np.ndarray:
        dense = np.zeros(self.shape, dtype=self.values.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        dense[rows, self.indices] = self.values
        return dense

    @staticmethod
    def from_dense(matrix: np.ndarray, transposed: bool = False) -> "SparseWeight":
        matrix = np.asarray(matrix, dtype=np.float32)
        rows, cols = np.nonzero(matrix)
        indptr = np.zeros(matrix.shape[0] + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=matrix.shape[0]), out=indptr[1:])
        return SparseWeight((int(matrix.shape[0]), int(matrix.shape[1])), indptr,
                            cols.astype(np.int32), matrix[rows, cols].copy(), transposed)

    def __repr__(self) -> str:
        return (f"SparseWeight({list(self.shape)}, nnz={self.nnz}, "
                f"sparsity={self.sparsity:.1%}{', transposed' if self.transposed else ''})")


_RECORDS: dict[int, tuple[weakref.ref, SparseWeight]] = {}


def _matrix(value: Value, transposed: bool) -> np.ndarray:
    data = value.data
    if transposed:
        return data.T
    return data.reshape(data.shape[0], -1)


def attach_sparse(value: Value, transposed: bool = False) -> SparseWeight:
    """Compute and record the CSR form of constant ``value`` (f32, rank >= 2)."""
    if not value.is_constant or value.data.ndim < 2:
        raise ValueError(f"%{value.name} is not a constant of rank >= 2")
    if transposed and value.data.ndim != 2:
        raise ValueError(f"transposed CSR needs a 2-D constant, %{value.name} is {value.type}")
    sw = SparseWeight.from_dense(_matrix(value, transposed), transposed)
    data = value.data
    key = id(data)

    def forget(ref: weakref.ref) -> None:
        if key in _RECORDS and _RECORDS[key][0] is ref:
            del _RECORDS[key]

    _RECORDS[key] = (weakref.ref(data, forget), sw)
    return sw


def sparse_weight(value: Value) -> SparseWeight | None:
    """The recorded CSR form of constant ``value``, or None (never recorded, or data changed)."""
    data = getattr(value, "data", None)
    if data is None:
        return None
    entry = _RECORDS.get(id(data))
    if entry is None or entry[0]() is not data:
        return None
    return entry[1]


def mark_sparse(graph: Graph, min_sparsity: float = 0.5) -> dict[str, SparseWeight]:
    """Attach CSR records to every weight operand with at least ``min_sparsity`` zeros."""
    from graphopt.prune.masks import weight_operands

    out = {}
    for value, transposed in weight_operands(graph).items():
        zeros = 1.0 - np.count_nonzero(value.data) / max(value.data.size, 1)
        if zeros >= min_sparsity:
            out[value.name] = attach_sparse(value, transposed)
    return out


def use_sparse_kernel(sw: SparseWeight | None, rows: int = 128) -> bool:
    """Whether the CSR kernel beats the dense GEMM for ``rows`` input rows (the cost model
    above; the native lowering asks this for every linear whose weight has a record)."""
    if sw is None or rows < 1:
        return False
    return sw.density <= crossover_density(rows)


def native_available() -> bool:
    try:
        from graphopt import _C  # noqa: F401
    except ImportError:
        return False
    return hasattr(_C, "sparse_linear")


def sparse_linear(x, sw: SparseWeight, bias=None, activation: str = "none", threads: int = 0):
    """``activation(x @ W.T + bias)`` with W in CSR form; x is ``[M, in_features]`` float32.

    Uses the native kernel when built, else a scipy CSR product (same result up to rounding).
    """
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if native_available():
        from graphopt import _C

        return _C.sparse_linear(x, sw.indptr, sw.indices, sw.values, sw.shape[1], bias,
                                activation, threads)
    from scipy.sparse import csr_matrix

    if activation != "none":
        raise ValueError("the scipy fallback supports activation='none' only")
    w = csr_matrix((sw.values, sw.indices, sw.indptr), shape=sw.shape)
    y = np.asarray((w @ x.T).T, dtype=np.float32)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float32)
    return y
