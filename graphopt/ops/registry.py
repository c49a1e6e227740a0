"""The op registry: every IR op is declared once, here-through ``@register_op``.

An ``OpDef`` holds the op's operand names, attribute schema, traits, type-inference rule and
reference implementation (torch functional code, which the interpreter runs and ``to_torch``
emits). Backends attach their lowerings with ``register_lowering`` so that "which ops does the
ONNX/native backend support" is a registry query, not a grep.

Declaring an op::

    @register_op("relu", inputs=("x",), traits=ELEMENTWISE_UNARY, infer=same_as_input)
    def relu(x):
        return torch.relu(x)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import sympy

from graphopt.errors import AttrError, TypeInferenceError, UnknownOpError
from graphopt.ir.attrs import Attrs
from graphopt.ir.schema import install_op_library
from graphopt.ir.types import TensorType

REQUIRED = object()  # sentinel default: the attribute must be given

# Traits. Purity drives DCE/CSE/constant folding; the rest drive generic rewrites.
PURE = "pure"  # no side effects, output depends only on inputs and attrs
ELEMENTWISE = "elementwise"  # output[i] depends on input[i] only (after broadcasting)
COMMUTATIVE = "commutative"  # binary op with f(a, b) == f(b, a)
BROADCAST = "broadcast"  # operands broadcast numpy-style
SHAPE_ONLY = "shape_only"  # moves data without arithmetic (reshape, permute, slice...)
FUSED = "fused"  # produced by a fusion pass, not by a frontend

ELEMENTWISE_UNARY = frozenset({PURE, ELEMENTWISE})
ELEMENTWISE_BINARY = frozenset({PURE, ELEMENTWISE, BROADCAST})


@dataclass(frozen=True)
class AttrSpec:
    """An attribute: its Python kind(s) for validation, its default (or REQUIRED) and, for
    enumerated string attributes, the values it may take (``choices``)."""

    kind: Any
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple | None = None

    def check(self, value: Any) -> str | None:
        """Why ``value`` does not fit this spec, or None. ``int`` kinds take size expressions
        (symbolic dims) and ``float`` kinds take ints; ``bool`` is never an ``int`` here."""
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if object in kinds:
            return None
        if value is None and (type(None) in kinds or self.default is None):
            return None
        if isinstance(value, bool):
            fits = bool in kinds
        elif isinstance(value, int):
            fits = int in kinds or float in kinds
        elif isinstance(value, sympy.Expr):
            fits = int in kinds
        else:
            fits = isinstance(value, tuple(k for k in kinds if isinstance(k, type)))
        if not fits:
            names = "/".join(getattr(k, "__name__", str(k)) for k in kinds)
            return f"must be {names}, got {type(value).__name__} {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {list(self.choices)}, got {value!r}"
        return None


@dataclass
class OpDef:
    name: str
    inputs: tuple[str, ...]
    attrs: dict[str, AttrSpec]
    traits: frozenset[str]
    infer: Callable[[list[TensorType | None], Attrs], Sequence[TensorType] | TensorType]
    reference: Callable[..., Any]
    doc: str = ""
    lowerings: dict[str, Callable] = field(default_factory=dict)

    # -------------------------------------------------------------------------------- checks
    @property
    def min_inputs(self) -> int:
        return sum(1 for n in self.inputs if not n.endswith(("?", "*")))

    @property
    def variadic(self) -> bool:
        return bool(self.inputs) and self.inputs[-1].endswith("*")

    def check_arity(self, inputs: Sequence[Any], context: str) -> None:
        n = len(inputs)
        fixed = len(self.inputs) - (1 if self.variadic else 0)
        if n < self.min_inputs or (not self.variadic and n > len(self.inputs)):
            raise TypeInferenceError(
                f"{context}: op '{self.name}' takes operands ({', '.join(self.inputs)}), got {n}"
            )
        for i, name in enumerate(self.inputs[:fixed]):
            if i < n and inputs[i] is None and not name.endswith("?"):
                raise TypeInferenceError(f"{context}: operand '{name}' of '{self.name}' is required")
        if self.variadic and any(v is None for v in inputs[fixed:]):
            raise TypeInferenceError(f"{context}: variadic operands of '{self.name}' cannot be None")

    def check_attrs(self, attrs: Mapping[str, Any] | None, context: str) -> Attrs:
        given = dict(attrs or {})
        unknown = sorted(set(given) - set(self.attrs))
        if unknown:
            known = ", ".join(sorted(self.attrs)) or "none"
            raise AttrError(
                f"{context}: unknown attribute(s) {unknown} for op '{self.name}' (known: {known})"
            )
        full = {}
        for key, spec in self.attrs.items():
            if key in given:
                problem = spec.check(given[key])
                if problem is not None:
                    raise AttrError(f"{context}: attribute '{key}' of op '{self.name}' {problem}")
                full[key] = given[key]
            elif spec.default is REQUIRED:
                raise AttrError(f"{context}: op '{self.name}' requires attribute '{key}'")
            else:
                full[key] = spec.default
        return attrs if isinstance(attrs, Attrs) and dict(attrs) == full else Attrs(full)

    def infer_types(self, types: list[TensorType | None], attrs: Attrs) -> list[TensorType]:
        try:
            out = self.infer(types, attrs)
        except TypeInferenceError:
            raise
        except (ValueError, IndexError, TypeError, KeyError, ArithmeticError, AttributeError) as exc:
            # A shape rule fed attrs from a file (stride 0, an axis past the rank, a step of 0)
            # fails in Python arithmetic; the caller gets a typed error naming the op instead.
            shapes = ", ".join("None" if t is None else str(t) for t in types)
            raise TypeInferenceError(
                f"op '{self.name}' rejects operands ({shapes}) with attrs {dict(attrs)}: {exc}"
            ) from exc
        return [out] if isinstance(out, TensorType) else list(out)

    def run(self, *args, **attrs):
        return self.reference(*args, **attrs)


_REGISTRY: dict[str, OpDef] = {}


def register_op(
    name: str,
    *,
    inputs: Sequence[str],
    attrs: Mapping[str, AttrSpec | Any] | None = None,
    traits: frozenset[str] | set[str] = frozenset({PURE}),
    infer: Callable,
    doc: str | None = None,
):
    """Decorator declaring an op; the decorated function is its reference implementation.

    ``attrs`` maps names to ``AttrSpec`` or to a bare default value (kind taken from it).
    """

    def decorate(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"op '{name}' is already registered")
        specs = {}
        for key, spec in (attrs or {}).items():
            specs[key] = spec if isinstance(spec, AttrSpec) else AttrSpec(type(spec), spec)
        _REGISTRY[name] = OpDef(
            name=name,
            inputs=tuple(inputs),
            attrs=specs,
            traits=frozenset(traits),
            infer=infer,
            reference=fn,
            doc=(doc or fn.__doc__ or "").strip(),
        )
        return fn

    return decorate


def get_op(name: str) -> OpDef:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownOpError(
            f"unknown op '{name}'; registered ops: {', '.join(sorted(_REGISTRY))}"
        ) from None


def all_ops() -> dict[str, OpDef]:
    _ensure_loaded()
    return dict(_REGISTRY)


def register_lowering(backend: str, op: str):
    """Decorator attaching ``fn`` as ``op``'s lowering for ``backend`` (e.g. "onnx")."""

    def decorate(fn: Callable) -> Callable:
        get_op(op).lowerings[backend] = fn
        return fn

    return decorate


_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import graphopt.ops  # noqa: F401  (registers every built-in op)


# The IR (graph construction, verifier, parser) looks ops up through this hook rather than
# importing the registry: ir sits below ops in the layer contract (graphopt/ir/schema.py).
install_op_library(get_op, all_ops)
