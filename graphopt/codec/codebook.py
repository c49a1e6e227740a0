"""Weight sharing: a layer's weights replaced by indices into a small codebook.

k-means in one dimension, as Deep Compression does it: centroids start evenly spaced over
[min, max] of the weights (the paper's "linear" initialization, which keeps the rare large
weights that matter most represented, unlike density-based starts), then Lloyd iterations. In
1-D the nearest centroid is found by binary search between the midpoints of the sorted
centroids, so an iteration costs O(n log k) without an n x k distance matrix.

Pruned weights (zeros outside ``mask``) are not clustered: they decode to exactly 0.0, and the
sparse index coding stores them, not the codebook.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphopt.errors import CompressionError

MAX_BITS = 16


@dataclass(frozen=True)
class Codebook:
    """``centroids[indices]`` is the shared weight (0.0 where ``mask`` is False)."""

    centroids: np.ndarray  # float32 [2**bits] (sorted; unused entries repeat the last)
    indices: np.ndarray  # uint8 (bits <= 8) or uint16, the weight's shape
    mask: np.ndarray | None  # bool, the weight's shape: which weights are kept (None: all)
    bits: int

    def decode(self) -> np.ndarray:
        out = self.centroids[self.indices]
        if self.mask is not None:
            out = np.where(self.mask, out, np.float32(0.0))
        return out.astype(np.float32, copy=False)

    @property
    def stored_bits(self) -> int:
        """Bits of the encoding before entropy coding: an index per kept weight, the
        centroids in float32."""
        kept = self.indices.size if self.mask is None else int(self.mask.sum())
        return kept * self.bits + self.centroids.size * 32


def _assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest (sorted) centroid for each value; ties go to the lower one."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(midpoints, values, side="left")


def share_weights(weight: np.ndarray, bits: int, mask: np.ndarray | None = None,
                  iterations: int = 30) -> Codebook:
    """Cluster ``weight`` (where ``mask`` is True, or everywhere) into 2**bits shared values."""
    if not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise CompressionError(f"bits={bits!r}: a codebook takes 1 to {MAX_BITS} bits")
    w = np.asarray(weight, dtype=np.float32)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != w.shape:
            raise CompressionError(f"mask {mask.shape} does not match the weight {w.shape}")
    values = (w if mask is None else w[mask]).ravel().astype(np.float64)
    if values.size and not np.isfinite(values).all():
        raise CompressionError("the weight holds NaN or infinity; a codebook cannot hold it")
    k = 2 ** bits
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    centroids = np.linspace(lo, hi, k)
    for _ in range(max(0, iterations)):
        assign = _assign(values, centroids)
        sums = np.bincount(assign, weights=values, minlength=k)
        counts = np.bincount(assign, minlength=k)
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        moved = np.sort(moved)  # an emptied centroid keeps its place; order stays monotone
        if np.array_equal(moved, centroids):
            break
        centroids = moved
    centroids = centroids.astype(np.float32)
    index_dtype = np.uint8 if bits <= 8 else np.uint16
    indices = np.zeros(w.shape, dtype=index_dtype)
    chosen = _assign(values.astype(np.float32), centroids).astype(index_dtype)
    if mask is None:
        indices = chosen.reshape(w.shape)
    else:
        indices[mask] = chosen
    return Codebook(centroids, indices, mask, bits)


def centroid_gradients(codebook: Codebook, weight_grad: np.ndarray) -> np.ndarray:
    """The gradient of each shared value: the sum of the gradients of the weights that use it
    (the paper's centroid fine-tuning), pruned weights excluded."""
    g = np.asarray(weight_grad, dtype=np.float64)
    if g.shape != codebook.indices.shape:
        raise CompressionError(f"gradient {g.shape} does not match the weight "
                               f"{codebook.indices.shape}")
    idx = codebook.indices if codebook.mask is None else codebook.indices[codebook.mask]
    grads = g if codebook.mask is None else g[codebook.mask]
    return np.bincount(idx.ravel().astype(np.int64), weights=grads.ravel(),
                       minlength=codebook.centroids.size).astype(np.float32)
