"""Import-time evaluation: constant folding, and shape arithmetic on symbolic dims.

ONNX models compute reshape targets at run time: ``Shape(x) -> Gather -> Unsqueeze -> Concat ->
Reshape``. When ``x`` has a symbolic dim (``batch``), these small int64 tensors hold sympy
expressions. This module evaluates the IR ops such chains consist of on numpy object arrays, so
that the converters can turn the result into static IR attributes (``reshape{shape=[batch, -1]}``).
The rules mirror the ops' torch reference implementations for integer operands.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import sympy
import torch

from graphopt.interpreter import node_attrs
from graphopt.ir.attrs import has_symbols
from graphopt.ir.dtypes import DType, numpy_to_torch, torch_to_numpy
from graphopt.ir.graph import Node
from graphopt.ir.types import normalize_dim
from graphopt.limits import check_bytes, numel_of

# Small tensors are evaluated during import so that shape arithmetic can become attributes.
KNOWN_LIMIT = 1 << 16
# Folding never creates a constant much bigger than the constants it consumed.
FOLD_SLACK_BYTES = 1 << 20
# Size expressions bigger than this are not tracked (real shape arithmetic is a few ops:
# batch*seq, (h - 3)//2 + 1); see _too_big.
MAX_EXPR_OPS = 24

Rule = Callable[..., np.ndarray]
_RULES: dict[str, Rule] = {}


def _rule(*ops: str):
    def decorate(fn: Rule) -> Rule:
        for op in ops:
            _RULES[op] = fn
        return fn

    return decorate


class _Undecidable(Exception):
    pass


def evaluate_new_nodes(ctx, nodes: list[Node]) -> None:
    """Compute import-time values of the nodes a converter just created (``ctx.known``);
    with ``ctx.fold_constants``, replace nodes whose values are all concrete by constants.

    Concrete operands run through the op's reference implementation; operands holding
    symbolic dims through :func:`evaluate_symbolic`. Large results are neither kept nor folded
    unless folding (which never creates a constant much bigger than those it consumed).
    """
    for node in nodes:
        if node._erased:
            continue
        # op-name check: ``shape`` is the one op whose value is known from its operand's type
        # alone (no operand value); a trait would mark this one op only.
        if node.op == "shape":
            dims = node.inputs[0].shape[node.attrs["start"]:node.attrs["end"]]
            _record(ctx, node, [np.array(dims, dtype=object)])
            continue
        if not node.has_trait("pure") or any(has_symbols(v) for v in node.attrs.values()):
            continue
        ins = [ctx.known_value(v) if v is not None else None for v in node.inputs]
        if any(v is None and i is not None for v, i in zip(ins, node.inputs)):
            continue
        if any(a is not None and a.dtype == object for a in ins):
            results = evaluate_symbolic(node, ins)
            if results is not None:
                _record(ctx, node, results)
            continue
        if not all(t.is_static for t in (o.type for o in node.outputs)):
            continue
        # Python ints: np.prod would wrap around on a crafted (2**32, 2**32) shape.
        out_elems = sum(numel_of(o.shape) for o in node.outputs)
        in_bytes = sum(v.data.nbytes for v in node.inputs if v is not None and v.kind == "const")
        out_bytes = sum(numel_of(o.shape) * o.dtype.itemsize for o in node.outputs)
        fold = ctx.fold_constants and out_bytes <= in_bytes + FOLD_SLACK_BYTES
        if not fold and out_elems > KNOWN_LIMIT:
            continue
        check_bytes(out_bytes, f"import-time value of {node.op} node '{node.outputs[0].name}'")
        args = [None if v is None else numpy_to_torch(v.data, v.dtype) if v.kind == "const"
                else torch.from_numpy(np.require(ctx.known[v], requirements="C"))
                for v in node.inputs]
        try:
            with torch.no_grad():
                result = node.opdef.call_reference(args, node_attrs(node, {}))
        except Exception:  # noqa: BLE001  (leave it to run time; the interpreter will report)
            continue
        results = result if isinstance(result, (tuple, list)) else (result,)
        arrays = [torch_to_numpy(r)[0] for r in results]
        if fold:
            _fold(ctx, node, arrays)
        else:
            _record(ctx, node, arrays)


def _record(ctx, node: Node, arrays: list[np.ndarray]) -> None:
    """Remember the outputs' import-time values; fold the node when they are all concrete."""
    arrays = [_concrete_if_possible(a) for a in arrays]
    concrete = all(a.dtype != object for a in arrays)
    if concrete and ctx.fold_constants and sum(a.size for a in arrays) <= KNOWN_LIMIT:
        _fold(ctx, node, arrays)
        return
    for out, array in zip(node.outputs, arrays):
        ctx.known[out] = array


def _concrete_if_possible(array: np.ndarray) -> np.ndarray:
    if array.dtype == object and all(isinstance(d, (int, np.integer))
                                     or getattr(d, "is_Integer", False)
                                     for d in array.reshape(-1)):
        return array.astype(np.int64)
    return array


def _fold(ctx, node: Node, arrays: list[np.ndarray]) -> None:
    """Replace ``node`` by constants holding ``arrays``.

    Only the ONNX node being converted can name the folded values (its converter just created
    them), so only its output names are re-pointed: scanning every name would make importing a
    long chain of foldable nodes quadratic.
    """
    graph = ctx.graph
    names = ctx.node.outputs if ctx.node is not None else list(ctx.env)
    for out, array in zip(node.outputs, arrays):
        data = array if out.dtype is DType.bfloat16 else array.astype(out.dtype.numpy, copy=False)
        const = graph.add_constant(data, out.name, out.dtype)
        out.replace_all_uses_with(const)
        for name in names:
            if ctx.env.get(name) is out:
                ctx.env[name] = const
    graph.erase_node(node)


def evaluate_symbolic(node: Node, inputs: list[np.ndarray | None]) -> list[np.ndarray] | None:
    """Outputs of ``node`` on (partly symbolic) operand values, or None when unknown."""
    rule = _RULES.get(node.op)
    if rule is None:
        return None
    try:
        out = rule(dict(node.attrs), *inputs)
        outs = out if isinstance(out, list) else [out]
        result = []
        for o, value in zip(outs, node.outputs):
            arr = np.asarray(o, dtype=object).reshape(tuple(int(d) for d in value.shape)
                                                      if value.type.is_static else np.shape(o))
            if arr.size > KNOWN_LIMIT or any(_too_big(d) for d in arr.reshape(-1)):
                return None
            result.append(np.vectorize(_norm, otypes=[object])(arr) if arr.size else arr)
    except (_Undecidable, TypeError, ValueError, IndexError, KeyError, ArithmeticError,
            AttributeError):
        return None  # not decidable at import time: the value stays unknown
    return result


def _too_big(d) -> bool:
    """A size expression past MAX_EXPR_OPS operations: simplifying it could take minutes
    (a crafted chain of Shape arithmetic grows it exponentially), so it stays unknown."""
    return isinstance(d, sympy.Basic) and sympy.count_ops(d) > MAX_EXPR_OPS


def _norm(d):
    if isinstance(d, (bool, np.bool_)):
        return bool(d)
    if isinstance(d, (int, np.integer)):
        return int(d)
    if isinstance(d, sympy.Expr):
        return normalize_dim(d)
    return d


def _obj(a: np.ndarray) -> np.ndarray:
    return a.astype(object) if a.dtype != object else a


@_rule("cast")
def _cast(attrs, x):
    dtype = attrs["dtype"]
    if dtype.is_integer:
        return _obj(x)
    if dtype.is_floating:
        return _obj(x)
    raise _Undecidable


@_rule("add")
def _add(attrs, a, b):
    return _obj(a) + _obj(b)


@_rule("sub")
def _sub(attrs, a, b):
    return _obj(a) - _obj(b)


@_rule("mul")
def _mul(attrs, a, b):
    return _obj(a) * _obj(b)


@_rule("div")
def _div(attrs, a, b):
    if attrs.get("rounding_mode") is None:
        return np.vectorize(lambda x, y: sympy.Rational(x, y) if isinstance(x, int)
                            and isinstance(y, int) else x / y, otypes=[object])(_obj(a), _obj(b))
    # Sizes are non-negative, where truncation and floor agree.
    return _obj(a) // _obj(b)


@_rule("remainder")
def _remainder(attrs, a, b):
    return _obj(a) % _obj(b)


@_rule("neg")
def _neg(attrs, a):
    return -_obj(a)


@_rule("abs")
def _abs(attrs, a):
    return np.vectorize(abs, otypes=[object])(_obj(a))


def _elementwise2(fn):
    def rule(attrs, a, b):
        return np.vectorize(fn, otypes=[object])(_obj(a), _obj(b))

    return rule


_RULES["maximum"] = _elementwise2(lambda x, y: sympy.Max(x, y) if not (
    isinstance(x, int) and isinstance(y, int)) else max(x, y))
_RULES["minimum"] = _elementwise2(lambda x, y: sympy.Min(x, y) if not (
    isinstance(x, int) and isinstance(y, int)) else min(x, y))


def _as_expr(x) -> sympy.Expr:
    """A dim (int or sympy expression) as a sympy expression; never parses text."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer, sympy.Expr)):
        raise _Undecidable
    return sympy.Integer(int(x)) if isinstance(x, (int, np.integer)) else x


def _compare(fn):
    def decide(x, y):
        diff = sympy.simplify(_as_expr(x) - _as_expr(y))
        result = fn(diff)
        if result not in (True, False):
            raise _Undecidable
        return bool(result)

    return _elementwise2(decide)


_RULES["eq"] = _compare(lambda d: True if d == 0 else (False if d.is_nonzero else None))
_RULES["ne"] = _compare(lambda d: False if d == 0 else (True if d.is_nonzero else None))
_RULES["lt"] = _compare(lambda d: d.is_negative)
_RULES["le"] = _compare(lambda d: d.is_nonpositive)
_RULES["gt"] = _compare(lambda d: d.is_positive)
_RULES["ge"] = _compare(lambda d: d.is_nonnegative)


@_rule("where")
def _where(attrs, cond, a, b):
    if cond.dtype == object:
        cond = cond.astype(bool)
    return np.where(cond, _obj(a), _obj(b))


@_rule("concat")
def _concat(attrs, *xs):
    return np.concatenate([_obj(x) for x in xs], axis=attrs["axis"])


@_rule("slice")
def _slice(attrs, x):
    key = [slice(None)] * x.ndim
    key[attrs["axis"]] = slice(attrs["start"], attrs["end"], attrs["step"])
    return x[tuple(key)]


@_rule("select")
def _select(attrs, x):
    return np.take(x, attrs["index"], axis=attrs["axis"])


@_rule("index")
def _index(attrs, x, *indices):
    if len(indices) != 1 or indices[0].dtype == object:
        raise _Undecidable
    return np.take(x, indices[0].astype(np.int64), axis=attrs["axes"][0])


@_rule("index_select")
def _index_select(attrs, x, index):
    if index.dtype == object:
        raise _Undecidable
    return np.take(x, index.astype(np.int64), axis=attrs["axis"])


@_rule("unsqueeze")
def _unsqueeze(attrs, x):
    return np.expand_dims(x, attrs["axis"] % (x.ndim + 1))


@_rule("squeeze")
def _squeeze(attrs, x):
    axes = tuple(a % max(x.ndim, 1) for a in attrs["axes"] if x.shape[a] == 1)
    return np.squeeze(x, axes) if axes else x


@_rule("reshape")
def _reshape(attrs, x):
    return x.reshape([int(d) for d in attrs["shape"]])


@_rule("expand")
def _expand(attrs, x):
    shape = [x.shape[i - (len(attrs["shape"]) - x.ndim)] if d == -1 else int(d)
             for i, d in enumerate(attrs["shape"])]
    return np.broadcast_to(x, shape).copy()


@_rule("tile")
def _tile(attrs, x):
    return np.tile(x, attrs["repeats"])


def _reduce(fn):
    def rule(attrs, x):
        axes = tuple(attrs["axes"]) or None
        return fn(_obj(x), axis=axes, keepdims=attrs["keepdim"])

    return rule


_RULES["prod"] = _reduce(np.prod)
_RULES["sum"] = _reduce(np.sum)
