"""FLOPs of a graph, counted op by op over the IR.

Convention: a multiply-add is 2 FLOPs (``linear`` on ``[M, K] x [N, K]`` is ``2*M*K*N``); an
elementwise op costs one FLOP per output element; normalizations a few per element; pure data
movement (reshape, permute, slice, concat, ...) costs nothing. Symbolic dims (a dynamic batch)
count as 1 unless ``bindings`` gives them a value: the default is FLOPs per sample.

``count_flops(graph, shape_of=...)`` takes the shape of each value from ``shape_of`` instead of
its type: the pruner uses it to count a planned pruning without rewriting the graph.

    >>> count_flops(graph).total          # 2 * 1 * 16 * 8 for linear(x: [1, 16], w: [8, 16])
    256
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from graphopt.ir.graph import Graph, Node, Value
from graphopt.ops.registry import get_op

ShapeFn = Callable[[Value], Sequence[int]]
_Rule = Callable[[Node, ShapeFn], int]
_RULES: dict[str, _Rule] = {}



@dataclass
class FlopCount:
    """FLOPs of a graph: ``total``, ``by_op`` (op -> FLOPs), ``by_node`` (node name -> FLOPs)."""

    total: int = 0
    by_op: Counter = field(default_factory=Counter)
    by_node: dict[str, int] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # nodes with symbolic shapes (counted 0)

    def __str__(self) -> str:
        lines = [f"{self.total / 1e9:.4f} GFLOP"]
        for op, n in self.by_op.most_common(8):
            lines.append(f"  {op:<20} {n / 1e9:10.4f} GFLOP ({100 * n / max(self.total, 1):.1f}%)")
        return "\n".join(lines)


def flop_rule(*ops: str):
    """Register ``fn(node, shape_of) -> int`` as the FLOPs of ``ops``."""

    def decorate(fn: _Rule) -> _Rule:
        for name in ops:
            _RULES[name] = fn
        return fn

    return decorate


def count_flops(graph: Graph, shape_of: ShapeFn | None = None,
                bindings: dict | None = None) -> FlopCount:
    """Count the FLOPs of every node of ``graph`` (see the module docstring for conventions).

    Args:
        shape_of: the shape of each value (default: its type's shape).
        bindings: values of size symbols (``{"s0": 8}``); unbound symbols count as 1.
    """
    base = shape_of or (lambda v: v.type.shape)
    names = {str(k): int(v) for k, v in (bindings or {}).items()}

    def concrete(dim):
        if isinstance(dim, int):
            return dim
        value = dim.subs({s: names.get(str(s), 1) for s in dim.free_symbols})
        return int(value) if value.is_number else dim

    def shape_of(v: Value):
        return tuple(concrete(d) for d in base(v))

    result = FlopCount()
    for node in graph.nodes:
        shapes = [shape_of(v) for v in node.inputs if v is not None]
        shapes += [shape_of(v) for v in node.outputs]
        if not all(isinstance(d, int) for s in shapes for d in s):
            result.unknown.append(node.name)
            continue
        n = node_flops(node, shape_of)
        if n:
            result.total += n
            result.by_op[node.op] += n
            result.by_node[node.name] = n
    return result


def node_flops(node: Node, shape_of: ShapeFn | None = None) -> int:
    """FLOPs of one node (static shapes)."""
    shape_of = shape_of or (lambda v: v.type.shape)
    rule = _RULES.get(node.op)
    if rule is not None:
        return int(rule(node, shape_of))
    # Elementwise ops, reductions and anything else: the op's declared FLOPs per element
    # (OpDef.flops_per_element, 0 for data movement) times the larger side.
    per_element = get_op(node.op).flops_per_element
    if per_element == 0:
        return 0
    inputs = [_numel(shape_of(v)) for v in node.inputs if v is not None]
    outputs = [_numel(shape_of(v)) for v in node.outputs]
    return per_element * max(inputs + outputs + [0])


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _epilogue(node: Node, shape_of: ShapeFn) -> int:
    """Bias, residual and activation cost of a (fused) conv / linear / matmul."""
    out = _numel(shape_of(node.outputs[0]))
    extra = 0
    spec = get_op(node.op).weights
    for slot in (spec.bias, spec.residual):
        if slot is not None and len(node.inputs) > slot and node.inputs[slot] is not None:
            extra += out
    if node.attrs.get("activation", "none") != "none":
        extra += out
    return extra


@flop_rule("linear", "fused_linear")
def _linear(node: Node, shape_of: ShapeFn) -> int:
    x, w = shape_of(node.inputs[0]), shape_of(node.inputs[1])
    return 2 * _numel(x[:-1]) * w[0] * w[1] + _epilogue(node, shape_of)


@flop_rule("matmul", "fused_matmul")
def _matmul(node: Node, shape_of: ShapeFn) -> int:
    a = list(shape_of(node.inputs[0]))
    if node.attrs.get("trans_a") and len(a) >= 2:
        a[-2], a[-1] = a[-1], a[-2]
    out = shape_of(node.outputs[0])
    k = a[-1]
    return 2 * _numel(out) * k + _epilogue(node, shape_of)  # 0 for a plain matmul


@flop_rule("conv", "fused_conv")
def _conv(node: Node, shape_of: ShapeFn) -> int:
    w, out = shape_of(node.inputs[1]), shape_of(node.outputs[0])
    per_output = _numel(w[1:])  # (C_in / groups) * kernel
    return 2 * _numel(out) * per_output + _epilogue(node, shape_of)


@flop_rule("conv_transpose")
def _conv_transpose(node: Node, shape_of: ShapeFn) -> int:
    x, w = shape_of(node.inputs[0]), shape_of(node.inputs[1])
    return 2 * _numel(x) * _numel(w[1:])


@flop_rule("attention")
def _attention(node: Node, shape_of: ShapeFn) -> int:
    q, k, v = (shape_of(node.inputs[i]) for i in range(3))
    out = shape_of(node.outputs[0])
    scores = _numel(out[:-1]) * k[-2]  # (..., L, S)
    return 2 * scores * q[-1] + 2 * scores * v[-1] + 5 * scores


@flop_rule("max_pool", "avg_pool")
def _pool(node: Node, shape_of: ShapeFn) -> int:
    return _numel(shape_of(node.outputs[0])) * math.prod(node.attrs["kernel"])


@flop_rule("adaptive_avg_pool", "adaptive_max_pool")
def _adaptive_pool(node: Node, shape_of: ShapeFn) -> int:
    return _numel(shape_of(node.inputs[0]))
