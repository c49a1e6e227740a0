"""bf16 compute: linear layers that multiply in bf16 with f32 sums (``linear_bf16``).

::

    %y = fused_linear(%x, %w, %b){gelu}   ->   %y = linear_bf16(%x, %w_bf16, %b){gelu}

The weight is stored in bf16 (half the bytes, rounded to nearest even), the input is rounded to
bf16 inside the op, the products (exact in f32) are summed in f32 and the epilogue stays f32.
The native runtime runs it on AMX tiles where the CPU has them (csrc/rt_bf16.h);
``graphopt.compile(graph, backend="native", precision="bf16")`` does the same to every weight
GEMM without a budget. Through ``graphopt.quantize(graph, "bf16-compute", calibration=...,
error_budget=...)`` the accuracy control of int8 applies: each layer's sensitivity is measured
(``local``: its own output error on its real inputs; or ``end-to-end``) and the most sensitive
layers stay f32 until the budget holds. Each layer is one rewrite (``quantize-bf16-compute``),
bisectable like the int8 ones.
"""

from __future__ import annotations

import numpy as np
import torch

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph, Node
from graphopt.quant import dynamic as d
from graphopt.quant.half import to_half_bits
from graphopt.rewrite.rewriter import Rewriter

QUANTIZE_BF16_COMPUTE = "quantize-bf16-compute"


def _rewrite(rw: Rewriter, node: Node) -> Node:
    """Replace candidate ``node`` by ``linear_bf16`` inside the rewrite ``rw`` has open."""
    weight = node.inputs[1]
    bits = to_half_bits(np.ascontiguousarray(d._weight_of(node)), DType.bfloat16)
    w16 = rw.constant(bits, f"{weight.name}_bf16", dtype=DType.bfloat16)
    bias, residual, attrs = d.linear_operands(node, node.inputs)
    attrs = attrs or {"activation": "none", "activation_params": ()}
    new = rw.create_node("linear_bf16", [node.inputs[0], w16, bias, residual], attrs,
                         name=node.outputs[0].name + "_bf16")
    rw.replace_value(node.outputs[0], new.outputs[0])
    rw.erase_node(node)
    d._drop_if_unused(rw, weight)
    return new


def bf16_compute_nodes(graph: Graph, names: set[str], rw: Rewriter | None = None) -> int:
    """The candidates named in ``names`` (node names) as ``linear_bf16``, in place; returns
    the count. Stops, leaving the rest f32, when the rewrite budget is spent."""
    rw = rw if rw is not None else Rewriter(graph)
    count = 0
    for node in list(graph.nodes):
        if node.name in names and d._weight_of(node) is not None:
            if not rw.edit(QUANTIZE_BF16_COMPUTE, node):
                break
            _rewrite(rw, node)
            count += 1
    return count


def bf16_forward(node: Node, inputs: list) -> torch.Tensor:
    """A candidate's output computed as ``linear_bf16`` (local sensitivity)."""
    from graphopt.ops.quant import linear_bf16

    w = torch.from_numpy(np.ascontiguousarray(d._weight_of(node))).to(torch.bfloat16)
    bias, residual, attrs = d.linear_operands(node, inputs)
    return linear_bf16(inputs[0], w, bias, residual, **attrs)


def bf16_compute_plan(graph: Graph, exclude):
    """The mode's ``Plan`` for ``graphopt.quantize`` (layers: the dynamic mode's linears)."""
    from graphopt.quant.api import Plan, layer_records

    candidates = d.dynamic_candidates(graph)
    chosen = d.dynamic_candidates(graph, exclude)
    records = layer_records(graph, chosen, candidates, d.weight_shape)

    def build(names: set[str]) -> Graph:
        g = graph.clone()
        bf16_compute_nodes(g, names)
        return g

    return Plan("bf16-compute", "bf16", graph, records, build, bf16_forward,
                apply=bf16_compute_nodes)
