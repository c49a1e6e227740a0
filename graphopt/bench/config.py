"""``BenchmarkConfig``: the options of ``graphopt.benchmark``, checked before any backend is
set up; its ``to_dict()`` is the ``config`` section of the ``BenchmarkReport`` (with what the
run resolved: thread count, order, rounds done, reference)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from graphopt.bench.backends import DEFAULT_BACKENDS, BenchBackend
from graphopt.compile import Target
from graphopt.config import Config
from graphopt.errors import GraphoptError


class BenchmarkConfigError(GraphoptError, ValueError):
    """A ``graphopt.benchmark`` option is out of range or of the wrong kind."""


@dataclass(frozen=True)
class BenchmarkConfig(Config):
    """The options of :func:`graphopt.benchmark` (see it for what each one does).

    ``backends`` given as ``"a,b"`` text becomes a tuple of names. ``target`` (a
    :class:`graphopt.Target`) gives the threads of every backend and the ISA they are planned
    for (checked against this machine); its ``backend`` is recorded, the timed backends are
    ``backends``. ``threads`` and ``target.threads`` may not disagree.
    """

    backends: tuple[str | BenchBackend, ...] = tuple(DEFAULT_BACKENDS)
    pipeline: Any = field(default="default", hash=False)
    threads: int | None = None
    warmup: int = 3
    rounds: int = 40
    block: int = 4
    pause_s: float = 0.1
    min_sample_s: float = 0.01
    max_time_s: float | None = None
    rtol: float = 1e-3
    atol: float = 1e-4
    per_pass: bool | str = False
    backend_options: dict[str, dict] | None = field(default=None, hash=False)
    progress: bool | None = None
    name: str | None = None
    workdir: str | None = None
    target: Target | None = None

    _error = BenchmarkConfigError
    _entry = "graphopt.benchmark"

    def __post_init__(self) -> None:
        self._set("backends", _backend_list(self.backends))
        if not self.backends:
            self._fail("backends", self.backends, "at least one backend")
        if self.threads is not None:
            from graphopt.limits import check_threads

            check_threads(self.threads, f"graphopt.benchmark(threads={self.threads!r})")
        if self.target is not None:
            self._set("target", Target.from_args(self.target, threads=self.threads))
        self._check_int("warmup", 0)
        self._check_int("rounds", 1)
        self._check_int("block", 1)
        self._check_number("pause_s", 0.0)
        self._check_number("min_sample_s", 0.0)
        self._check_number("max_time_s", 0.0, optional=True)
        self._check_number("rtol", 0.0)
        self._check_number("atol", 0.0)
        if not isinstance(self.per_pass, (bool, str)):
            self._fail("per_pass", self.per_pass, "True, False or a backend name")
        if self.progress is not None:
            self._check_bool("progress")
        self._check_options()

    def _check_options(self) -> None:
        options = self.backend_options
        if options is None:
            return
        if not isinstance(options, dict) or not all(isinstance(v, dict)
                                                    for v in options.values()):
            self._fail("backend_options", options, "{backend name: {option: value}}")
        self._set("backend_options", {k: dict(v) for k, v in options.items()})

    @property
    def run_threads(self) -> int | None:
        """The thread count asked for (``threads``, else the target's); None: torch's."""
        if self.threads is not None:
            return self.threads
        return self.target.threads if self.target is not None else None


def _backend_list(backends: Any) -> tuple:
    if isinstance(backends, str):
        backends = [b.strip() for b in backends.split(",") if b.strip()]
    try:
        items = tuple(backends)
    except TypeError:
        raise BenchmarkConfigError(f"graphopt.benchmark: backends={backends!r} must be names "
                                   "or BenchBackend objects") from None
    bad = [b for b in items if not isinstance(b, (str, BenchBackend))]
    if bad:
        raise BenchmarkConfigError(f"graphopt.benchmark: backends must be names or "
                                   f"BenchBackend objects, got {bad!r}")
    return items


def backend_names(backends: Sequence[str | BenchBackend]) -> list[str]:
    return [b if isinstance(b, str) else b.name for b in backends]


__all__ = ["BenchmarkConfig", "BenchmarkConfigError", "backend_names"]
