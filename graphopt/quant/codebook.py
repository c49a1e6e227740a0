"""Codebook weight sharing (Deep Compression, Han et al. 2016) as a quantization mode.

Each chosen weight constant gets its own k-means codebook (``graphopt.codec.share_weights``:
linear initialization over the weight range, Lloyd iterations) and is replaced by a
``codebook_decode`` of two new constants::

    const %fc1.weight: f32[300, 64]            const %fc1.weight.indices: u8[300, 64]
                                               const %fc1.weight.centroids: f32[32]
                                        ->     %fc1.weight.shared: f32[300, 64] =
                                                   codebook_decode(%fc1.weight.indices,
                                                                   %fc1.weight.centroids)
    %y = linear(%x, %fc1.weight, %b)           %y = linear(%x, %fc1.weight.shared, %b)

Index 0 is the exact zero: weights a pruning set to zero are not clustered and stay zero, also
through centroid fine-tuning (``graphopt.finetune`` trains ``centroids``; the lookup's backward
sums the gradients of the weights sharing a centroid, which is the paper's update). Indices are
uint8 up to 7 bits (255 centroids + the zero) and uint16 above.

Which weights: the ``weights`` operand of weight-carrying ops (linear, matmul, conv,
conv_transpose and their fused forms; a matmul's constant left operand too), floating, rank >= 2,
with more elements than twice the codebook (a smaller weight gets fewer bits). Convolutions
(``OUT_IN_SPATIAL`` / ``IN_OUT_SPATIAL`` layouts) take ``conv_bits``, the rest ``bits``: the
paper's 8 and 5. Biases keep float unless ``bias_bits`` is given (the paper leaves them; in a
small pruned model they can be a fifth of the file). Not numerically exact: each weight moves
to its nearest centroid.
"""

from __future__ import annotations

import fnmatch
from typing import Sequence

import numpy as np

from graphopt.codec.codebook import share_weights
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph, Value
from graphopt.ops.registry import IN_OUT_SPATIAL, OUT_IN_SPATIAL, get_op
from graphopt.rewrite.rewriter import Rewriter

SHARE_WEIGHT = "share-weight"
_CONV_LAYOUTS = (OUT_IN_SPATIAL, IN_OUT_SPATIAL)


FC, CONV, BIAS = "fc", "conv", "bias"


def codebook_candidates(graph: Graph, exclude: Sequence[str] = ()) -> dict[Value, str]:
    """Constants that can share a codebook -> their kind: ``"conv"`` (a convolution weight),
    ``"fc"`` (any other weight) or ``"bias"`` (the bias operand of a weight-carrying op).

    ``exclude`` globs match the constant's name or the name of a node that reads it."""
    out: dict[Value, str | None] = {}
    for node in graph.nodes:
        spec = get_op(node.op).weights
        if spec is None:
            continue
        weight_kind = CONV if spec.layout_for(node.attrs) in _CONV_LAYOUTS else FC
        slots = [(spec.slot, weight_kind)] + ([(spec.lhs_slot, FC)] if spec.lhs_slot is not None
                                              else [])
        if spec.bias is not None:
            slots.append((spec.bias, BIAS))
        for slot, kind in slots:
            value = node.inputs[slot] if slot < len(node.inputs) else None
            if (value is None or not value.is_constant or value.dtype is not DType.float32
                    or value.data.ndim < (1 if kind == BIAS else 2)):
                continue
            if any(fnmatch.fnmatch(n, pat) for pat in exclude for n in (node.name, value.name)):
                out[value] = None  # excluded by one reader: excluded for all
                continue
            out.setdefault(value, kind)
    return {v: kind for v, kind in out.items() if kind is not None}


def bits_for(value: Value, kind: str, bits: int, conv_bits: int,
             bias_bits: int | None = None) -> int | None:
    """The codebook bits of ``value``: its kind's bits, fewer for a constant smaller than twice
    that codebook (a codebook must not outweigh its weight: 500 weights of a first conv take 7
    bits, not 8), None when it keeps float (a bias without ``bias_bits``, or a constant of at
    most 4 elements)."""
    chosen = {FC: bits, CONV: conv_bits, BIAS: bias_bits}[kind]
    if chosen is None:
        return None
    while chosen > 1 and value.data.size <= 2 * (1 << chosen):
        chosen -= 1
    return chosen if value.data.size > 2 * (1 << chosen) else None


def shared_weight(data: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, centroids)`` of ``data`` for ``codebook_decode`` (index 0: exact zero)."""
    kept = data != 0
    book = share_weights(data, bits, mask=kept)
    index_dtype = np.uint8 if bits <= 7 else np.uint16
    indices = np.where(kept, book.indices.astype(np.int64) + 1, 0).astype(index_dtype)
    return indices, book.centroids.astype(np.float32)


def share_constants(graph: Graph, names: set[str] | None, bits: int, conv_bits: int,
                    bias_bits: int | None = None, rw: Rewriter | None = None) -> list[str]:
    """In place: each named candidate weight (None: every candidate) replaced by a
    ``codebook_decode`` of its indices and codebook (inserted before its first reader);
    returns the names shared. Each weight is one rewrite (``share-weight``) through ``rw``
    (default: a new one on ``graph``), so ``graphopt.bisect`` can stop after any of them."""
    rw = rw if rw is not None else Rewriter(graph)
    candidates = {v.name: (v, kind) for v, kind in codebook_candidates(graph).items()}
    done = []
    for name in sorted(candidates if names is None else names):
        if name not in candidates:
            continue
        value, kind = candidates[name]
        chosen = bits_for(value, kind, bits, conv_bits, bias_bits)
        if chosen is None:
            continue
        if not rw.edit(SHARE_WEIGHT, f"const %{name}"):
            break
        replace_with_codebook(graph, value, chosen)
        done.append(name)
    return done


def replace_with_codebook(graph: Graph, value: Value, bits: int) -> Value:
    """Replace constant ``value`` by ``codebook_decode(indices, centroids)``; returns the
    decoded value (the constant is removed unless it is a graph output)."""
    indices, centroids = shared_weight(value.data, bits)
    index_const = graph.add_constant(indices, f"{value.name}.indices")
    centroid_const = graph.add_constant(centroids, f"{value.name}.centroids")
    uses = list(value.uses)
    readers = {id(node) for node, _ in uses}
    first = next(node for node in graph.nodes if id(node) in readers)
    with graph.inserting_before(first):
        decode = graph.create_node("codebook_decode", [index_const, centroid_const], {},
                                   name=f"{value.name}.shared")
    for node, slot in uses:
        node.set_input(slot, decode.outputs[0])
    if not value.is_graph_output:
        graph.remove_constant(value)
    return decode.outputs[0]


def codebook_plan(graph: Graph, exclude: Sequence[str], bits: int, conv_bits: int,
                  bias_bits: int | None = None):
    """The codebook mode's plan for ``graphopt.quantize`` (layers = weight constants; biases
    too with ``bias_bits``)."""
    from graphopt.quant.api import Plan
    from graphopt.quant.report import LayerRecord

    every = codebook_candidates(graph)
    chosen = codebook_candidates(graph, exclude)
    records = []
    for value, kind in every.items():
        if kind == BIAS and bias_bits is None:
            continue  # biases are candidates only when asked for
        use = value in chosen and bits_for(value, kind, bits, conv_bits, bias_bits) is not None
        reason = "" if use else ("excluded" if value not in chosen else "too small to share")
        records.append(LayerRecord(value.name, value.name, tuple(int(d) for d in value.shape),
                                   use, reason=reason))

    def build(names: set[str]) -> Graph:
        g = graph.clone()
        share_constants(g, names, bits, conv_bits, bias_bits)
        return g

    label = f"codebook {bits}-bit" + (f" ({conv_bits}-bit convs)" if conv_bits != bits else "")
    return Plan(f"codebook {bits}/{conv_bits} bits", label, graph, records, build, None)
