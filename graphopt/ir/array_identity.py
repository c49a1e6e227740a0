"""Finding equal constant arrays without reading every weight byte.

Deduplication (``cse``'s merge of identical constants, the ONNX exporter's shared initializers)
needs "which of these arrays hold the same bytes?" over every weight of a model: hashing all of
them reads gigabytes. A digest of a sample spread over the array finds the candidates in
microseconds; candidates are then compared byte for byte, so a sample collision never merges
different data (-0.0 vs 0.0 and NaN payloads stay apart: bytes, not values, are compared).
"""

from __future__ import annotations

import hashlib
import weakref

import numpy as np

# Elements hashed per array (plus the last one).
SAMPLE = 4096

# Digest per array: arrays of constants are read-only and shared between graph clones, so
# repeated deduplication hashes each weight once. Keyed by id, validated by a weak reference.
_DIGESTS: dict[int, tuple[weakref.ref, bytes]] = {}


def sample_digest(data: np.ndarray) -> bytes:
    """A 16-byte digest of dtype, shape and a sample of ``data``'s elements (equal arrays have
    equal digests; different arrays usually, not always, differ)."""
    entry = _DIGESTS.get(id(data))
    if entry is not None and entry[0]() is data:
        return entry[1]
    # Memory order: a view for every contiguous array (a transposed weight too, which
    # reshape(-1) would copy whole). The layout is part of the digest, so equal arrays in
    # different layouts only miss a merge, never merge wrongly.
    flat = np.ravel(data, order="K")
    if flat.size > SAMPLE:
        flat = np.concatenate([flat[:: flat.size // SAMPLE], flat[-1:]])
    sample = np.ascontiguousarray(flat)
    order = "C" if data.flags.c_contiguous else "F" if data.flags.f_contiguous else "?"
    h = hashlib.blake2b(f"{data.dtype.str}{data.shape}{order}".encode(), digest_size=16)
    # memoryview.cast refuses shapes with a zero; an empty array's bytes are empty anyway
    h.update(memoryview(sample).cast("B") if sample.size else b"")
    digest = h.digest()
    if len(_DIGESTS) > 100_000:
        _DIGESTS.clear()
    try:
        _DIGESTS[id(data)] = (weakref.ref(data), digest)
    except TypeError:  # not weak-referenceable: just do not cache
        pass
    return digest


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality of two arrays' logical contents (dtype and shape included); no copy of
    C-ordered arrays."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.size == 0:
        return True
    if a is b:
        return True
    view_a = memoryview(np.ascontiguousarray(a)).cast("B")
    return view_a == memoryview(np.ascontiguousarray(b)).cast("B")
