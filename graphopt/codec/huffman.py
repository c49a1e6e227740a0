"""Canonical, length-limited Huffman coding of small-alphabet streams (codebook indices, sparse
gaps): Deep Compression's last stage.

Only the code lengths are stored: canonical codes are assigned from them (shorter codes first,
then by symbol), so a decoder rebuilds the exact code from one byte per symbol. Lengths are
limited to ``max_length`` bits (lengths beyond it are cut and the Kraft sum repaired by
lengthening the cheapest short codes), which bounds the decoder's table to 2**max_length
entries. The bitstream is most-significant-bit first.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from graphopt.errors import CompressionError

DEFAULT_MAX_LENGTH = 15
_CHUNK = 1 << 20  # symbols encoded per vectorized step (bounds the temporary bit matrix)


def _huffman_lengths(freqs: np.ndarray) -> np.ndarray:
    """Unlimited Huffman code lengths of the symbols with a non-zero frequency (O(n log n):
    merges recorded as parent links, depths read back once)."""
    lengths = np.zeros(freqs.size, dtype=np.int64)
    used = [int(s) for s in np.flatnonzero(freqs)]
    if len(used) == 1:
        lengths[used[0]] = 1
        return lengths
    parent = [-1] * (2 * len(used) - 1)
    heap = [(int(freqs[s]), i) for i, s in enumerate(used)]
    heapq.heapify(heap)
    node = len(used)
    while len(heap) > 1:
        fa, a = heapq.heappop(heap)
        fb, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (fa + fb, node))
        node += 1
    depth = [0] * len(parent)
    for n in range(len(parent) - 2, -1, -1):  # parents are created after their children
        depth[n] = depth[parent[n]] + 1
    for i, s in enumerate(used):
        lengths[s] = depth[i]
    return lengths


def _limit(lengths: np.ndarray, freqs: np.ndarray, max_length: int) -> np.ndarray:
    """Cut lengths to ``max_length`` and restore the Kraft inequality by lengthening the
    least frequent codes that are still shorter than the limit."""
    lengths = np.minimum(lengths, max_length)
    used = np.flatnonzero(lengths)
    kraft = sum(1 << (max_length - int(lengths[s])) for s in used)
    budget = 1 << max_length
    order = sorted(used, key=lambda s: (freqs[s], -lengths[s]))
    while kraft > budget:
        for s in order:
            if lengths[s] < max_length:
                kraft -= 1 << (max_length - int(lengths[s]) - 1)
                lengths[s] += 1
                break
        else:  # pragma: no cover (more symbols than 2**max_length)
            raise CompressionError(f"{used.size} symbols do not fit {max_length}-bit codes")
    return lengths


@dataclass(frozen=True)
class HuffmanCode:
    lengths: np.ndarray  # uint8 [alphabet]: code length per symbol (0: unused)

    @staticmethod
    def from_frequencies(freqs, max_length: int = DEFAULT_MAX_LENGTH) -> "HuffmanCode":
        freqs = np.asarray(freqs, dtype=np.int64)
        if freqs.ndim != 1 or freqs.size == 0 or (freqs < 0).any():
            raise CompressionError("frequencies must be a non-empty 1-D count per symbol")
        if not 1 <= max_length <= 24:
            raise CompressionError(f"max_length={max_length}: codes take 1 to 24 bits")
        if not freqs.any():
            return HuffmanCode(np.zeros(freqs.size, dtype=np.uint8))
        if np.count_nonzero(freqs) > (1 << max_length):
            raise CompressionError(f"{np.count_nonzero(freqs)} symbols cannot have distinct "
                                   f"codes of at most {max_length} bits")
        lengths = _limit(_huffman_lengths(freqs), freqs, max_length)
        return HuffmanCode(lengths.astype(np.uint8))

    @staticmethod
    def for_symbols(symbols: np.ndarray, alphabet: int,
                    max_length: int = DEFAULT_MAX_LENGTH) -> "HuffmanCode":
        return HuffmanCode.from_frequencies(np.bincount(np.ravel(symbols).astype(np.int64),
                                                        minlength=alphabet), max_length)

    def codes(self) -> np.ndarray:
        """The canonical code of each symbol (uint32, right-aligned in its length)."""
        lengths = self.lengths.astype(np.int64)
        if lengths.size and int(lengths.max()) > 24:
            raise CompressionError("a code length exceeds 24 bits (corrupt code table)")
        codes = np.zeros(lengths.size, dtype=np.uint32)
        code, previous = 0, 0
        for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
            code <<= int(lengths[s]) - previous
            previous = int(lengths[s])
            if code >= 1 << previous:
                raise CompressionError("code lengths violate the Kraft inequality (corrupt "
                                       "code table)")
            codes[s] = code
            code += 1
        return codes

    def encoded_bits(self, symbols: np.ndarray) -> int:
        return int(self.lengths.astype(np.int64)[np.ravel(symbols).astype(np.int64)].sum())

    def encode(self, symbols: np.ndarray) -> tuple[bytes, int]:
        """(bytes, bit count) of ``symbols`` (MSB first, the last byte zero-padded)."""
        symbols = np.ravel(symbols).astype(np.int64)
        if symbols.size and (symbols.min() < 0 or symbols.max() >= self.lengths.size
                             or (self.lengths[symbols] == 0).any()):
            raise CompressionError("a symbol has no code (outside the alphabet or of zero "
                                   "frequency when the code was built)")
        codes, lengths = self.codes(), self.lengths.astype(np.int64)
        pieces = []
        for start in range(0, symbols.size, _CHUNK):
            chunk = symbols[start:start + _CHUNK]
            c, n = codes[chunk], lengths[chunk]
            bits = np.unpackbits(c.astype(">u4").view(np.uint8).reshape(-1, 4), axis=1)
            keep = np.arange(32)[None, :] >= (32 - n)[:, None]  # the code's own low bits
            pieces.append(bits[keep])
        stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint8)
        return np.packbits(stream).tobytes(), int(stream.size)

    def decode(self, data: bytes, count: int, bit_count: int) -> np.ndarray:
        """``count`` symbols from the first ``bit_count`` bits of ``data``."""
        if bit_count > len(data) * 8 or count < 0:
            raise CompressionError(f"Huffman stream: {bit_count} bits announced, "
                                   f"{len(data) * 8} present (truncated)")
        lengths = self.lengths.astype(np.int64)
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        width = int(lengths.max()) if lengths.size else 0
        if width == 0:
            raise CompressionError("Huffman stream: the code table is empty")
        codes = self.codes()
        # table[prefix] = symbol + 1 (0: no code) for every width-bit prefix of a code
        table_symbol = np.zeros(1 << width, dtype=np.int64)
        table_length = np.zeros(1 << width, dtype=np.int64)
        for s in np.flatnonzero(lengths):
            shift = width - int(lengths[s])
            first = int(codes[s]) << shift
            table_symbol[first:first + (1 << shift)] = s + 1
            table_length[first:first + (1 << shift)] = lengths[s]
        native = _native_decoder()
        if native is not None:
            try:
                return native(bytes(data), table_symbol, table_length, width, count, bit_count)
            except ValueError as exc:
                raise CompressionError(str(exc)) from None
        return _decode_loop(data, table_symbol, table_length, width, count, bit_count)


def _native_decoder():
    """The C++ decoding loop (csrc/huffman_decode.cpp), or None without the extension."""
    from graphopt._extension import load_or_none

    return getattr(load_or_none(), "huffman_decode", None)


def _decode_loop(data: bytes, table_symbol: np.ndarray, table_length: np.ndarray, width: int,
                 count: int, bit_count: int) -> np.ndarray:
    """The reference decoder in Python (the native loop repeats its checks and messages)."""
    if count > bit_count:  # every code takes at least one bit
        raise CompressionError(f"Huffman stream ends after fewer than {count} symbols "
                               "(truncated)")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:bit_count]
    padded = np.concatenate([bits, np.zeros(width, dtype=np.uint8)]).astype(np.int64)
    windows = np.zeros(bit_count, dtype=np.int64)  # the width bits from each position
    for j in range(width):
        windows = (windows << 1) | padded[j:j + bit_count]
    out = np.empty(count, dtype=np.int64)
    pos = 0
    for i in range(count):
        if pos >= bit_count:
            raise CompressionError(f"Huffman stream ends after {i} of {count} symbols "
                                   "(truncated)")
        window = int(windows[pos])
        symbol, length = int(table_symbol[window]), int(table_length[window])
        if symbol == 0 or pos + length > bit_count:
            raise CompressionError(f"Huffman stream: no code at bit {pos} (corrupt)")
        out[i] = symbol - 1
        pos += length
    if pos != bit_count:
        raise CompressionError(f"Huffman stream: {bit_count - pos} bits left after "
                               f"{count} symbols (corrupt)")
    return out
