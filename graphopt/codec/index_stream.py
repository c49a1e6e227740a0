"""One array of small non-negative integers (0 = a zero), stored the Deep Compression way:
sparse index coding of its non-zeros, then canonical Huffman codes for both streams.

This is the stored form of codebook indices (``codebook_decode``'s operand, where index 0 is a
pruned weight): ``encode_indices`` returns a JSON-able entry and named byte sections (the two
code-length tables and the two bitstreams) for a ``.gcm`` container, ``decode_indices`` the
exact array back. The gap width is chosen per array: every width from 1 to ``MAX_GAP_BITS``
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
_PARTS = ("symbol_lengths", "gap_lengths", "symbols", "gaps")


def _sized(symbols: np.ndarray, alphabet: int, index_bits: int):
    sparse = encode_sparse(symbols, symbols != 0, index_bits, filler=0)
    symbol_code = HuffmanCode.for_symbols(sparse.values, alphabet)
    gap_code = HuffmanCode.for_symbols(sparse.gaps, 1 << index_bits)
    bits = symbol_code.encoded_bits(sparse.values) + gap_code.encoded_bits(sparse.gaps)
    cost = (bits + 7) // 8 + alphabet + (1 << index_bits)  # streams + one byte per length
    return cost, sparse, symbol_code, gap_code


def encode_indices(prefix: str, symbols: np.ndarray, alphabet: int,
                   index_bits: int | None = None) -> tuple[dict, dict[str, bytes]]:
    """Entry and sections of ``symbols`` (integers in ``[0, alphabet)``, any shape, 0 = zero).

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
    sections = {f"{prefix}/symbol_lengths": symbol_code.lengths.tobytes(),
                f"{prefix}/gap_lengths": gap_code.lengths.tobytes(),
                f"{prefix}/symbols": symbol_data, f"{prefix}/gaps": gap_data}
    return entry, sections


def decode_indices(prefix: str, entry: dict, sections: dict[str, bytes],
                   count: int) -> np.ndarray:
    """The ``count`` integers (int64, flat) that ``encode_indices`` stored under ``prefix``.

    Raises:
        CompressionError: a missing section, code tables that do not fit the entry, or
            corrupt streams (Huffman and sparse decoding check every bound)."""
    for part in _PARTS:
        if f"{prefix}/{part}" not in sections:
            raise CompressionError(f"section '{prefix}/{part}' is missing")
    try:
        alphabet, index_bits = int(entry["alphabet"]), int(entry["index_bits"])
        entries = int(entry["entries"])
        symbol_nbits, gap_nbits = int(entry["symbol_nbits"]), int(entry["gap_nbits"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CompressionError(f"malformed index entry ({exc})") from None
    if not 1 <= alphabet <= MAX_SYMBOLS or not 1 <= index_bits <= 16:
        raise CompressionError(f"alphabet {alphabet} / index_bits {index_bits} out of range")
    if not 0 <= entries <= count:
        raise CompressionError(f"{entries} stored entries for {count} elements")
    symbol_lengths = np.frombuffer(sections[f"{prefix}/symbol_lengths"], dtype=np.uint8)
    gap_lengths = np.frombuffer(sections[f"{prefix}/gap_lengths"], dtype=np.uint8)
    if symbol_lengths.size != alphabet or gap_lengths.size != 1 << index_bits:
        raise CompressionError("the code tables do not match the alphabet and gap width")
    values = HuffmanCode(symbol_lengths.copy()).decode(
        sections[f"{prefix}/symbols"], entries, symbol_nbits)
    gaps = HuffmanCode(gap_lengths.copy()).decode(sections[f"{prefix}/gaps"], entries, gap_nbits)
    return decode_sparse(SparseCode(gaps, values, count, index_bits), zero=0)
