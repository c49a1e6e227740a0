"""Weight-only block-wise int4 / int8 quantization of linear layers (``linear_weight_only``).

Every layer is one rewrite (``quantize-weight-only``) through the rewriter's edit API, counted
in the pass report and bisectable one layer at a time."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from graphopt.ir.graph import Graph, Node
from graphopt.quant.dynamic import _weight_of, linear_operands
from graphopt.rewrite.rewriter import Rewriter

QUANTIZE_WEIGHT_ONLY = "quantize-weight-only"


def quantize_blocks(w: np.ndarray, bits: int = 4, block_size: int = 32):
    """``[N, K]`` float -> (codes packed u8 ``[N, n_blocks, block_size * bits / 8]``,
    scales f32 ``[N, n_blocks]``); symmetric per block, zero point ``2**(bits-1)``."""
    n, k = w.shape
    blocks = -(-k // block_size)
    padded = np.zeros((n, blocks * block_size), np.float32)
    padded[:, :k] = w
    grouped = padded.reshape(n, blocks, block_size)
    qmax = 2 ** (bits - 1) - 1
    amax = np.abs(grouped).max(axis=2)
    scales = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    codes = np.clip(np.rint(grouped / scales[..., None]), -qmax, qmax) + 2 ** (bits - 1)
    codes = codes.astype(np.uint8)
    if bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return np.ascontiguousarray(codes), scales


def gptq_codes(hessians: dict) -> Callable[[Node, int, int], tuple[np.ndarray, np.ndarray]]:
    """``codes_of`` for ``quantize_weight_only``: GPTQ's codes (graphopt/quant/gptq.py) for the
    nodes ``hessians`` has, round-to-nearest for the others; each node's computed once."""
    from graphopt.quant.gptq import gptq_blocks

    done: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def codes_of(node: Node, bits: int, block_size: int):
        hessian = hessians.get(node.name)
        if hessian is None:
            return quantize_blocks(_weight_of(node), bits, block_size)
        key = (node.name, bits, block_size)
        if key not in done:
            done[key] = gptq_blocks(_weight_of(node), hessian, bits, block_size)
        return done[key]

    return codes_of


def _nearest_codes(node: Node, bits: int, block_size: int):
    return quantize_blocks(_weight_of(node), bits, block_size)


def quantize_weight_only(graph: Graph, nodes: list[Node], bits: int = 4,
                         block_size: int = 32, rw: Rewriter | None = None,
                         act_bits: int = 0, codes_of=_nearest_codes) -> int:
    """Rewrite ``nodes`` (linear / fused_linear / matmul by a constant) in place; returns how
    many. Each node is one rewrite (``quantize-weight-only``) through ``rw`` (default: a new
    one on ``graph``); when the rewrite budget is spent the remaining nodes stay float.
    ``codes_of(node, bits, block_size)`` chooses the codes (default round-to-nearest;
    ``gptq_codes`` for error-compensating rounding)."""
    rw = rw if rw is not None else Rewriter(graph)
    count = 0
    for node in nodes:
        if not rw.edit(QUANTIZE_WEIGHT_ONLY, node):
            break
        weight = node.inputs[1]
        codes, scales = codes_of(node, bits, block_size)
        wq = rw.constant(codes, f"{weight.name}_q{bits}")
        ws = rw.constant(scales, f"{weight.name}_scales")
        bias, residual, epilogue = linear_operands(node, node.inputs)
        attrs = {"bits": bits, "block_size": block_size, "k": int(_weight_of(node).shape[1]),
                 "act_bits": act_bits, **epilogue}
        new = rw.create_node("linear_weight_only", [node.inputs[0], wq, ws, bias, residual],
                             attrs, name=node.outputs[0].name + f"_q{bits}")
        rw.replace_value(node.outputs[0], new.outputs[0])
        rw.erase_node(node)
        if not weight.uses and not weight.is_graph_output:
            rw.remove_constant(weight)
        count += 1
    return count


def weight_only_forward(bits: int, block_size: int, act_bits: int = 0,
                        codes_of=_nearest_codes):
    """``quantized_forward`` for local sensitivity: the layer with block-quantized weights."""
    import torch

    from graphopt.ops.quant import linear_weight_only

    def forward(node: Node, inputs: list):
        w = _weight_of(node)
        codes, scales = codes_of(node, bits, block_size)
        bias, residual, attrs = linear_operands(node, inputs)
        return linear_weight_only(inputs[0], torch.from_numpy(codes), torch.from_numpy(scales),
                                  bias, residual, bits, block_size, int(w.shape[1]), act_bits,
                                  **attrs)

    return forward


def weight_only_plan(graph: Graph, exclude, bits: int, block_size: int, act_bits: int = 0,
                     embeddings: bool = True, hessians: dict | None = None):
    """The weight-only mode's plan for ``graphopt.quantize`` (fallback included); with
    ``hessians`` (node name -> ``InputHessian``) those layers round with GPTQ."""
    from graphopt.errors import QuantizationError
    from graphopt.quant.api import Plan, layer_records
    from graphopt.quant.dynamic import (dynamic_candidates, embedding_candidates,
                                        quantize_embedding, weight_shape)

    if bits not in (4, 8) or block_size < 16 or block_size & (block_size - 1):
        raise QuantizationError("weight-only: bits 4 or 8, block_size a power of 2 >= 16")

    codes_of = gptq_codes(hessians) if hessians else _nearest_codes

    def apply(g: Graph, names: set[str]) -> int:
        return quantize_weight_only(g, [n for n in dynamic_candidates(g) if n.name in names],
                                    bits, block_size, act_bits=act_bits, codes_of=codes_of)

    def build(names: set[str]) -> Graph:
        g = graph.clone()
        apply(g, names)
        if embeddings:  # the tables are weights too (GPT-2's is a quarter of the model)
            for node in embedding_candidates(g, exclude):
                quantize_embedding(g, node)
        return g

    records = layer_records(graph, dynamic_candidates(graph, exclude), dynamic_candidates(graph),
                            weight_shape)
    name = (f"weight-only int{bits}/{block_size}" + (" int8-activations" if act_bits else "")
            + (f" gptq ({len(hessians)} layers)" if hessians else ""))
    tables = [n.inputs[0].name for n in embedding_candidates(graph, exclude)] \
        if embeddings else []
    return Plan(name, f"int{bits}", graph, records, build,
                weight_only_forward(bits, block_size, act_bits, codes_of), tables, apply=apply)
