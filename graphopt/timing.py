"""Timing primitives shared by the benchmark and the per-pass attribution.

``calibrate`` picks how many back-to-back calls make one sample (so that sub-millisecond models
are not measured at the timer's resolution); ``run_interleaved`` interleaves the variants (A B C A B C ...,
optionally rotated and in blocks with a pause between them), so drift in clock speed, thermal
state or load from other processes hits all variants alike. The garbage collector is off while
timing.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from dataclasses import dataclass
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


def rotated(names: list[str], turn: int) -> list[str]:
    """``names`` rotated left by ``turn``: the order of pass ``turn`` (A B C, B C A, C A B...)."""
    if not names:
        return []
    k = turn % len(names)
    return names[k:] + names[:k]


def run_interleaved(calls: dict[str, Callable[[], Any]], calls_per_sample: dict[str, int],
                    rounds: int, clock: Clock, *, max_time_s: float | None = None,
                    min_rounds: int = 3, progress: Any = None,
                    on_error: Callable[[str, BaseException], None] | None = None,
                    rotate: bool = False, block: int = 1, pause_s: float = 0.0,
                    block_warmup: int = 0, sleep: Callable[[float], Any] = time.sleep,
                    ) -> tuple[dict[str, list[float]], int]:
    """Take ``rounds`` samples of each call, the variants interleaved.

    The variants are visited in passes; each visit takes ``block`` samples of one variant
    (after ``block_warmup`` untimed calls), then sleeps ``pause_s``. With ``block=1`` and no
    pause this is plain round-robin (A B C A B C ...). Blocks with a pause are for thread pools
    that spin after a call: the pause lets the pool of the variant just timed go to sleep
    before the next variant runs, so an idle spinning pool cannot steal its cores, and the
    warm-up call of a block wakes the next variant's pool up again (its steady state is
    timed, not its wake-up). ``rotate`` starts pass ``i`` at variant ``i`` (A B C, B C A, ...),
    so no variant always runs right after the same neighbour.

    Args:
        calls: variant name -> zero-argument callable.
        calls_per_sample: variant name -> back-to-back calls per sample.
        rounds: samples per variant.
        clock: seconds, monotonic (``time.perf_counter``; tests inject a fake one).
        max_time_s: stop after the pass that crosses this budget (at least ``min_rounds``
            samples per variant).
        progress: an object with ``update(n)`` (a tqdm bar), or None.
        on_error: called when a variant raises; that variant is dropped from later passes.
            Without it the exception propagates.
        rotate / block / pause_s / block_warmup: the schedule described above.
        sleep: how to pause (tests inject a fake one).

    Returns:
        ``(samples, rounds_done)``: per variant, the per-call seconds of each sample, and the
        number of samples every remaining variant got.
    """
    block = max(1, int(block))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    active = dict(calls)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    start = clock()
    done, turn = 0, 0
    try:
        while done < rounds and active:
            take = min(block, rounds - done)
            order = rotated(list(active), turn) if rotate else list(active)
            for name in order:
                if not _timed_block(name, active, take, block_warmup, calls_per_sample,
                                    samples, clock, progress, on_error):
                    continue
                if pause_s > 0:
                    sleep(pause_s)
            done += take
            turn += 1
            if max_time_s is not None and done >= min_rounds and clock() - start > max_time_s:
                break
    finally:
        if was_enabled:
            gc.enable()
    return samples, done


def _timed_block(name: str, active: dict[str, Callable[[], Any]], take: int, warm: int,
                 calls_per_sample: dict[str, int], samples: dict[str, list[float]],
                 clock: Clock, progress: Any,
                 on_error: Callable[[str, BaseException], None] | None) -> bool:
    """``warm`` untimed calls then ``take`` samples of ``name``; False when it raised."""
    call = active[name]
    n = calls_per_sample.get(name, 1)
    try:
        for _ in range(warm):
            call()
        for _ in range(take):
            t0 = clock()
            for _ in range(n):
                call()
            t1 = clock()
            samples[name].append((t1 - t0) / n)
            if progress is not None:
                progress.update(1)
    except Exception as exc:
        if on_error is None:
            raise
        on_error(name, exc)
        del active[name]
        return False
    return True


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


# The schedule of graphopt.benchmark, for scripts that time their own variants: blocks of 4
# samples after one untimed call, a 0.1 s pause after each block (onnxruntime's pool spins
# for about 50 ms after a run), the order rotated every pass.
FAIR_SCHEDULE = {"rotate": True, "block": 4, "pause_s": 0.1, "block_warmup": 1}


@dataclass
class BestSetting:
    """A variant timed at each of its settings: the fastest one and what each reached."""

    setting: str
    samples_s: list[float]
    settings_p50_ms: dict[str, float]

    @property
    def p50_ms(self) -> float:
        return percentile(self.samples_s, 50) * 1e3

    @property
    def iqr_ms(self) -> float:
        return (percentile(self.samples_s, 75) - percentile(self.samples_s, 25)) * 1e3


def time_at_best(variants: dict[str, dict[str, Callable[[], Any]]], rounds: int, *,
                 warmup: int = 3, min_sample_s: float = 0.01, clock: Clock = time.perf_counter,
                 max_time_s: float | None = None, progress: Any = None,
                 ) -> dict[str, BestSetting]:
    """Time every setting of every variant interleaved (``FAIR_SCHEDULE``); per variant, the
    setting with the lowest p50 is its result.

    ``variants`` maps a variant name to ``{setting name: call}`` (one entry when the variant
    has a single setting, e.g. ``{"default": call}``); calls take no arguments.
    """
    calls, inner = {}, {}
    for variant, settings in variants.items():
        for setting, call in settings.items():
            key = (variant, setting)
            calls[key] = call
            inner[key] = calibrate(call, warmup, min_sample_s, clock)
    samples, _ = run_interleaved(calls, inner, rounds, clock, max_time_s=max_time_s,
                                 progress=progress, **FAIR_SCHEDULE)
    out = {}
    for variant, settings in variants.items():
        p50 = {s: percentile(samples[(variant, s)], 50) * 1e3 for s in settings}
        best = min(p50, key=p50.__getitem__)
        out[variant] = BestSetting(best, samples[(variant, best)], p50)
    return out


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), ``q`` in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


