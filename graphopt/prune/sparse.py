"""Sparse weights for pruned graphs: which constants get a CSR record, and the CSR product.

Unstructured pruning keeps weights dense (zeros folded in), so every backend runs the pruned
graph unchanged. The CSR record itself is an IR tensor encoding (``graphopt.ir.encodings``:
``SparseWeight``, ``attach_sparse``, ``sparse_weight``, re-exported here for compatibility); this
module decides which weights get one (``mark_sparse``: every weight operand with enough zeros)
and runs ``y = x @ W.T`` from a record (``sparse_linear``: the native
``graphopt._C.sparse_linear`` CSR kernel, ``csrc/sparse_gemm.cpp``, with a scipy fallback).
Whether a backend *uses* a record is the backend's call: the native runtime's measured cost
model is ``graphopt.native.lower.sparse.use_sparse_kernel``.

A record is keyed to the constant's (read-only) array, so it survives ``graph.clone()`` (clones
share arrays) and disappears as soon as a pass replaces the array (a pruned, folded or
transposed weight is a new array whose zeros must be re-examined: ``mark_sparse(graph)``). The
IR text marks it ``sparse(nnz=N)`` and the parser rebuilds it.
"""

from __future__ import annotations

import numpy as np

from graphopt import _extension
from graphopt.ir.encodings import SparseWeight, attach_sparse, sparse_weight
from graphopt.ir.graph import Graph

__all__ = ["SparseWeight", "attach_sparse", "mark_sparse", "native_available", "sparse_linear",
           "sparse_weight"]


def mark_sparse(graph: Graph, min_sparsity: float = 0.5) -> dict[str, SparseWeight]:
    """Attach CSR records to every weight operand with at least ``min_sparsity`` zeros."""
    from graphopt.prune.masks import weight_operands

    out = {}
    for value, transposed in weight_operands(graph).items():
        zeros = 1.0 - np.count_nonzero(value.data) / max(value.data.size, 1)
        if zeros >= min_sparsity:
            out[value.name] = attach_sparse(value, transposed)
    return out


def native_available() -> bool:
    """Whether the compiled extension is built and has the CSR kernel."""
    _C = _extension.load_or_none()
    return _C is not None and hasattr(_C, "sparse_linear")


def sparse_linear(x, sw: SparseWeight, bias=None, activation: str = "none", threads: int = 0):
    """``activation(x @ W.T + bias)`` with W in CSR form; x is ``[M, in_features]`` float32.

    Uses the native kernel when built, else a scipy CSR product (same result up to rounding).
    """
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if native_available():
        return _extension.load().sparse_linear(x, sw.indptr, sw.indices, sw.values, sw.shape[1],
                                               bias, activation, threads)
    from scipy.sparse import csr_matrix

    if activation != "none":
        raise ValueError("the scipy fallback supports activation='none' only")
    w = csr_matrix((sw.values, sw.indices, sw.indptr), shape=sw.shape)
    y = np.asarray((w @ x.T).T, dtype=np.float32)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float32)
    return y
