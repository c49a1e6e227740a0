"""What a ``.gcm`` compressed model holds: per-constant records, the total ratio, and Deep
Compression's per-stage table (the paper's Table 1 layout: bytes after pruning, after weight
sharing, after Huffman coding, per layer and in total).

The stage sizes of a layer come from its stored streams: after pruning, each stored entry of
the sparse coding (kept weights and fillers) costs a float32 plus its gap index; after sharing,
its codebook index plus its gap index, plus the codebook; after Huffman, the bytes actually in
the file (code tables and both streams) plus the codebook.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class StageRow:
    """One shared weight through the stages (bytes)."""

    name: str
    weights: int
    kept: int
    dense_bytes: int
    bits: int  # codebook bits
    gap_bits: int
    pruned_bytes: int
    shared_bytes: int
    huffman_bytes: int

    @property
    def ratio(self) -> float:
        return self.dense_bytes / max(self.huffman_bytes, 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 2)}


def format_stages(rows: list[StageRow]) -> str:
    """The per-stage table, one line per layer and a total."""
    width = max([len(r.name) for r in rows] + [5])
    lines = [f"  {'layer':<{width}}  {'weights':>8}  {'kept':>6}  {'float32':>10}  "
             f"{'pruned':>9}  {'shared':>9}  {'huffman':>9}  {'ratio':>6}"]
    total = StageRow("total", *(sum(getattr(r, k) for r in rows) for k in (
        "weights", "kept", "dense_bytes")), 0, 0, *(sum(getattr(r, k) for r in rows) for k in (
            "pruned_bytes", "shared_bytes", "huffman_bytes")))
    for r in rows + [total]:
        kept = 100 * r.kept / max(r.weights, 1)
        lines.append(f"  {r.name:<{width}}  {r.weights:>8,}  {kept:>5.1f}%  {r.dense_bytes:>10,}  "
                     f"{r.pruned_bytes:>9,}  {r.shared_bytes:>9,}  {r.huffman_bytes:>9,}  "
                     f"{r.ratio:>5.1f}x")
    return "\n".join(lines)


@dataclass(frozen=True)
class ConstantRecord:
    """How one constant is stored: ``dense_bytes`` as it is in memory (for a codebook's indices,
    as the float32 weight they stand for), ``stored_bytes`` in the file."""

    name: str
    encoding: str  # indices, deflate, raw or inline
    shape: tuple[int, ...]
    dtype: str
    dense_bytes: int
    stored_bytes: int
    kept: int  # non-zero elements
    entries: int = 0  # indices: stored entries of the sparse coding (kept + fillers)
    gap_bits: int = 0  # indices: the sparse coding's gap width
    codebook: str | None = None  # indices: the name of their codebook constant


@dataclass
class CompressedFile:
    """What ``save_compressed`` wrote (or ``inspect_compressed`` read): per constant and total.

    ``ratio`` is the float32 size of the model's parameters over the whole file's size (header,
    directory and IR text included). Each stored constant is one section named after it."""

    path: str
    file_bytes: int
    constants: list[ConstantRecord] = field(default_factory=list)
    decode_seconds: float | None = None

    @property
    def dense_bytes(self) -> int:
        return sum(c.dense_bytes for c in self.constants)

    @property
    def ratio(self) -> float:
        return self.dense_bytes / max(self.file_bytes, 1)

    def __str__(self) -> str:
        lines = [f"{self.path}: {self.file_bytes:,} bytes, {self.dense_bytes:,} bytes of "
                 f"parameters as float32 ({self.ratio:.1f}x)"]
        width = max([len(c.name) for c in self.constants] + [8])
        lines.append(f"  {'constant':<{width}}  {'encoding':<8}  {'kept':>8}  "
                     f"{'dense':>10}  {'stored':>9}  {'ratio':>6}")
        for c in sorted(self.constants, key=lambda c: -c.dense_bytes):
            ratio = (f"{c.dense_bytes / c.stored_bytes:>5.1f}x" if c.dense_bytes and
                     c.stored_bytes else f"{'-':>6}")
            lines.append(f"  {c.name:<{width}}  {c.encoding:<8}  {c.kept:>8}  "
                         f"{c.dense_bytes:>10,}  {c.stored_bytes:>9,}  {ratio}")
        if self.decode_seconds is not None:
            lines.append(f"  decoded in {self.decode_seconds * 1e3:.1f} ms")
        stages = self.stages()
        if stages:
            lines.append(format_stages(stages))
        return "\n".join(lines)

    def stages(self) -> list[StageRow]:
        """Deep Compression's per-layer table for every codebook-indexed weight."""
        by_name = {c.name: c for c in self.constants}
        rows = []
        for c in self.constants:
            if c.encoding != "indices":
                continue
            book = by_name.get(c.codebook) if c.codebook else None
            book_bytes = book.stored_bytes if book else 0
            bits = max(1, int(np.ceil(np.log2(max(np.prod(book.shape), 2))))) if book else 0
            name = c.name[: -len(".indices")] if c.name.endswith(".indices") else c.name
            rows.append(StageRow(
                name, int(np.prod(c.shape)), c.kept, c.dense_bytes, bits, c.gap_bits,
                pruned_bytes=(c.entries * (32 + c.gap_bits) + 7) // 8,
                shared_bytes=(c.entries * (bits + c.gap_bits) + 7) // 8 + book_bytes,
                huffman_bytes=c.stored_bytes + book_bytes))
        return rows


