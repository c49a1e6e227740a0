"""Does a compression pay? Time a compressed graph against the graph it came from.

``check_speed(before, after, args)`` compiles both graphs for one backend and times them on the
same inputs as speed-aware quantization does (``graphopt.quant.layer_cost.time_graphs``: calls
batched into samples of a few milliseconds, the two variants interleaved in a rotating order so
that load from other processes hits both alike, in blocks with pauses where the backend's pools
spin, medians). The result says whether ``after`` is
faster; ``graphopt quantize / prune / compress --check-speed`` print it and warn when it is
not (``--require-faster``: an error, nothing written). Issue #24: "my int8 model is slower than
fp32" should be said by the tool, not found by the user.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

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
    from graphopt.quant.layer_cost import time_graphs

    args = tuple(args)
    samples = time_graphs({"before": (before, args), "after": (after, args)}, backend, threads,
                          rounds)
    medians = {name: statistics.median(t) for name, t in samples.items()}  # ms per call
    result = SpeedCheck(backend, medians["before"], medians["after"], rounds, tolerance)
    if not result.faster:
        message = (f"{result}: the compressed graph is not faster than its input on this "
                   "machine (small layers are bound by overheads that int8 or sparsity do not "
                   "remove; try another mode, exclude the small layers, or keep the float graph)")
        if require_faster:
            raise SpeedRegressionError(message)
        warnings.warn(message, SpeedRegressionWarning, stacklevel=2)
    return result
