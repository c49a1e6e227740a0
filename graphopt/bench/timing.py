"""Timing primitives shared by the benchmark and the per-pass attribution.

``calibrate`` picks how many back-to-back calls make one sample (so that sub-millisecond models
are not measured at the timer's resolution); ``run_interleaved`` times every variant once per
round, in the same order each round (A B C A B C ...), so drift in clock speed, thermal state or
load from other processes hits all variants alike. The garbage collector is off while timing.
"""

from __future__ import annotations

import gc
import math
import sys
from typing import Any, Callable

Clock = Callable[[], float]


def calibrate(call: Callable[[], Any], warmup: int, min_sample_s: float, clock: Clock,
              max_calls: int = 10_000) -> int:
    """Run ``warmup`` calls; return the calls per sample so that a sample lasts ``min_sample_s``."""
    times = []
    for _ in range(max(1, warmup)):
        start = clock()
        call()
        times.append(clock() - start)
    per_call = sorted(times)[len(times) // 2]
    if min_sample_s <= 0 or per_call >= min_sample_s:
        return 1
    if per_call <= 0:
        return max_calls
    return max(1, min(max_calls, math.ceil(min_sample_s / per_call)))


def run_interleaved(calls: dict[str, Callable[[], Any]], calls_per_sample: dict[str, int],
                    rounds: int, clock: Clock, *, max_time_s: float | None = None,
                    min_rounds: int = 3, progress: Any = None,
                    on_error: Callable[[str, BaseException], None] | None = None,
                    ) -> tuple[dict[str, list[float]], int]:
    """Time each call once per round, in dict order, for ``rounds`` rounds.

    Args:
        calls: variant name -> zero-argument callable.
        calls_per_sample: variant name -> back-to-back calls per sample.
        rounds: number of rounds.
        clock: seconds, monotonic (``time.perf_counter``; tests inject a fake one).
        max_time_s: stop after the round that crosses this budget (at least ``min_rounds``).
        progress: an object with ``update(n)`` (a tqdm bar), or None.
        on_error: called when a variant raises; that variant is dropped from later rounds.
            Without it the exception propagates.

    Returns:
        ``(samples, rounds_done)``: per variant, the per-call seconds of each round.
    """
    samples: dict[str, list[float]] = {name: [] for name in calls}
    active = dict(calls)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    start = clock()
    done = 0
    try:
        for _ in range(rounds):
            for name, call in list(active.items()):
                n = calls_per_sample.get(name, 1)
                try:
                    t0 = clock()
                    for _ in range(n):
                        call()
                    t1 = clock()
                except Exception as exc:
                    if on_error is None:
                        raise
                    on_error(name, exc)
                    del active[name]
                    continue
                samples[name].append((t1 - t0) / n)
                if progress is not None:
                    progress.update(1)
            done += 1
            if not active:
                break
            if max_time_s is not None and done >= min_rounds and clock() - start > max_time_s:
                break
    finally:
        if was_enabled:
            gc.enable()
    return samples, done


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool | None) -> Any:
    """A tqdm bar on stderr (None: only when stderr is a terminal), or a no-op stand-in."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return _NoBar()
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
