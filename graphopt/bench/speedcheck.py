"""Does a compression pay? Time a compressed graph against the graph it came from.

``check_speed(before, after, args)`` compiles both graphs for one backend and times them on the
same inputs with the benchmark's primitives (``timing.calibrate`` / ``run_interleaved``: calls
batched into samples of a few milliseconds, the two variants interleaved in a rotating order so
that load from other processes hits both alike, medians). The result says whether ``after`` is
faster; ``graphopt quantize / prune / compress --check-speed`` print it and warn when it is
not (``--require-faster``: an error, nothing written). Issue #24: "my int8 model is slower than
fp32" should be said by the tool, not found by the user.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

from graphopt.timing import calibrate, run_interleaved
from graphopt.errors import GraphoptError


class SpeedRegressionWarning(UserWarning):
    """A compressed graph measured slower than the graph it came from."""


class SpeedRegressionError(GraphoptError):
    """``require_faster``: a compressed graph measured slower than the graph it came from."""


@dataclass(frozen=True)
class SpeedCheck:
    backend: str
    before_ms: float  # median per call
    after_ms: float
    rounds: int
    tolerance: float

    @property
    def speedup(self) -> float:
        return self.before_ms / max(self.after_ms, 1e-12)

    @property
    def faster(self) -> bool:
        """``after`` is not slower than ``before`` beyond the tolerance (measurement noise)."""
        return self.after_ms <= self.before_ms * (1.0 + self.tolerance)

    def __str__(self) -> str:
        verdict = "faster" if self.speedup >= 1.0 else "slower"
        return (f"speed check on {self.backend}: {self.before_ms:.3f} ms -> {self.after_ms:.3f} ms"
                f" per call ({self.speedup:.2f}x, {verdict}; medians of {self.rounds} "
                "interleaved rounds)")


def check_speed(before, after, args: Sequence[Any], backend: str = "native",
                threads: int | None = None, rounds: int = 30, tolerance: float = 0.02,
                require_faster: bool = False) -> SpeedCheck:
    """Median time per call of ``after`` vs ``before`` (two graphs) on ``backend``.

    Warns (``SpeedRegressionWarning``) when ``after`` is slower than ``before`` by more than
    ``tolerance``; with ``require_faster`` raises ``SpeedRegressionError`` instead."""
    import graphopt

    args = tuple(args)
    modules = {name: graphopt.compile(g, backend=backend, threads=threads)
               for name, g in (("before", before), ("after", after))}
    calls = {name: (lambda m=m: m(*args)) for name, m in modules.items()}
    per_sample = {name: calibrate(call, 5, 0.005, time.perf_counter)
                  for name, call in calls.items()}
    samples, _ = run_interleaved(calls, per_sample, rounds, time.perf_counter, rotate=True)
    medians = {name: statistics.median(t) * 1e3 for name, t in samples.items()}  # per call
    result = SpeedCheck(backend, medians["before"], medians["after"], rounds, tolerance)
    if not result.faster:
        message = (f"{result}: the compressed graph is not faster than its input on this "
                   "machine (small layers are bound by overheads that int8 or sparsity do not "
                   "remove; try another mode, exclude the small layers, or keep the float graph)")
        if require_faster:
            raise SpeedRegressionError(message)
        warnings.warn(message, SpeedRegressionWarning, stacklevel=2)
    return result
