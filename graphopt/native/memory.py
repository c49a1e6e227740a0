"""Static memory planning for the native runtime: one arena, offsets by liveness.

Every activation buffer of a plan has a size and a lifetime: the interval ``[first, last]`` of
step indices from the step that writes it first to the step that reads it last (views and
aliases of a buffer extend its lifetime; they are not buffers of their own). Two buffers may
share bytes when their lifetimes are disjoint. The planner places buffers greedily, largest
first, each at the best-fitting gap among the already placed buffers whose lifetimes overlap
its own ("greedy by size", as in TFLite's arena planner)::

    sizes   a: 4 KiB [0, 2]   b: 4 KiB [1, 3]   c: 8 KiB [3, 5]   d: 2 KiB [4, 5]
    placed  c @ 0            (nothing overlaps yet)
            a @ 0            (a and c are never live together: reuse c's bytes)
            b @ 8 KiB        (b overlaps a and c: first gap after c)
            d @ 8 KiB        (d overlaps c only: b's bytes are free again at step 4)
    peak    12 KiB instead of 18 KiB

Offsets and sizes are rounded up to ``alignment`` (64 bytes: a cache line, and enough for any
vector load). In-place reuse (an elementwise op writing over an input that dies there) is
decided by the plan builder before this pass: such an output *is* its input's buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

ALIGNMENT = 64


def align_up(n: int, alignment: int = ALIGNMENT) -> int:
    return (n + alignment - 1) // alignment * alignment


@dataclass
class Lifetime:
    """A buffer to place: ``size`` bytes live from step ``first`` to step ``last`` inclusive."""

    key: int
    size: int
    first: int
    last: int

    def overlaps(self, other: Lifetime) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass
class MemoryPlan:
    """Where each buffer lives in the arena.

    Attributes:
        offsets: buffer key -> byte offset (a multiple of the alignment).
        peak_bytes: arena size: the end of the highest placed buffer.
        total_bytes: the sum of the (aligned) buffer sizes, what no reuse would need.
    """

    offsets: dict[int, int]
    peak_bytes: int
    total_bytes: int
    alignment: int = ALIGNMENT


def plan_memory(buffers: list[Lifetime], alignment: int = ALIGNMENT) -> MemoryPlan:
    """Assign arena offsets so that buffers with overlapping lifetimes never overlap in bytes.

    Greedy by size: buffers sorted by decreasing size (ties: earlier first step, then key, so
    the result is deterministic); each goes into the smallest gap between the already placed,
    lifetime-overlapping buffers that holds it, or after the highest of them.
    """
    order = sorted(buffers, key=lambda b: (-align_up(b.size, alignment), b.first, b.key))
    placed: list[tuple[int, int, Lifetime]] = []  # (offset, aligned size, lifetime)
    offsets: dict[int, int] = {}
    peak = 0
    for buf in order:
        size = align_up(max(buf.size, 1), alignment)
        busy = sorted((off, sz) for off, sz, other in placed if other.overlaps(buf))
        best_offset, best_gap = None, None
        cursor = 0
        for off, sz in busy:
            gap = off - cursor
            if gap >= size and (best_gap is None or gap < best_gap):
                best_offset, best_gap = cursor, gap
            cursor = max(cursor, off + sz)
        offset = best_offset if best_offset is not None else cursor
        offsets[buf.key] = offset
        placed.append((offset, size, buf))
        peak = max(peak, offset + size)
    total = sum(align_up(max(b.size, 1), alignment) for b in buffers)
    return MemoryPlan(offsets, peak, total, alignment)


def check_plan(buffers: list[Lifetime], plan: MemoryPlan) -> None:
    """Raise AssertionError if two lifetime-overlapping buffers share a byte, an offset is
    misaligned, or a buffer ends past the peak (the tests' interval check)."""
    spans = []
    for buf in buffers:
        off = plan.offsets[buf.key]
        assert off % plan.alignment == 0, f"buffer {buf.key} at misaligned offset {off}"
        assert off + buf.size <= plan.peak_bytes, f"buffer {buf.key} ends past the arena"
        spans.append((buf, off, off + buf.size))
    spans.sort(key=lambda s: s[1])
    for i, (a, a_lo, a_hi) in enumerate(spans):
        for b, b_lo, b_hi in spans[i + 1:]:
            if b_lo >= a_hi:
                break
            if a.overlaps(b) and a.size and b.size:
                raise AssertionError(
                    f"buffers {a.key} [{a.first}, {a.last}] @ {a_lo}..{a_hi} and {b.key} "
                    f"[{b.first}, {b.last}] @ {b_lo}..{b_hi} are live together and overlap"
                )
