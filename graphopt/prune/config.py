"""``PruneConfig`` and ``FinetuneConfig``: the options of ``graphopt.prune`` and
``graphopt.finetune``, checked once, printable, saved in the ``PruneReport``.

Data stays out of them: importance ``scores``, taylor ``data`` / ``loss``, training batches and
the teacher remain arguments of the entry points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from graphopt.config import Config, string_tuple
from graphopt.errors import PruneError

METHODS = ("channels", "magnitude")
ALIASES = {"structured": "channels", "unstructured": "magnitude", "scores": "magnitude"}
SCOPES = ("layer", "global")


@dataclass(frozen=True)
class PruneConfig(Config):
    """The options of :func:`graphopt.prune` (see it for what each one does).

    ``method`` aliases (``structured``, ``unstructured``, ``scores``) are stored under their
    canonical name; ``exclude`` becomes a tuple of globs.
    """

    method: str = "channels"
    ratio: float | Mapping[str, float] | None = field(default=None, hash=False)
    flops: float | None = None
    importance: str | Callable = "l1"
    sparsity: float | None = None
    scope: str = "layer"
    exclude: tuple[str, ...] = ()
    max_ratio: float = 0.9
    round_to: int = 1

    _error = PruneError
    _entry = "graphopt.prune"

    def __post_init__(self) -> None:
        method = ALIASES.get(self.method, self.method) if isinstance(self.method, str) else None
        if method not in METHODS:
            raise PruneError(f"unknown pruning method {self.method!r}; known: "
                             f"{', '.join(METHODS)}")
        self._set("method", method)
        self._set("exclude", _globs(self.exclude))
        self._check_choice("scope", SCOPES)
        self._check_ratio()
        self._check_number("flops", 0.0, 1.0, optional=True)
        self._check_number("sparsity", 0.0, 1.0, optional=True)
        self._check_number("max_ratio", 0.0, 1.0, open_high=False)
        self._check_int("round_to", 1)
        self._check_importance()
        if method == "channels" and self.ratio is None and self.flops is None:
            raise PruneError("method='channels' needs ratio= or flops=")
        if method == "magnitude" and self.sparsity is None:
            raise PruneError("method='magnitude' needs sparsity=")

    def _check_ratio(self) -> None:
        if isinstance(self.ratio, Mapping):
            bad = {k: v for k, v in self.ratio.items() if not isinstance(k, str)
                   or isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1}
            if bad:
                self._fail("ratio", bad, "{glob: fraction in [0, 1)}")
            self._set("ratio", dict(self.ratio))
        else:
            self._check_number("ratio", 0.0, 1.0, optional=True)

    def _check_importance(self) -> None:
        if callable(self.importance):
            return
        from graphopt.prune.importance import CRITERIA

        self._check_choice("importance", tuple(CRITERIA))


@dataclass(frozen=True)
class FinetuneConfig(Config):
    """The options of :func:`graphopt.finetune` (see it for what each one does)."""

    epochs: int = 1
    lr: float = 1e-3
    temperature: float = 4.0
    feature_matching: bool | tuple[str, ...] = False
    seed: int = 0
    alpha: float = 0.5
    feature_weight: float = 1.0
    weight_decay: float = 0.0
    progress: bool = True

    _error = PruneError
    _entry = "graphopt.finetune"

    def __post_init__(self) -> None:
        self._check_int("epochs", 0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            self._fail("seed", self.seed, "an int")
        self._check_number("lr", 0.0)
        self._check_number("temperature", 1e-12)
        self._check_number("alpha", 0.0, 1.0, open_high=False)
        self._check_number("feature_weight", 0.0)
        self._check_number("weight_decay", 0.0)
        self._check_bool("progress")
        if self.feature_matching is None:
            self._set("feature_matching", False)
        elif not isinstance(self.feature_matching, bool):
            names = _globs(self.feature_matching, "feature_matching", "value names")
            self._set("feature_matching", names)


def _globs(value: Any, name: str = "exclude", what: str = "glob strings") -> tuple[str, ...]:
    return string_tuple(value, PruneError, f"{name} must be {what}")


__all__ = ["ALIASES", "METHODS", "SCOPES", "FinetuneConfig", "PruneConfig"]
