"""Resource budgets checked before any allocation whose size comes from an input.

A model file declares shapes, constants and thread counts; a crafted one can declare a
``float32[100000, 100000, 100000]`` input or a 1e12-element external tensor. Everything that
sizes an allocation from such data asks :func:`check_bytes` (or :func:`check_threads`) first,
so the answer is a :class:`~graphopt.errors.ResourceLimitError` naming the request instead of
an exhausted machine.

The memory budget defaults to half of the machine's physical memory (at least 1 GiB). Set it
with the ``GRAPHOPT_MEMORY_BUDGET`` environment variable (bytes, or a number with a ``KiB``,
``MiB``, ``GiB`` or ``TiB`` suffix), with :func:`set_memory_budget`, or for one block with
``with memory_budget(n): ...``. The thread budget is 4x the CPU count (at least 64).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterable, Iterator

from graphopt.errors import GraphoptError, ResourceLimitError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1 << 10, "m": 1 << 20,
          "mib": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gib": 1 << 30, "gb": 1 << 30,
          "t": 1 << 40, "tib": 1 << 40, "tb": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
_state = threading.local()
_default_budget: int | None = None


def parse_size(text: str) -> int:
    """``"4GiB"`` -> 4294967296; a plain number is bytes. ValueError on anything else."""
    match = _SIZE.fullmatch(str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 1073741824, 512MiB, 8GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def memory_budget() -> int:
    """The budget in bytes now in force for one input-sized allocation."""
    override = getattr(_state, "budget", None)
    if override is not None:
        return override
    if _default_budget is not None:
        return _default_budget
    env = os.environ.get("GRAPHOPT_MEMORY_BUDGET")
    if env:
        try:
            return parse_size(env)
        except ValueError as exc:
            raise GraphoptError(f"GRAPHOPT_MEMORY_BUDGET: {exc}") from None
    return max(1 << 30, _physical_memory() // 2)


def set_memory_budget(nbytes: int | str | None) -> None:
    """Set the process-wide budget (bytes or a size string); ``None`` restores the default."""
    global _default_budget
    _default_budget = None if nbytes is None else _as_bytes(nbytes)


@contextlib.contextmanager
def memory_budget_scope(nbytes: int | str) -> Iterator[None]:
    """Use ``nbytes`` as the budget inside the block (this thread only)."""
    previous = getattr(_state, "budget", None)
    _state.budget = _as_bytes(nbytes)
    try:
        yield
    finally:
        _state.budget = previous


def _as_bytes(nbytes: int | str) -> int:
    value = parse_size(nbytes) if isinstance(nbytes, str) else int(nbytes)
    if value <= 0:
        raise ValueError(f"a memory budget must be positive, got {nbytes!r}")
    return value


def numel_of(shape: Iterable[int]) -> int:
    """Element count of a static shape with Python ints (no overflow, no numpy wrap-around)."""
    n = 1
    for dim in shape:
        n *= int(dim)
    return n


def check_bytes(nbytes: int, what: str) -> int:
    """Raise ``ResourceLimitError`` if ``nbytes`` is over the budget; returns ``nbytes``."""
    limit = memory_budget()
    if nbytes > limit:
        raise ResourceLimitError(what, nbytes, limit)
    return nbytes


def check_shape(shape: Iterable[int], itemsize: int, what: str) -> int:
    """``check_bytes`` for a tensor of ``shape`` with ``itemsize``-byte elements."""
    return check_bytes(numel_of(shape) * int(itemsize), what)


def thread_budget() -> int:
    return max(64, 4 * (os.cpu_count() or 1))


def check_threads(threads: int, what: str) -> int:
    """A thread count from an input must be an int in [1, thread_budget()]."""
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise GraphoptError(f"{what}: thread count must be an integer, got "
                                            f"{threads!r}")
    if threads < 1:
        raise GraphoptError(f"{what}: thread count must be >= 1, got {threads}")
    limit = thread_budget()
    if threads > limit:
        raise ResourceLimitError(what, threads, limit, unit="threads")
    return threads


__all__ = ["check_bytes", "check_shape", "check_threads", "memory_budget",
           "memory_budget_scope", "numel_of", "parse_size", "set_memory_budget",
           "thread_budget"]
