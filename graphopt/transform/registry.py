"""The pass registry: ``@register_pass`` and typed pass options.

A pass is a class whose dataclass fields are its options (with defaults) and whose
``run(graph) -> bool`` rewrites the graph in place and says whether it changed it::

    @register_pass("fold-constants")
    class FoldConstants:
        '''Evaluate pure nodes whose operands are all constants.'''  # `graphopt passes` shows it
        max_growth: float = 2.0

        def run(self, graph: Graph) -> bool: ...

The class is made a dataclass if it is not one already. A trivial pass may be a function
``fn(graph) -> bool``. Options given as text (pipeline strings) are converted by the field's
type: ``int``, ``float``, ``bool``, ``str``, ``tuple[X, ...]``, ``X | None`` and ``Literal[...]``.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphopt.errors import PassOptionError, UnknownPassError
from graphopt.ir.graph import Graph


@dataclass(frozen=True)
class OptionSpec:
    """One pass option: its name, declared type and default."""

    name: str
    type: Any
    default: Any

    @property
    def type_name(self) -> str:
        return type_name(self.type)


@dataclass
class PassInfo:
    """A registered pass: name, factory (class or function), docs and options."""

    name: str
    factory: Any
    doc: str
    options: dict[str, OptionSpec]
    is_function: bool

    @property
    def summary(self) -> str:
        """The docstring's first line (what ``graphopt passes`` lists)."""
        return self.doc.strip().splitlines()[0].strip()

    def create(self, **options: Any) -> Any:
        """A pass instance with ``options`` (text or Python values) converted and checked."""
        if self.is_function:
            if options:
                raise PassOptionError(
                    f"pass '{self.name}' takes no options, got {', '.join(sorted(options))}"
                )
            return FunctionPass(self.name, self.factory)
        kwargs = {key: convert_option(self, key, value) for key, value in options.items()}
        return self.factory(**kwargs)


class FunctionPass:
    """A function ``fn(graph) -> bool`` registered (or used in a pipeline) as a pass."""

    def __init__(self, name: str, fn: Callable[[Graph], bool]):
        self.pass_name = name
        self.fn = fn

    def run(self, graph: Graph) -> bool:
        return bool(self.fn(graph))

    def __repr__(self) -> str:
        return f"<pass {self.pass_name}>"


_PASSES: dict[str, PassInfo] = {}


def register_pass(name: str, *, replace: bool = False):
    """Decorator registering a pass class (options = dataclass fields) or function.

    Args:
        name: kebab-case pass name used in pipelines (``"fuse-conv-bn"``).
        replace: allow replacing an existing registration (tests, notebooks).

    Raises:
        ValueError: the name is taken, or the pass has no docstring / no ``run`` method.
    """

    def decorate(obj):
        doc = (obj.__doc__ or "").strip()
        if not doc:
            raise ValueError(f"pass '{name}' needs a docstring (first line = one-line summary)")
        existing = _PASSES.get(name)
        if existing is not None and not replace and not _same_definition(existing.factory, obj):
            raise ValueError(
                f"pass '{name}' is already registered by "
                f"{existing.factory.__module__}.{existing.factory.__qualname__}"
            )
        if isinstance(obj, type):
            if not callable(getattr(obj, "run", None)):
                raise ValueError(f"pass class {obj.__qualname__} needs a run(graph) -> bool method")
            if "__dataclass_fields__" not in obj.__dict__:
                frozen = any(
                    getattr(b, "__dataclass_params__", None) is not None
                    and b.__dataclass_params__.frozen
                    for b in obj.__mro__[1:]
                )
                obj = dataclasses.dataclass(frozen=frozen)(obj)
            obj.pass_name = name
            info = PassInfo(name, obj, doc, _option_specs(obj), is_function=False)
        elif callable(obj):
            obj.pass_name = name
            info = PassInfo(name, obj, doc, {}, is_function=True)
        else:
            raise TypeError(f"@register_pass expects a class or a function, got {obj!r}")
        _PASSES[name] = info
        return obj

    return decorate


def _same_definition(a: Any, b: Any) -> bool:
    # A module imported twice under two names (``graphopt.passes.dce`` and, from a source
    # checkout, ``passes.dce``) re-registers the same pass.
    mod_a, mod_b = getattr(a, "__module__", "") or "", getattr(b, "__module__", "") or ""
    same_module = mod_a == mod_b or mod_a.endswith("." + mod_b) or mod_b.endswith("." + mod_a)
    return same_module and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)


def _option_specs(cls: type) -> dict[str, OptionSpec]:
    hints = typing.get_type_hints(cls)
    specs = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise ValueError(f"option '{f.name}' of pass class {cls.__qualname__} needs a default")
        specs[f.name] = OptionSpec(f.name, hints.get(f.name, Any), default)
    return specs


def get_pass_info(name: str) -> PassInfo:
    """The registered pass ``name`` (kebab-case; snake_case is accepted too)."""
    load_pass_library()
    info = _PASSES.get(name) or _PASSES.get(name.replace("_", "-"))
    if info is None:
        raise UnknownPassError(unknown_pass_message(name))
    return info


def unknown_pass_message(name: str, extra: tuple[str, ...] = ()) -> str:
    known = sorted(_PASSES)
    close = difflib.get_close_matches(name, known + list(extra), n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    text = f"unknown pass '{name}'.{hint} Registered passes: {', '.join(known) or 'none'}"
    if extra:
        text += f"; named pipelines: {', '.join(sorted(extra))}"
    return text


def all_passes() -> dict[str, PassInfo]:
    """Every registered pass by name (loads the built-in pass library first)."""
    load_pass_library()
    return dict(sorted(_PASSES.items()))


def create_pass(name: str, **options: Any) -> Any:
    """Instantiate the registered pass ``name`` with options (text or Python values)."""
    return get_pass_info(name).create(**options)


def pass_name(p: Any) -> str:
    """The registered name of a pass instance (class name for unregistered objects)."""
    return getattr(p, "pass_name", None) or type(p).__name__


def pass_options(p: Any) -> dict[str, Any]:
    """A pass instance's option values (empty for function passes)."""
    if dataclasses.is_dataclass(p) and not isinstance(p, type):
        return {
            f.name: getattr(p, f.name)
            for f in dataclasses.fields(p)
            if f.init and not f.name.startswith("_")
        }
    return {}


def pass_text(p: Any) -> str:
    """``name{opt=value,...}`` listing the options that differ from their defaults."""
    name = pass_name(p)
    info = _PASSES.get(name)
    opts = pass_options(p)
    if info is not None:
        opts = {
            k: v for k, v in opts.items() if k not in info.options or info.options[k].default != v
        }
    if not opts:
        return name
    return name + "{" + ",".join(f"{k}={format_option(v)}" for k, v in opts.items()) + "}"


# ------------------------------------------------------------------------ option conversion
def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{type_name(args[0])}, ...]"
        return f"tuple[{', '.join(type_name(a) for a in args)}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def format_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(format_option(v) for v in value) + "]"
    return str(value)


def convert_option(info: PassInfo, key: str, value: Any) -> Any:
    """Convert/check option ``key`` of pass ``info`` (text from a pipeline or a Python value)."""
    spec = info.options.get(key)
    if spec is None:
        known = (
            ", ".join(
                f"{k}: {s.type_name} = {format_option(s.default)}" for k, s in info.options.items()
            )
            or "none"
        )
        raise PassOptionError(f"pass '{info.name}' has no option '{key}' (options: {known})")
    try:
        return _convert(spec.type, value)
    except (ValueError, TypeError) as exc:
        raise PassOptionError(
            f"option '{key}' of pass '{info.name}' expects {spec.type_name}, got {value!r}: {exc}"
        ) from None


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _convert(tp: Any, value: Any) -> Any:
    """``value`` (pipeline text or a Python value) as type ``tp``; ValueError/TypeError if not."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Literal:
        for choice in typing.get_args(tp):
            if value == choice or (isinstance(value, str) and str(choice) == value.strip()):
                return choice
        raise ValueError("not one of the allowed values")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return _convert_union(tp, value)
    if origin is tuple or tp is tuple:
        return _convert_tuple(tp, value)
    if tp is bool:
        return _convert_bool(value)
    if tp is int:
        return _convert_int(value)
    if tp is float:
        return _convert_float(value)
    if tp is str:
        return _convert_str(value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise TypeError(f"{type(value).__name__} is not a {tp.__name__}")
    return value


def _convert_union(tp: Any, value: Any) -> Any:
    """The first member of the union that accepts ``value`` ("none" is None for Optional)."""
    args = typing.get_args(tp)
    if type(None) in args and (
        value is None or (isinstance(value, str) and value.strip().lower() == "none")
    ):
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(arg, value)
        except (ValueError, TypeError) as exc:
            errors.append(str(exc))
    raise ValueError("; ".join(errors))


def _convert_tuple(tp: Any, value: Any) -> tuple:
    """A tuple from a list, a tuple or the text ``[a,b]``, each item converted to its type."""
    items = _split_list(value) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise TypeError("not a list")
    args = typing.get_args(tp)
    if not args:
        return tuple(items)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], v) for v in items)
    if len(args) != len(items):
        raise ValueError(f"expected {len(args)} items, got {len(items)}")
    return tuple(_convert(a, v) for a, v in zip(args, items))


def _convert_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("not a boolean (true/false)")


def _convert_int(value: Any) -> int:
    # bool is a subclass of int, but true for a count is a mistake worth reporting.
    if isinstance(value, bool):
        raise TypeError("a bool is not an int")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value.strip())
    raise TypeError(f"{type(value).__name__} is not an int")


def _convert_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("a bool is not a float")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise TypeError(f"{type(value).__name__} is not a float")


def _convert_str(value: Any) -> str:
    """The text, stripped, without one pair of enclosing quotes."""
    if not isinstance(value, str):
        raise TypeError(f"{type(value).__name__} is not a str")
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return text


def _split_list(text: str) -> list[str]:
    text = text.strip()
    if text[:1] in "[(" and text[-1:] in "])":
        text = text[1:-1]
    elif not text:
        return []
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return [p.strip() for p in parts]


# ------------------------------------------------------------------------ built-in passes
_library_loaded = False


def load_pass_library() -> None:
    """Import the built-in passes (``graphopt.passes``, the top-level ``passes/`` directory).

    When graphopt runs from a source checkout (not installed), ``passes/`` is not yet mapped to
    ``graphopt.passes``; it is then loaded from the checkout under that name.
    """
    global _library_loaded
    if _library_loaded:
        return
    _library_loaded = True
    import importlib
    import importlib.util
    import os
    import sys

    try:
        importlib.import_module("graphopt.passes")
        return
    except ModuleNotFoundError as exc:
        if exc.name != "graphopt.passes":
            raise
    # The package is already imported (this module is inside it); it is looked up, not imported:
    # nothing below the facade imports it (the layer contract, pyproject.toml).
    package = sys.modules["graphopt"]
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(package.__file__))),
                        "passes")
    init = os.path.join(root, "__init__.py")
    if not os.path.exists(init):
        return
    spec = importlib.util.spec_from_file_location(
        "graphopt.passes", init, submodule_search_locations=[root]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["graphopt.passes"] = module
    package.passes = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["graphopt.passes"]
        _library_loaded = False
        raise
