"""Option records behind the keyword entry points: one frozen, validated dataclass each.

``graphopt.quantize``, ``prune``, ``finetune`` and ``benchmark`` keep their keyword APIs; each
builds its config (``QuantizeConfig``, ``PruneConfig``, ``FinetuneConfig``, ``BenchmarkConfig``)
first, so that every option is checked in one place, before any work, and the run can print and
save exactly what it was asked to do. ``Target`` (``graphopt.compile``) is one too.

A config holds options, never data: calibration batches, training data, teachers and example
inputs stay arguments of the entry point. Every config also accepts ``config=`` in place of
the keywords::

    cfg = graphopt.QuantizeConfig(mode="static", observer="entropy")
    q = graphopt.quantize(graph, config=cfg, calibration=batches)
    print(cfg)            # QuantizeConfig(mode='static', observer='entropy', ...)
    cfg.to_dict()         # JSON-able, stored in the reports
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from graphopt.errors import GraphoptError


class Config:
    """Mixin for the option dataclasses: ``to_dict``, ``__str__``, ``replace``, validation.

    Subclasses are ``@dataclass(frozen=True)`` and set ``_error`` (the ``GraphoptError``
    subclass their checks raise) and ``_entry`` (the entry point named in messages).
    """

    _error: ClassVar[type[GraphoptError]] = GraphoptError
    _entry: ClassVar[str] = "graphopt"

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-able values (callables and objects by name)."""
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def __str__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({items})"

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied (and validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def resolve(cls, config: Any = None, **keywords: Any):
        """``config`` if given (the keywords must then be at their defaults), else
        ``cls(**keywords)``. The error names every keyword that conflicts with ``config``."""
        if config is None:
            return cls(**keywords)
        if not isinstance(config, cls):
            raise cls._error(f"{cls._entry}: config must be a {cls.__name__}, got "
                             f"{type(config).__name__}")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        clashes = sorted(k for k, v in keywords.items()
                         if k in defaults and not _same(v, defaults[k]))
        if clashes:
            raise cls._error(f"{cls._entry}: pass options either as keywords or in config=, "
                             f"not both (also given as keywords: {', '.join(clashes)})")
        return config

    # ------------------------------------------------------------------ checks for subclasses
    def _fail(self, name: str, value: Any, expected: str) -> None:
        raise self._error(f"{self._entry}: {name}={value!r} must be {expected}")

    def _check_choice(self, name: str, allowed: tuple) -> None:
        value = getattr(self, name)
        if not isinstance(value, str) or value not in allowed:
            names = [repr(a) for a in allowed]
            self._fail(name, value, " or ".join(names) if len(names) == 2
                       else "one of " + ", ".join(names))

    def _check_int(self, name: str, low: int, allowed: tuple = ()) -> None:
        value = getattr(self, name)
        if allowed:
            if isinstance(value, bool) or value not in allowed:
                self._fail(name, value, " or ".join(str(a) for a in allowed))
        elif isinstance(value, bool) or not isinstance(value, int) or value < low:
            self._fail(name, value, f"an int >= {low}")

    def _check_number(self, name: str, low: float = 0.0, high: float | None = None, *,
                      optional: bool = False, open_high: bool = True) -> None:
        value = getattr(self, name)
        if value is None and optional:
            return
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and low <= value < float("inf")
              and (high is None or (value < high if open_high else value <= high)))
        if not ok:
            span = (f"in [{low:g}, {high:g}{')' if open_high else ']'}" if high is not None
                    else f"a finite number >= {low:g}")
            self._fail(name, value, span + (" or None" if optional else ""))

    def _check_bool(self, name: str) -> None:
        if not isinstance(getattr(self, name), bool):
            self._fail(name, getattr(self, name), "True or False")

    def _set(self, name: str, value: Any) -> None:
        """Normalize a field in ``__post_init__`` (the dataclass is frozen)."""
        object.__setattr__(self, name, value)


def _same(value: Any, default: Any) -> bool:
    if value is default:
        return True
    if isinstance(value, (tuple, list)) and isinstance(default, (tuple, list)):
        return tuple(value) == tuple(default)
    try:
        return bool(value == default)
    except Exception:  # arrays and other objects without a plain truth value
        return False


def jsonable(value: Any) -> Any:
    """``value`` as JSON data: containers recursively, callables and objects by name."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    name = getattr(value, "name", None)
    if isinstance(name, str):
        return name
    if callable(value):
        return f"<{getattr(value, '__qualname__', None) or type(value).__name__}>"
    return repr(value)


def string_tuple(value: Any, error: type[GraphoptError], what: str) -> tuple[str, ...]:
    """``value`` (one string, or an iterable of strings) as a tuple of strings.

    Raises ``error`` with ``what`` (e.g. "graphopt.quantize: exclude must be glob strings")
    and the offending items when any item is not a string.
    """
    try:
        items = (value,) if isinstance(value, str) else tuple(value)
    except TypeError:
        items = (value,)
    bad = [item for item in items if not isinstance(item, str)]
    if bad:
        raise error(f"{what}, got {bad!r}")
    return items


__all__ = ["Config", "jsonable", "string_tuple"]
