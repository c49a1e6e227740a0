"""Sparse index coding of a pruned weight (Deep Compression, section 2.1).

The weight is read as one flat sequence. Each kept (non-zero) entry is stored with the number
of zeros skipped since the previous stored entry, in ``index_bits`` bits (the paper: 8 for
conv layers, 5 for fully connected). When a run of zeros is longer than the width can count,
a filler entry holding a zero is stored with the largest count, and counting resumes: a filler
is the price of a long gap, paid rarely when the width fits the gap statistics.

``values`` is whatever is stored per entry (codebook indices, or the weights themselves); a
filler holds ``filler``. Decoding is exact: the positions come back from the gaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphopt.errors import CompressionError


@dataclass(frozen=True)
class SparseCode:
    gaps: np.ndarray  # uint8 / uint16: zeros skipped before each stored entry
    values: np.ndarray  # the stored entries (fillers included)
    length: int  # elements of the flat weight
    index_bits: int


def encode_sparse(values: np.ndarray, kept: np.ndarray, index_bits: int,
                  filler=0) -> SparseCode:
    """``values`` and ``kept`` are flat (or same-shaped) arrays: entries where ``kept`` is True
    are stored. ``filler`` is the value stored by filler entries."""
    if not isinstance(index_bits, int) or not 1 <= index_bits <= 16:
        raise CompressionError(f"index_bits={index_bits!r}: a gap takes 1 to 16 bits")
    values, kept = np.ravel(values), np.ravel(np.asarray(kept, dtype=bool))
    if values.shape != kept.shape:
        raise CompressionError(f"values {values.shape} and kept {kept.shape} differ in size")
    limit = (1 << index_bits) - 1
    positions = np.flatnonzero(kept)
    gaps = np.diff(positions, prepend=-1) - 1  # zeros before each kept entry
    # A gap g needs g // (limit + 1) fillers, each standing for `limit` zeros and itself.
    fillers = gaps // (limit + 1)
    total = positions.size + int(fillers.sum())
    out_gaps = np.empty(total, dtype=np.uint8 if index_bits <= 8 else np.uint16)
    out_values = np.empty(total, dtype=values.dtype)
    # Each kept entry lands after the fillers of every gap up to and including its own.
    slot = np.arange(positions.size) + np.cumsum(fillers)
    out_gaps[slot] = gaps - fillers * (limit + 1)
    out_values[slot] = values[positions]
    filler_slots = np.ones(total, dtype=bool)
    filler_slots[slot] = False
    out_gaps[filler_slots] = limit
    out_values[filler_slots] = filler
    return SparseCode(out_gaps, out_values, int(values.size), index_bits)


def decode_sparse(code: SparseCode, zero=0) -> np.ndarray:
    """The flat weight: stored entries at their positions, ``zero`` elsewhere (a filler's
    position holds its stored value, which is the zero it stands for)."""
    gaps = code.gaps.astype(np.int64)
    if gaps.size != code.values.size:
        raise CompressionError(f"sparse code: {gaps.size} gaps for {code.values.size} values")
    if gaps.size and int(gaps.max()) > (1 << code.index_bits) - 1:
        raise CompressionError(f"sparse code: a gap exceeds {code.index_bits} bits")
    positions = np.cumsum(gaps + 1) - 1
    if positions.size and (positions[-1] >= code.length or code.length < 0):
        raise CompressionError(f"sparse code: entries run past the weight's {code.length} "
                               "elements (corrupt or truncated)")
    out = np.full(code.length, zero, dtype=code.values.dtype)
    out[positions] = code.values
    return out
