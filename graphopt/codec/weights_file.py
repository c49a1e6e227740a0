"""Named weights in a ``.gcm`` container (container.py), each dense or Deep-Compression coded.

A coded weight ("shared") is stored as its codebook (float32) and its indices as an index stream
(``index_stream.py``: sparse index coding + Huffman, one section). The stream symbols are the
codebook index + 1, 0 standing for a zero (a filler of the sparse coding, or a pruned weight),
so fillers decode to exactly 0.0. A dense weight is its float32 bytes.

``save_weights`` writes and returns a per-weight size report; ``load_weights`` decodes every
weight back (bit-exact: the decoded array is ``Codebook.decode()`` of what was written).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from graphopt.codec.codebook import share_weights
from graphopt.codec.container import read_container, write_container
from graphopt.codec.index_stream import decode_indices, encode_indices
from graphopt.errors import CompressionError
from graphopt.limits import check_shape


@dataclass(frozen=True)
class WeightReport:
    name: str
    elements: int
    kept: int  # non-zero weights stored
    dense_bytes: int  # as float32
    stored_bytes: int  # in the file (sections, without the directory)

    @property
    def ratio(self) -> float:
        return self.dense_bytes / max(self.stored_bytes, 1)


def _encode_shared(name: str, w: np.ndarray, bits: int, index_bits: int | None):
    kept = w != 0
    book = share_weights(w, bits, mask=kept)
    symbols = np.where(kept, book.indices.astype(np.int64) + 1, 0)  # 0 is reserved for zeros
    entry, sections = encode_indices(f"{name}/indices", symbols, (1 << bits) + 1, index_bits)
    sections[f"{name}/centroids"] = book.centroids.astype("<f4").tobytes()
    meta = {"kind": "shared", "shape": list(w.shape), "bits": bits, **entry}
    return meta, sections, int(kept.sum())


def save_weights(path: str | os.PathLike, weights: dict[str, np.ndarray],
                 bits: dict[str, int] | int | None = None,
                 index_bits: int | None = None) -> list[WeightReport]:
    """Write ``weights`` to ``path``. ``bits``: codebook bits per weight name (or one value for
    all; a weight without bits is stored dense). Zeros are what pruning removed: they are not
    clustered and cost only their share of the gap stream. ``index_bits``: the sparse gap
    width (None: the smallest file per weight, ``graphopt.codec.index_stream``)."""
    sections, meta, reports = {}, {}, []
    for name, weight in weights.items():
        if "/" in name or not name:
            raise CompressionError(f"weight name {name!r}: non-empty, without '/'")
        w = np.ascontiguousarray(weight, dtype=np.float32)
        b = bits.get(name) if isinstance(bits, dict) else bits
        if b is None:
            entry, parts, kept = {"kind": "dense", "shape": list(w.shape)}, {
                f"{name}/data": w.astype("<f4").tobytes()}, int(np.count_nonzero(w))
        else:
            entry, parts, kept = _encode_shared(name, w, b, index_bits)
        sections.update(parts)
        meta[name] = entry
        reports.append(WeightReport(name, int(w.size), kept, int(w.size) * 4,
                                    sum(len(p) for p in parts.values())))
    write_container(path, sections, {"format": "graphopt-weights", "weights": meta})
    return reports


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every weight of a file written by ``save_weights``, decoded."""
    where = os.fspath(path)
    meta, sections = read_container(where)
    if meta.get("format") != "graphopt-weights" or not isinstance(meta.get("weights"), dict):
        raise CompressionError(f"{where}: not a graphopt weights file")
    out = {}
    for name, entry in meta["weights"].items():
        try:
            out[name] = _decode(name, entry, sections)
        except CompressionError as exc:
            raise CompressionError(f"{where}: weight '{name}': {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise CompressionError(f"{where}: weight '{name}': malformed entry ({exc})") \
                from None
    return out


def _section(sections: dict, key: str) -> bytes:
    if key not in sections:
        raise CompressionError(f"section '{key}' is missing")
    return sections[key]


def _decode(name: str, entry: dict, sections: dict) -> np.ndarray:
    shape = [int(d) for d in entry["shape"]]
    if any(d < 0 for d in shape):
        raise CompressionError(f"negative dim in shape {shape}")
    check_shape(shape, 4, f"weight '{name}'")
    count = int(np.prod(shape, dtype=np.int64))
    if entry["kind"] == "dense":
        data = _section(sections, f"{name}/data")
        if len(data) != 4 * count:
            raise CompressionError(f"{len(data)} bytes of data for {count} float32 values")
        return np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(shape)
    if entry["kind"] != "shared":
        raise CompressionError(f"unknown kind {entry['kind']!r}")
    bits = int(entry["bits"])
    if not 1 <= bits <= 16:
        raise CompressionError(f"bits {bits} out of range")
    centroids = np.frombuffer(_section(sections, f"{name}/centroids"), dtype="<f4")
    if centroids.size != 1 << bits or int(entry["alphabet"]) != (1 << bits) + 1:
        raise CompressionError("the codebook does not match the bit width")
    flat = decode_indices(f"{name}/indices", entry, sections, count)
    table = np.concatenate([np.zeros(1, np.float32), centroids.astype(np.float32)])
    return table[flat].reshape(shape)
