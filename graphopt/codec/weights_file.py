"""Named weights in a ``.gcm`` container (container.py), each dense or Deep-Compression coded.

A coded weight ("shared") is stored as five sections: the codebook (float32), the Huffman code
lengths of the index and gap streams (one byte per symbol), and the two Huffman streams. The
stream symbols are the codebook index + 1, 0 standing for a zero (a filler of the sparse coding,
or a pruned weight), so fillers decode to exactly 0.0. A dense weight is its float32 bytes.

``save_weights`` writes and returns a per-weight size report; ``load_weights`` decodes every
weight back (bit-exact: the decoded array is ``Codebook.decode()`` of what was written).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from graphopt.codec.codebook import share_weights
from graphopt.codec.container import read_container, write_container
from graphopt.codec.huffman import HuffmanCode
from graphopt.codec.sparse_index import SparseCode, decode_sparse, encode_sparse
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


def _encode_shared(name: str, w: np.ndarray, bits: int, index_bits: int):
    kept = w != 0
    book = share_weights(w, bits, mask=kept)
    symbols = book.indices.astype(np.int64) + 1  # 0 is reserved for zeros
    sparse = encode_sparse(symbols, kept, index_bits, filler=0)
    index_code = HuffmanCode.for_symbols(sparse.values, (1 << bits) + 1)
    gap_code = HuffmanCode.for_symbols(sparse.gaps, 1 << index_bits)
    index_data, index_nbits = index_code.encode(sparse.values)
    gap_data, gap_nbits = gap_code.encode(sparse.gaps)
    sections = {f"{name}/centroids": book.centroids.astype("<f4").tobytes(),
                f"{name}/index_lengths": index_code.lengths.tobytes(),
                f"{name}/gap_lengths": gap_code.lengths.tobytes(),
                f"{name}/indices": index_data, f"{name}/gaps": gap_data}
    meta = {"kind": "shared", "shape": list(w.shape), "bits": bits, "index_bits": index_bits,
            "entries": int(sparse.values.size), "index_nbits": index_nbits,
            "gap_nbits": gap_nbits}
    return meta, sections, int(kept.sum())


def save_weights(path: str | os.PathLike, weights: dict[str, np.ndarray],
                 bits: dict[str, int] | int | None = None,
                 index_bits: int = 5) -> list[WeightReport]:
    """Write ``weights`` to ``path``. ``bits``: codebook bits per weight name (or one value for
    all; a weight without bits is stored dense). Zeros are what pruning removed: they are not
    clustered and cost only their share of the gap stream."""
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
    bits, index_bits = int(entry["bits"]), int(entry["index_bits"])
    if not 1 <= bits <= 16 or not 1 <= index_bits <= 16:
        raise CompressionError(f"bits {bits} / index_bits {index_bits} out of range")
    centroids = np.frombuffer(_section(sections, f"{name}/centroids"), dtype="<f4")
    index_lengths = np.frombuffer(_section(sections, f"{name}/index_lengths"), dtype=np.uint8)
    gap_lengths = np.frombuffer(_section(sections, f"{name}/gap_lengths"), dtype=np.uint8)
    if centroids.size != 1 << bits or index_lengths.size != (1 << bits) + 1 or \
            gap_lengths.size != 1 << index_bits:
        raise CompressionError("codebook or code tables do not match the bit widths")
    entries = int(entry["entries"])
    if not 0 <= entries <= count:
        raise CompressionError(f"{entries} stored entries for {count} weights")
    symbols = HuffmanCode(index_lengths.copy()).decode(
        _section(sections, f"{name}/indices"), entries, int(entry["index_nbits"]))
    gaps = HuffmanCode(gap_lengths.copy()).decode(
        _section(sections, f"{name}/gaps"), entries, int(entry["gap_nbits"]))
    flat = decode_sparse(SparseCode(gaps, symbols, count, index_bits), zero=0)
    table = np.concatenate([np.zeros(1, np.float32), centroids.astype(np.float32)])
    return table[flat].reshape(shape)
