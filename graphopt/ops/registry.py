"""The op registry: every IR op is declared once, here-through ``@register_op``.

An ``OpDef`` holds the op's operand names, attribute schema, traits, type-inference rule and
reference implementation (torch functional code, which the interpreter runs and ``to_torch``
emits). Backends attach their lowerings with ``register_lowering`` so that "which ops does the
ONNX/native backend support" is a registry query, not a grep.

Declaring an op::

    @register_op("relu", inputs=("x",), traits=ELEMENTWISE_UNARY, infer=same_as_input)
    def relu(x):
        return torch.relu(x)

Code above the registry asks an op's traits and metadata, never its name: ``QUANTIZABLE in
node.opdef.traits``, ``get_op(node.op).weights.slot``, ``opdef.flops_per_element``. A new op
declares what it is once, here, and every pass, pruning analysis and quantizer picks it up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import sympy

from graphopt.errors import AttrError, TypeInferenceError, UnknownOpError
from graphopt.ir.attrs import Attrs
from graphopt.ir.schema import install_op_library
from graphopt.ir.types import TensorType
from graphopt.ops import unsigned

REQUIRED = object()  # sentinel default: the attribute must be given

# Traits. Purity drives DCE/CSE/constant folding; the rest drive generic rewrites.
PURE = "pure"  # no side effects, output depends only on inputs and attrs
ELEMENTWISE = "elementwise"  # output[i] depends on input[i] only (after broadcasting)
COMMUTATIVE = "commutative"  # binary op with f(a, b) == f(b, a)
BROADCAST = "broadcast"  # operands broadcast numpy-style
SHAPE_ONLY = "shape_only"  # moves data without arithmetic (reshape, permute, slice...)
FUSED = "fused"  # produced by a fusion pass, not by a frontend
EPILOGUE = "epilogue"  # carries a fused epilogue: ``activation`` / ``activation_params`` attrs
QUANTIZABLE = "quantizable"  # quantize-* may replace its float ``weights`` operand by integers
QDQ_TRANSPARENT = "qdq_transparent"  # Q/DQ commute with it: moves or selects values, so its
#   output shares its input's quantization parameters (reshape, permute, max_pool, zero pad...)
LAYOUT_SENSITIVE = "layout_sensitive"  # fixed meaning of axes not named by an attribute
#   (conv/pool/norm: (N, C, *spatial); linear: features last): a layout change must rewrite it
NORMALIZATION = "normalization"  # normalizes activations; its weight/bias are affine params
PRUNABLE = "prunable"  # unstructured pruning may zero entries of its ``weights`` operand
WEIGHT_STORAGE = "weight_storage"  # expands a compressed weight encoding (codebook indices):
#   constant folding keeps it, since folding would store the weight expanded again
CODEBOOK = "codebook"  # a WEIGHT_STORAGE op reading operand 0 (small integer indices, 0 = an
#   exact zero) through the table of operand 1: the compressed file Huffman-codes operand 0

ELEMENTWISE_UNARY = frozenset({PURE, ELEMENTWISE})
ELEMENTWISE_BINARY = frozenset({PURE, ELEMENTWISE, BROADCAST})


# Weight layouts (``WeightSpec.layout``): the meaning of the weight operand's axes.
OUT_IN = "out_in"  # [out, in]: linear (x @ W.T)
IN_OUT = "in_out"  # [..., in, out]: the right operand of matmul (x @ W)
OUT_IN_SPATIAL = "out_in_spatial"  # [out, in/groups, *kernel]: conv
IN_OUT_SPATIAL = "in_out_spatial"  # [in, out/groups, *kernel]: conv_transpose
TABLE = "table"  # [rows, dim]: embedding (rows gathered, no contraction)
OUT_BLOCKS = "out_blocks"  # [out, n_blocks, packed]: block-quantized linear_weight_only codes
RNN_GATES = "rnn_gates"  # [directions, gates * hidden, in]: ONNX RNN/GRU/LSTM W and R

_CHANNEL_AXIS = {OUT_IN: 0, IN_OUT: -1, OUT_IN_SPATIAL: 0, IN_OUT_SPATIAL: 1, TABLE: 0,
                 OUT_BLOCKS: 0, RNN_GATES: 1}


@dataclass(frozen=True)
class WeightSpec:
    """Where a weight-carrying op keeps its weight, and what the weight's axes mean.

    Attributes:
        slot: operand index of the weight.
        layout: one of the layout constants above (OUT_IN, IN_OUT, OUT_IN_SPATIAL, ...).
        bias: operand index of the bias added per output channel, if the op has one.
        residual: operand index of the fused residual (skip connection), if any.
        transpose_attr: bool attribute that swaps the weight's last two axes when set
            (fused_matmul ``trans_b``: the layout is then OUT_IN).
        lhs_slot: an operand that may also be a constant weight used as ``[out, in]``
            (a constant left operand of matmul: ``W @ x``).
    """

    slot: int
    layout: str
    bias: int | None = None
    residual: int | None = None
    transpose_attr: str | None = None
    lhs_slot: int | None = None

    def __post_init__(self):
        if self.layout not in _CHANNEL_AXIS:
            raise ValueError(f"unknown weight layout '{self.layout}'")

    @property
    def channel_axis(self) -> int:
        """The weight axis indexing output channels (table rows): per-channel quantization
        scales and structured pruning follow it."""
        return _CHANNEL_AXIS[self.layout]

    def layout_for(self, attrs: Mapping[str, Any]) -> str:
        """The layout for a node with ``attrs`` (``transpose_attr`` flips IN_OUT to OUT_IN)."""
        if self.transpose_attr is not None and attrs.get(self.transpose_attr, False):
            return {IN_OUT: OUT_IN, OUT_IN: IN_OUT}.get(self.layout, self.layout)
        return self.layout


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
    # Metadata for the layers above (see the module docstring): ask these, not the op name.
    weights: WeightSpec | None = None  # the weight operand of a weight-carrying op
    flops_per_element: int = 1  # cost-model FLOPs per output element (0: data movement)
    statistics: tuple[int, ...] = ()  # operand slots holding running statistics (never trained)
    # activation ops: attrs -> (fused ``activation``, ``activation_params``) or why it has none
    epilogue: Callable[[Mapping[str, Any]], tuple[str, tuple[float, ...]] | str] | None = None

    def call_reference(self, args: Sequence[Any], attrs: Mapping[str, Any]) -> Any:
        """The reference on ``args``: operands of uint16/32/64, for which torch has almost no
        kernels, go through numpy's unsigned semantics (graphopt/ops/unsigned.py)."""
        if unsigned.reads_wide_unsigned(args):
            return unsigned.call(self.name, self.reference, list(args), dict(attrs))
        return self.reference(*args, **attrs)

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
        return self.call_reference(args, attrs)


_REGISTRY: dict[str, OpDef] = {}


def register_op(
    name: str,
    *,
    inputs: Sequence[str],
    attrs: Mapping[str, AttrSpec | Any] | None = None,
    traits: frozenset[str] | set[str] = frozenset({PURE}),
    infer: Callable,
    doc: str | None = None,
    weights: WeightSpec | None = None,
    flops_per_element: int | None = None,
    statistics: Sequence[int] = (),
    epilogue: Callable | None = None,
):
    """Decorator declaring an op; the decorated function is its reference implementation.

    ``attrs`` maps names to ``AttrSpec`` or to a bare default value (kind taken from it).
    ``weights``, ``flops_per_element`` (default 0 for SHAPE_ONLY ops, else 1), ``statistics``
    and ``epilogue`` fill the ``OpDef`` fields of the same names.
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
            weights=weights,
            flops_per_element=(
                (0 if SHAPE_ONLY in traits else 1) if flops_per_element is None
                else flops_per_element
            ),
            statistics=tuple(statistics),
            epilogue=epilogue,
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


def ops_with(trait: str) -> tuple[str, ...]:
    """Names of the registered ops carrying ``trait``, in declaration order."""
    return tuple(name for name, d in all_ops().items() if trait in d.traits)


def weights_of(op: str) -> WeightSpec | None:
    """The ``WeightSpec`` of op ``op``, or None when it carries no weight."""
    return get_op(op).weights


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
