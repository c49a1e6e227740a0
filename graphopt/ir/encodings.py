"""Tensor encodings: how a value's elements are stored, as opposed to what they mean.

Two encodings exist today:

* **Quantization** is part of the type: ``TensorType.quant`` (``graphopt.ir.types.QuantInfo``).
  Scale and zero point change what the stored integers *mean*, so two values with different
  quantization have different types, compare unequal and print differently.
* **Sparsity (CSR)**, this module: ``attach_sparse(value)`` records a ``SparseWeight``, the CSR
  arrays of a constant's own non-zeros, and ``sparse_weight(value)`` looks it up. A CSR record
  never changes a value's meaning (the dense array stays the truth; every backend may ignore the
  record), it only tells a backend that a sparse kernel can run this weight. The printer marks
  it ``sparse(nnz=N)`` after the constant's type and the parser rebuilds it from the array.

Why the CSR record is keyed to the constant's data array rather than stored in ``TensorType``
or in a slot of ``Value``: it is derived data, a function of exactly those bytes.

* Not in the type: ``TensorType`` is frozen, hashed and compared by shape inference, the
  verifier and every rewrite rule; a pruned weight would then no longer have the type its users
  expect, and large arrays would sit inside hashing and equality. Keeping types small and
  semantic keeps equality simple.
* Keyed to the (read-only) array: the record follows the data wherever the data goes
  (``graph.clone()`` shares arrays, ``add_constant(v.data)`` re-registers the same array) and
  disappears by construction when a pass replaces the array (a pruned, folded or transposed
  weight is a new array whose zeros must be re-examined), with no slot for clone, parser or
  passes to keep in sync. A weak reference drops the record with its array.

Pruning (``graphopt.prune``) decides which weights get a record (``mark_sparse``); backends decide
whether to use it (the native runtime's cost model lives in ``graphopt.native.lower.sparse``).
Both build on this module; the IR depends on neither.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from graphopt.ir.graph import Value


@dataclass(frozen=True, eq=False)
class SparseWeight:
    """CSR of a weight seen as ``[rows=out_features, cols=in_features]`` (row-major).

    The matrix view is the layout of ``linear``'s weight; conv weights are
    ``[C_out, C_in/groups * kh * kw]``; a ``matmul`` right operand ``[K, N]`` is stored
    transposed (``transposed=True``).
    """

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
        """The CSR of a 2-D array (its non-zeros, row-major)."""
        matrix = np.asarray(matrix, dtype=np.float32)
        rows, cols = np.nonzero(matrix)
        indptr = np.zeros(matrix.shape[0] + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=matrix.shape[0]), out=indptr[1:])
        return SparseWeight((int(matrix.shape[0]), int(matrix.shape[1])), indptr,
                            cols.astype(np.int32), matrix[rows, cols].copy(), transposed)

    def __repr__(self) -> str:
        return (f"SparseWeight({list(self.shape)}, nnz={self.nnz}, "
                f"sparsity={self.sparsity:.1%}{', transposed' if self.transposed else ''})")


# id(array) -> (weak reference to the array, its record). The weak reference both drops the entry
# when the array dies and guards against a new array reusing a dead one's id.
_RECORDS: dict[int, tuple[weakref.ref, SparseWeight]] = {}


def _matrix(value: Value, transposed: bool) -> np.ndarray:
    data = value.data
    if transposed:
        return data.T
    return data.reshape(data.shape[0], -1)


def attach_sparse(value: Value, transposed: bool = False) -> SparseWeight:
    """Compute and record the CSR form of constant ``value`` (f32, rank >= 2).

    Raises:
        ValueError: ``value`` is not a constant of rank >= 2 (exactly 2 when ``transposed``).
    """
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
