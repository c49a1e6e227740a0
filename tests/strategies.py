"""Hypothesis strategies for small random graphs, built through the op registry.

``graphs()`` draws a DAG: one or two inputs (static or symbolic dims), then a few ops from
``OP_TABLE``, a table of ``OpSpec(op, arity, pick, attrs)``: ``pick`` chooses operands that
fit (from the values built so far, or new constants), ``attrs`` draws the attributes, and the
output types come from the registry's own shape rule (``Graph.create_node`` runs
``OpDef.infer_types``). Constants take edge values (nan, +-inf, -0.0, subnormals, int extremes)
in every dtype the IR stores: f32, f16, bf16, f64, i8, u8, i16, i32, i64, bool.

Shrinking moves towards fewer ops, the first op of the table, the newest candidate operand and
small dims, so a failing example prints as a short, readable graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from graphopt.ir.dtypes import DType, torch_to_numpy
from graphopt.ir.graph import Graph, Value
from graphopt.ir.types import QuantInfo, TensorType, parse_dim

SYMBOLS = (parse_dim("s0"), parse_dim("s1"))  # the parser's own symbols (positive integers)
FLOATS = (DType.float32, DType.float16, DType.bfloat16, DType.float64)
INTS = (DType.int8, DType.uint8, DType.int16, DType.int32, DType.int64)
ALL_DTYPES = FLOATS + INTS + (DType.bool,)
GRAPH_NAMES = ("main", "g", "m.1", "my graph", "gr\u00e4ph \"q\"")


# ---------------------------------------------------------------------------- constants
def _float_elements(dtype: DType, edges: bool) -> st.SearchStrategy[float]:
    width = {DType.float16: 16, DType.float32: 32}.get(dtype, 64)
    finite = st.floats(width=width, allow_nan=False, allow_infinity=edges,
                       allow_subnormal=edges)
    if not edges:
        return st.floats(-4.0, 4.0, width=width)
    special = st.sampled_from([0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, math.nan])
    return st.one_of(special, finite)


def array_data(dtype: DType, shape: tuple[int, ...], edges: bool = True):
    """Numpy storage for a constant: canonical NaN only (the text form keeps no NaN payload)."""
    if dtype is DType.bool:
        return hnp.arrays(np.bool_, shape)
    if dtype.is_integer:
        info = np.iinfo(dtype.numpy)
        lo, hi = (int(info.min), int(info.max)) if edges else (-3, 3)
        return hnp.arrays(dtype.numpy, shape, elements=st.integers(max(lo, info.min), hi))
    if dtype is DType.bfloat16:
        floats = hnp.arrays(np.float32, shape, elements=_float_elements(DType.float32, edges))
        return floats.map(lambda a: torch_to_numpy(torch.from_numpy(a).to(torch.bfloat16))[0])
    return hnp.arrays(dtype.numpy, shape, elements=_float_elements(dtype, edges))


def quant_infos(shape: tuple[int, ...], dtype: DType) -> st.SearchStrategy[QuantInfo | None]:
    """A per-tensor or per-channel quantization valid for an int8/uint8 tensor of ``shape``."""
    if dtype not in (DType.int8, DType.uint8):
        return st.none()
    info = np.iinfo(dtype.numpy)
    scale = st.floats(1e-8, 1e4, allow_subnormal=False)
    zp = st.integers(int(info.min), int(info.max))
    per_tensor = st.builds(lambda s, z: QuantInfo((s,), (z,)), scale, zp)
    if not shape or not isinstance(shape[0], int) or shape[0] == 0:
        return st.none() | per_tensor
    n = shape[0]
    per_channel = st.builds(
        lambda s, z: QuantInfo(tuple(s), tuple(z), axis=0),
        st.lists(scale, min_size=n, max_size=n), st.lists(zp, min_size=n, max_size=n),
    )
    return st.none() | per_tensor | per_channel


# ------------------------------------------------------------------------------- builder
class Builder:
    """The graph being drawn: ``pool`` holds every value an op may use."""

    def __init__(self, draw, graph: Graph, edges: bool, symbolic: bool):
        self.draw, self.graph, self.edges, self.symbolic = draw, graph, edges, symbolic
        self.pool: list[Value] = []

    def pick(self, pred: Callable[[Value], bool] = lambda v: True) -> Value | None:
        """A pool value satisfying ``pred``; the newest one first, so chains of ops (which the
        canonicalize rules target) are common."""
        candidates = [v for v in reversed(self.pool) if pred(v)]
        return self.draw(st.sampled_from(candidates)) if candidates else None

    def constant(self, shape: tuple[int, ...], dtype: DType) -> Value:
        data = self.draw(array_data(dtype, shape, self.edges))
        return self.graph.add_constant(data, "c", dtype=dtype)

    def operand_like(self, x: Value) -> Value:
        """A second operand broadcasting to ``x``: a pool value of its type, or a constant."""
        same = [v for v in self.pool if v.type == x.type]
        static = tuple(d if isinstance(d, int) else 1 for d in x.shape)
        shapes = [(), static[-1:], static]
        choice = self.draw(st.integers(0, len(shapes) + (1 if same else 0) - 1))
        if choice == len(shapes):
            return self.draw(st.sampled_from(same))
        return self.constant(shapes[choice], x.dtype)


def is_float(v: Value) -> bool:
    return v.dtype is DType.float32  # one float dtype in arithmetic: tolerances stay simple


def has_rank(v: Value) -> bool:
    return is_float(v) and v.type.rank >= 1


# ------------------------------------------------------------------------------- op table
@dataclass(frozen=True)
class OpSpec:
    """How to draw one op: its operand count (``None``: variadic), operands and attributes."""

    op: str
    arity: int | None
    pick: Callable[[Builder], list[Value] | None]
    attrs: Callable[[Builder, list[Value]], dict] = lambda b, xs: {}


def one(pred: Callable[[Value], bool]) -> Callable[[Builder], list[Value] | None]:
    """Operand picker for a unary op: one pool value satisfying ``pred``."""

    def pick(b: Builder):
        x = b.pick(pred)
        return None if x is None else [x]

    return pick


unary = one(is_float)
ranked = one(has_rank)


def binary(b: Builder):
    x = b.pick(is_float)
    if x is None:
        return None
    y = b.operand_like(x)
    return [y, x] if b.draw(st.booleans()) else [x, y]


def where_operands(b: Builder):
    c = b.pick(lambda v: v.dtype is DType.bool)
    if c is None:
        return None
    x = b.pick(lambda v: is_float(v) and v.shape == c.shape)
    return None if x is None else [c, x, b.operand_like(x)]


def matmul_operands(b: Builder):
    x = b.pick(lambda v: has_rank(v) and isinstance(v.shape[-1], int))
    if x is None:
        return None
    n = b.draw(st.integers(1, 4))
    return [x, b.constant((x.shape[-1], n), DType.float32)]


def concat_operands(b: Builder):
    x = b.pick(has_rank)
    if x is None:
        return None
    same = [v for v in b.pool if v.type == x.type]
    return b.draw(st.lists(st.sampled_from(same), min_size=1, max_size=3))


def axis(b: Builder, xs, extra: int = 0) -> int:
    rank = xs[0].type.rank + extra
    return b.draw(st.integers(-rank, rank - 1))


def reduce_attrs(b: Builder, xs):
    rank = xs[0].type.rank
    axes = b.draw(st.lists(st.integers(0, rank - 1), unique=True, max_size=rank)) if rank else []
    return {"axes": tuple(axes), "keepdim": b.draw(st.booleans())}


def reshape_attrs(b: Builder, xs):
    x = xs[0]
    if not x.type.is_static:
        return {"shape": b.draw(st.sampled_from([(-1,), (x.type.numel,), (1, -1)]))}
    numel = x.type.numel
    factors = [d for d in range(1, numel + 1) if numel % d == 0] or [1]
    first = b.draw(st.sampled_from(factors))
    return {"shape": b.draw(st.sampled_from([(numel,), (first, -1), (first, numel // first, 1)]))}


def slice_attrs(b: Builder, xs):
    x = xs[0]
    axes = [i for i, d in enumerate(x.shape) if isinstance(d, int)] or [0]
    ax = b.draw(st.sampled_from(axes))
    return {
        "axis": ax,
        "start": b.draw(st.integers(-3, 3)),
        "end": b.draw(st.sampled_from([9223372036854775807, -1, 1, 2, 4])),
        "step": b.draw(st.integers(1, 2)),
    }


def clamp_attrs(b: Builder, xs):
    # torch.clamp needs at least one bound (the op's shape rule does not insist: see
    # tests/mutations.py, clamp_without_bounds)
    bound = st.sampled_from([0.0, -0.0, -1.0, 1.0, 6.0, math.inf])
    low, high = b.draw(st.none() | bound), b.draw(bound)
    return {"min": low, "max": high} if b.draw(st.booleans()) else {"min": high, "max": low}


def leaky_relu_attrs(b: Builder, xs):
    return {"negative_slope": b.draw(st.sampled_from([0.01, 0.0, -0.0, 1.0, 0.2]))}


def permute_attrs(b: Builder, xs):
    return {"perm": tuple(b.draw(st.permutations(range(xs[0].type.rank))))}


def squeeze_attrs(b: Builder, xs):
    return {"axes": (list(xs[0].shape).index(1),)}


def cast_attrs(b: Builder, xs):
    return {"dtype": b.draw(st.sampled_from(FLOATS))}  # float -> int casts of nan are UB


def expand_attrs(b: Builder, xs):
    return {"shape": (2,) + (-1,) * xs[0].type.rank}


OP_TABLE: tuple[OpSpec, ...] = (
    OpSpec("add", 2, binary),
    OpSpec("mul", 2, binary),
    OpSpec("sub", 2, binary),
    OpSpec("div", 2, binary),
    OpSpec("maximum", 2, binary),
    OpSpec("relu", 1, unary),
    OpSpec("neg", 1, unary),
    OpSpec("exp", 1, unary),
    OpSpec("tanh", 1, unary),
    OpSpec("sqrt", 1, unary),
    OpSpec("clamp", 1, unary, clamp_attrs),
    OpSpec("leaky_relu", 1, unary, leaky_relu_attrs),
    OpSpec("gt", 2, binary),
    OpSpec("eq", 2, binary),
    OpSpec("where", 3, where_operands),
    OpSpec("matmul", 2, matmul_operands),
    OpSpec("reshape", 1, ranked, reshape_attrs),
    OpSpec("permute", 1, ranked, permute_attrs),
    OpSpec("unsqueeze", 1, unary, lambda b, xs: {"axis": axis(b, xs, extra=1)}),
    OpSpec("squeeze", 1, one(lambda v: is_float(v) and 1 in v.shape), squeeze_attrs),
    OpSpec("slice", 1, one(lambda v: is_float(v) and any(isinstance(d, int) for d in v.shape)),
           slice_attrs),
    OpSpec("concat", None, concat_operands, lambda b, xs: {"axis": axis(b, xs)}),
    OpSpec("softmax", 1, ranked, lambda b, xs: {"axis": axis(b, xs)}),
    OpSpec("sum", 1, unary, reduce_attrs),
    OpSpec("mean", 1, ranked, reduce_attrs),
    OpSpec("cast", 1, unary, cast_attrs),
    OpSpec("expand", 1, unary, expand_attrs),
)


# ------------------------------------------------------------------------------- motifs
# Multi-op patterns that the fusion passes of the default pipeline look for, so that the
# soundness property covers them too (single random ops almost never line up into one).
def _const(b: Builder, value: float) -> Value:
    return b.graph.add_constant(np.array(value, np.float32), "k")


def _op(b: Builder, op: str, *xs, **attrs) -> Value:
    return b.graph.create_node(op, list(xs), attrs).output


def dense_motif(b: Builder) -> Value | None:
    """matmul(x, W) [+ bias] [+ residual] [-> activation]: fuse-matmul-add, fuse-activation."""
    x = b.pick(lambda v: has_rank(v) and isinstance(v.shape[-1], int))
    if x is None:
        return None
    n = b.draw(st.integers(1, 4))
    y = _op(b, "matmul", x, b.constant((x.shape[-1], n), DType.float32))
    if b.draw(st.booleans()):
        y = _op(b, "add", y, b.constant((n,), DType.float32))
    if b.draw(st.booleans()):
        y = _op(b, "add", y, b.operand_like(y) if b.draw(st.booleans()) else _op(b, "exp", y))
    act = b.draw(st.sampled_from([None, "relu", "tanh", "sigmoid", "leaky_relu", "clamp"]))
    if act == "leaky_relu":
        y = _op(b, act, y, negative_slope=0.2)
    elif act == "clamp":
        y = _op(b, act, y, min=0.0, max=6.0)
    elif act is not None:
        y = _op(b, act, y)
    return y


def gelu_motif(b: Builder) -> Value | None:
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) or the erf form: fuse-gelu."""
    x = b.pick(is_float)
    if x is None:
        return None
    if b.draw(st.booleans()):
        inner = _op(b, "add", x, _op(b, "mul", _op(b, "pow", x, _const(b, 3.0)),
                                     _const(b, 0.044715)))
        t = _op(b, "tanh", _op(b, "mul", inner, _const(b, math.sqrt(2 / math.pi))))
    else:
        t = _op(b, "erf", _op(b, "div", x, _const(b, math.sqrt(2.0))))
    return _op(b, "mul", _op(b, "mul", x, _const(b, 0.5)), _op(b, "add", t, _const(b, 1.0)))


def layernorm_motif(b: Builder) -> Value | None:
    """(x - mean(x)) / sqrt(mean((x - mean)^2) + eps) * gamma + beta: fuse-layernorm."""
    x = b.pick(lambda v: has_rank(v) and isinstance(v.shape[-1], int))
    if x is None:
        return None
    mean = _op(b, "mean", x, axes=(-1,), keepdim=True)
    d = _op(b, "sub", x, mean)
    var = _op(b, "mean", _op(b, "pow", d, _const(b, 2.0)), axes=(-1,), keepdim=True)
    y = _op(b, "div", d, _op(b, "sqrt", _op(b, "add", var, _const(b, 1e-5))))
    if b.draw(st.booleans()):
        n = x.shape[-1]
        y = _op(b, "add", _op(b, "mul", y, b.constant((n,), DType.float32)),
                b.constant((n,), DType.float32))
    return y


MOTIFS = (dense_motif, gelu_motif, layernorm_motif)


# ------------------------------------------------------------------------------- graphs
STEPS = ("op", "repeat", "op", "motif")


def dims(symbolic: bool) -> st.SearchStrategy:
    static = st.integers(1, 4)
    return (static | st.sampled_from(SYMBOLS)) if symbolic else static


@st.composite
def graphs(
    draw,
    *,
    symbolic: bool = True,
    edges: bool = True,
    extra_constants: bool = False,
    motifs: bool = True,
    max_ops: int = 6,
) -> Graph:
    """A verified graph of up to ``max_ops`` ops drawn from ``OP_TABLE``.

    Args:
        symbolic: inputs may have symbolic dims (``s0``, ``s1``).
        edges: constants take edge values (nan, inf, -0.0, subnormals, int extremes).
        extra_constants: also add unused constants of every dtype (with quantization types),
            for the text round trip.
        motifs: also draw the multi-op patterns of ``MOTIFS`` (what the fusions look for).
        max_ops: most steps drawn: an op, a motif, or a repeat of an op (work for cse).
    """
    g = Graph(draw(st.sampled_from(GRAPH_NAMES)))
    b = Builder(draw, g, edges, symbolic)
    for i in range(draw(st.integers(1, 2))):
        shape = tuple(draw(st.lists(dims(symbolic), min_size=0, max_size=3)))
        b.pool.append(g.add_input(f"x{i}", TensorType(shape, DType.float32)))
    for _ in range(draw(st.integers(0, 2))):  # operands for fold-constants
        shape = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
        b.pool.append(b.constant(shape, DType.float32))
    if extra_constants:
        for _ in range(draw(st.integers(0, 3))):
            dtype = draw(st.sampled_from(ALL_DTYPES))
            shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
            value = b.constant(shape, dtype)
            quant = draw(quant_infos(shape, dtype))
            if quant is not None:
                value.type = TensorType(shape, dtype, quant)
    for _ in range(draw(st.integers(1, max_ops))):
        step = draw(st.sampled_from(STEPS if motifs else STEPS[:2]))  # shrinks to "op"
        if step == "motif":
            value = draw(st.sampled_from(MOTIFS))(b)
            if value is not None:
                b.pool.append(value)
            continue
        if step == "repeat":  # the same op on the same operands again: work for cse
            nodes = list(g.nodes)
            if nodes:
                node = draw(st.sampled_from(nodes))
                b.pool.extend(g.create_node(node.op, node.inputs, node.attrs).outputs)
            continue
        spec = draw(st.sampled_from(OP_TABLE))
        operands = spec.pick(b)
        if operands is None:
            continue
        node = g.create_node(spec.op, operands, spec.attrs(b, operands))
        b.pool.extend(node.outputs)
    made = [v for v in b.pool if v.kind == "node"] or b.pool[:1]
    outputs = draw(st.lists(st.sampled_from(made), min_size=1, max_size=3, unique=True))
    g.set_outputs(outputs)
    g.verify()
    return g


INPUT_SPECIALS = torch.tensor([0.0, -0.0, 1.0, math.inf, -math.inf, math.nan])


def random_inputs(
    graph: Graph, sizes: tuple[int, int], seed: int, specials: bool = False
) -> list[torch.Tensor]:
    """Inputs for ``graph`` with ``s0, s1 = sizes``; a fixed torch seed, so examples replay.

    With ``specials``, about a quarter of the elements become 0, -0, 1, +-inf or nan.
    """
    bind = dict(zip(SYMBOLS, sizes))
    gen = torch.Generator().manual_seed(seed)
    out = []
    for v in graph.inputs:
        shape = [d if isinstance(d, int) else int(d.subs(bind)) for d in v.shape]
        x = torch.randn(shape, generator=gen, dtype=v.dtype.torch)
        if specials:
            pick = torch.randint(0, len(INPUT_SPECIALS), shape, generator=gen)
            mask = torch.rand(shape, generator=gen) < 0.25
            x = torch.where(mask, INPUT_SPECIALS[pick].to(x.dtype), x)
        out.append(x)
    return out
