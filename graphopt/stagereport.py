"""What a stage cost: wall time and peak memory of trace, optimize, quantize, compile, export...

Every public stage takes ``report=True`` and then returns ``(result, report)``; for the stages
without a report of their own (``trace``, ``compile``, ``to_onnx``, ``from_onnx``, ``to_torch``,
loading) the report is a :class:`StageReport`; ``optimize``, ``quantize`` and ``prune`` attach
one to the report they already return (its ``stage`` attribute)::

    graph, cost = graphopt.trace(model, args, report=True)
    print(cost)   # trace: 4.10 s, peak RSS 3.52 GiB (+0.08 GiB over its start), +0.01 GiB kept

Peak memory is the process's resident set (RSS). On Linux the kernel's peak counter (VmHWM) is
reset by writing "5" to ``/proc/self/clear_refs`` at the start of each stage, so a stage's
peak is its own ("proc-hwm"). Stages nest (``optimize`` inside a benchmark's setup): an inner
stage's reset would hide the outer stage's earlier peak, so the outer one reads the counter
before the inner reset and keeps the larger value. Elsewhere the process-wide ``ru_maxrss``
("ru_maxrss") only shows growth beyond every earlier peak. Measure from one thread at a time.
"""

from __future__ import annotations

import contextlib
import functools
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


@dataclass
class StageReport:
    """Time and memory of one stage.

    Attributes:
        stage: its name ("trace", "optimize", "compile native", ...).
        seconds: wall time.
        rss_before_mib / rss_after_mib: resident memory at its start and end.
        peak_mib: the highest resident memory while it ran (see the module doc for how).
        method: "proc-hwm" (the stage's own peak) or "ru_maxrss" (process-wide peak).
    """

    stage: str
    seconds: float = 0.0
    rss_before_mib: float = 0.0
    peak_mib: float = 0.0
    rss_after_mib: float = 0.0
    method: str = "proc-hwm"

    @property
    def peak_increase_mib(self) -> float:
        """How far the peak rose above the memory at the stage's start."""
        return max(0.0, self.peak_mib - self.rss_before_mib)

    @property
    def retained_mib(self) -> float:
        """Memory the stage left allocated (its result, caches)."""
        return self.rss_after_mib - self.rss_before_mib

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "seconds": self.seconds,
                "rss_before_mib": self.rss_before_mib, "peak_mib": self.peak_mib,
                "rss_after_mib": self.rss_after_mib, "method": self.method}

    def __str__(self) -> str:
        return (f"{self.stage}: {_seconds(self.seconds)}, peak RSS {_gib(self.peak_mib)} "
                f"({_signed_gib(self.peak_increase_mib)} over its start), "
                f"{_signed_gib(self.retained_mib)} kept")


class PeakMeter:
    """Peak and retained RSS of a code section, in MiB; sections may nest (module doc)."""

    _open: list[PeakMeter] = []  # the sections being measured, outermost first

    def __init__(self) -> None:
        self.method = "proc-hwm" if can_reset_peak() else "ru_maxrss"
        self.rss_before = 0.0
        self.peak_before = 0.0
        self.peak_seen = 0.0  # peaks of this section hidden by nested resets

    def start(self) -> None:
        if self.method == "proc-hwm":
            if PeakMeter._open:  # the enclosing section's peak so far, before the reset
                parent = PeakMeter._open[-1]
                parent.peak_seen = max(parent.peak_seen, status_mib("VmHWM"))
            _reset_peak()
        self.rss_before = rss_mib()
        self.peak_before = self._peak()
        self.peak_seen = self.rss_before
        PeakMeter._open.append(self)

    def stop(self) -> tuple[float, float]:
        """(peak increase, retained increase) over the RSS at ``start``."""
        peak = self.peak_mib()
        if self in PeakMeter._open:
            PeakMeter._open.remove(self)
        if PeakMeter._open and self.method == "proc-hwm":
            parent = PeakMeter._open[-1]
            parent.peak_seen = max(parent.peak_seen, peak)
        if self.method == "ru_maxrss":
            increase = max(0.0, peak - max(self.peak_before, self.rss_before))
        else:
            increase = max(0.0, peak - self.rss_before)
        return increase, rss_mib() - self.rss_before

    def peak_mib(self) -> float:
        """The section's peak RSS so far (absolute)."""
        return max(self.peak_seen, self._peak())

    def _peak(self) -> float:
        if self.method == "proc-hwm":
            return status_mib("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextlib.contextmanager
def measure(stage: str) -> Iterator[StageReport]:
    """Measure the block: ``with measure("trace") as report: ...``; the report is filled in
    when the block ends (also when it raises)."""
    report = StageReport(stage)
    meter = PeakMeter()
    meter.start()
    report.method = meter.method
    report.rss_before_mib = meter.rss_before
    start = time.perf_counter()
    try:
        yield report
    finally:
        report.seconds = time.perf_counter() - start
        report.peak_mib = meter.peak_mib()
        meter.stop()
        report.rss_after_mib = rss_mib()


F = TypeVar("F", bound=Callable[..., Any])


def reports_stage(stage: str | Callable[..., str]) -> Callable[[F], F]:
    """Give a function the ``report=False`` keyword: with ``report=True`` it returns
    ``(result, StageReport)``. ``stage`` is the name, or a function of the call's arguments
    returning it (e.g. "compile native")."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, report: bool = False, **kwargs: Any) -> Any:
            if not report:
                return fn(*args, **kwargs)
            name = stage(*args, **kwargs) if callable(stage) else stage
            with measure(name) as cost:
                result = fn(*args, **kwargs)
            return result, cost

        return wrapper  # type: ignore[return-value]

    return decorate


# ----------------------------------------------------------------------------- /proc readers
def status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field in MiB; 0.0 where there is none (not Linux)."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def rss_mib() -> float:
    """Resident memory now, in MiB (``ru_maxrss`` where /proc is missing)."""
    value = status_mib("VmRSS")
    if value:
        return value
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


_RESETTABLE: list[bool] = []


def can_reset_peak() -> bool:
    """Whether the kernel's peak-RSS counter can be reset (Linux ``clear_refs``)."""
    if not _RESETTABLE:
        ok = bool(status_mib("VmHWM"))
        if ok:
            try:
                _reset_peak()
            except OSError:
                ok = False
        _RESETTABLE.append(ok)
    return _RESETTABLE[0]


def _reset_peak() -> None:
    with open(_CLEAR_REFS, "w") as f:
        f.write("5")


def _seconds(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def _gib(mib: float) -> str:
    return f"{mib / 1024:.2f} GiB"


def _signed_gib(mib: float) -> str:
    return f"{mib / 1024:+.2f} GiB"


__all__ = ["PeakMeter", "StageReport", "can_reset_peak", "measure", "reports_stage",
           "rss_mib", "status_mib"]
