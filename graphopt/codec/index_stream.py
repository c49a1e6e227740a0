"""One array of small non-negative integers (0 = a zero), stored the Deep Compression way:
sparse index coding of its non-zeros, then canonical Huffman codes for both streams.

This is the stored form of codebook indices (``codebook_decode``'s operand, where index 0 is a
pruned weight): ``encode_indices`` returns a JSON-able entry and one byte section for a ``.gcm``
container, ``decode_indices`` the exact array back. The section is the two code-length tables
(4 bits per symbol, two per byte: code lengths are limited to 15 bits) followed by the two
bitstreams
(``ceil(symbol_nbits / 8)`` and ``ceil(gap_nbits / 8)`` bytes): one section (one checksum, one
directory entry) per array keeps a small model's directory small. The gap width is chosen per array: every width from 1 to ``MAX_GAP_BITS``
is sized (Huffman lengths only, nothing encoded) and the smallest total is kept, so a dense
array pays almost nothing for gaps and a sparse one gets the width its gap statistics want.
"""

from __future__ import annotations

import numpy as np

from graphopt.codec.huffman import HuffmanCode
from graphopt.codec.sparse_index import SparseCode, decode_sparse, encode_sparse
from graphopt.errors import CompressionError

MAX_GAP_BITS = 8
MAX_SYMBOLS = 1 << 16


def _pack_nibbles(lengths: np.ndarray) -> bytes:
    """Code lengths (each 0..15) two per byte, the first in the high nibble."""
    values = np.asarray(lengths, dtype=np.uint8)
    if values.size and int(values.max()) > 15:
        raise CompressionError("a code length exceeds 15 bits")
    if values.size % 2:
        values = np.append(values, np.uint8(0))
    return ((values[0::2] << 4) | values[1::2]).astype(np.uint8).tobytes()


def _unpack_nibbles(data: bytes, count: int) -> np.ndarray:
    packed = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(packed.size * 2, dtype=np.uint8)
    out[0::2], out[1::2] = packed >> 4, packed & 15
    return out[:count]


def _sized(symbols: np.ndarray, alphabet: int, index_bits: int):
    sparse = encode_sparse(symbols, symbols != 0, index_bits, filler=0)
    symbol_code = HuffmanCode.for_symbols(sparse.values, alphabet)
    gap_code = HuffmanCode.for_symbols(sparse.gaps, 1 << index_bits)
    streams = [symbol_code.encoded_bits(sparse.values), gap_code.encoded_bits(sparse.gaps)]
    tables = [alphabet, 1 << index_bits]
    cost = sum((b + 7) // 8 for b in streams) + sum((n + 1) // 2 for n in tables)
    return cost, sparse, symbol_code, gap_code


def encode_indices(section: str, symbols: np.ndarray, alphabet: int,
                   index_bits: int | None = None) -> tuple[dict, dict[str, bytes]]:
    """Entry and section (``{section: bytes}``) of ``symbols`` (integers in ``[0, alphabet)``,
    any shape, 0 = zero).

    ``index_bits``: the gap width (None: the smallest file among 1..MAX_GAP_BITS)."""
    flat = np.ravel(symbols).astype(np.int64)
    if not 1 <= alphabet <= MAX_SYMBOLS:
        raise CompressionError(f"an alphabet of {alphabet} symbols (1 to {MAX_SYMBOLS})")
    if flat.size and (flat.min() < 0 or flat.max() >= alphabet):
        raise CompressionError(f"a symbol is outside [0, {alphabet})")
    widths = range(1, MAX_GAP_BITS + 1) if index_bits is None else [index_bits]
    _, sparse, symbol_code, gap_code = min(
        (_sized(flat, alphabet, b) for b in widths), key=lambda sized: sized[0])
    symbol_data, symbol_nbits = symbol_code.encode(sparse.values)
    gap_data, gap_nbits = gap_code.encode(sparse.gaps)
    entry = {"alphabet": alphabet, "index_bits": sparse.index_bits,
             "entries": int(sparse.values.size), "symbol_nbits": symbol_nbits,
             "gap_nbits": gap_nbits}
    payload = b"".join([_pack_nibbles(symbol_code.lengths), _pack_nibbles(gap_code.lengths),
                        symbol_data, gap_data])
    return entry, {section: payload}


def decode_indices(section: str, entry: dict, sections: dict[str, bytes],
                   count: int) -> np.ndarray:
    """The ``count`` integers (int64, flat) that ``encode_indices`` stored under ``section``.

    Raises:
        CompressionError: a missing section, code tables that do not fit the entry, or
            corrupt streams (Huffman and sparse decoding check every bound)."""
    if section not in sections:
        raise CompressionError(f"section '{section}' is missing")
    try:
        alphabet, index_bits = int(entry["alphabet"]), int(entry["index_bits"])
        entries = int(entry["entries"])
        symbol_nbits, gap_nbits = int(entry["symbol_nbits"]), int(entry["gap_nbits"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CompressionError(f"malformed index entry ({exc})") from None
    if not 1 <= alphabet <= MAX_SYMBOLS or not 1 <= index_bits <= 16:
        raise CompressionError(f"alphabet {alphabet} / index_bits {index_bits} out of range")
    if not 0 <= entries <= count or symbol_nbits < 0 or gap_nbits < 0:
        raise CompressionError(f"{entries} stored entries for {count} elements, or a negative "
                               "stream length")
    sizes = [(alphabet + 1) // 2, ((1 << index_bits) + 1) // 2, (symbol_nbits + 7) // 8,
             (gap_nbits + 7) // 8]
    payload = sections[section]
    if len(payload) != sum(sizes):
        raise CompressionError(f"section '{section}' holds {len(payload)} bytes; its entry "
                               f"announces {sum(sizes)} (code tables and streams)")
    ends = np.cumsum(sizes)
    symbol_lengths = _unpack_nibbles(payload[:ends[0]], alphabet)
    gap_lengths = _unpack_nibbles(payload[ends[0]:ends[1]], 1 << index_bits)
    values = HuffmanCode(symbol_lengths).decode(payload[ends[1]:ends[2]], entries,
                                                       symbol_nbits)
    gaps = HuffmanCode(gap_lengths).decode(payload[ends[2]:ends[3]], entries, gap_nbits)
    return decode_sparse(SparseCode(gaps, values, count, index_bits), zero=0)
