"""Codebook-shared weights on the native runtime: decoded once, or read through the codebook.

A ``codebook_decode`` of constant indices and centroids (``graphopt.quantize(graph,
"codebook")``) is, with ``codebook="decode"``, computed when the plan is built: the kernels then
see an ordinary float32 weight. With ``codebook="lookup"`` a linear layer whose weight is such
a decode reads the uint8 indices and the codebook directly ("linear_codebook",
csrc/rt_codebook_gemv.cpp): the float32 weight never exists, so the plan holds a quarter of the
weight bytes, and a layer larger than the caches streams 1 byte per weight instead of 4. The
decode node then emits nothing; its value is *virtual* (``PlanBuilder.virtual``), read only by
the lowerings that declare ``reads_codebook_weight``. It is eligible when every reader of its
value is such a lowering (in the weight slot), the value is not a graph output, the indices are
uint8 ``[N, K]`` and the codebook holds at most 255 float32 entries. ``codebook="auto"`` (the
default) takes the lookup for weights of at least 8 MiB as float32 read by at most 16 rows,
where it was measured faster (bench_codebook_gemv.py), and decodes the rest.
"""

from __future__ import annotations

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Node, Value
from graphopt.ops.registry import CODEBOOK

CODEBOOK_MODES = ("auto", "decode", "lookup")
_MAX_ENTRIES = 255
# "auto": the lookup where benchmarks/bench_codebook_gemv.py measured it faster (2-core Zen 4:
# 1.5-4x for 2048x2048 and 4096x4096 weights at 1-4 rows, even at 16; slower for weights that
# stay in the caches at batch 1, 0.6-0.8x for 512x512 and 1024x1024).
AUTO_MIN_WEIGHT_BYTES = 8 << 20  # the float32 weight this large or more
AUTO_MAX_ROWS = 16


def reads_codebook_weight(lowering):
    """Mark a native lowering that runs its operand 1 (a linear weight) from a virtual
    codebook value (``lookup_weight``) when it is one."""
    lowering.reads_codebook_weight = True
    return lowering


def _lookup_candidate(builder, node: Node) -> bool:
    if builder.codebook == "decode" or not node.has_trait(CODEBOOK):
        return False
    indices, centroids = node.inputs
    out = node.outputs[0]
    idx, table = builder.consts.get(indices), builder.consts.get(centroids)
    if idx is None or table is None or out.is_graph_output or not out.uses:
        return False
    if indices.dtype is not DType.uint8 or idx.ndim != 2 or centroids.dtype is not \
            DType.float32 or not 1 <= table.size <= _MAX_ENTRIES:
        return False
    if not all(slot == 1 and getattr(user.opdef.lowerings.get("native"),
                                         "reads_codebook_weight", False)
               for user, slot in out.uses):
        return False
    return builder.codebook == "lookup" or (
        idx.size * 4 >= AUTO_MIN_WEIGHT_BYTES
        and all(_rows(builder, user) <= AUTO_MAX_ROWS for user, _ in out.uses))


def _rows(builder, user: Node) -> int:
    shape = builder.shape(user.inputs[0])
    return int(np.prod(shape[:-1], dtype=np.int64))


def keep_virtual(builder, node: Node) -> bool:
    """Whether ``node`` (a CODEBOOK decode) stays unevaluated for lookup readers; if so its
    output is recorded in ``builder.virtual`` and nothing is emitted or folded."""
    if not _lookup_candidate(builder, node):
        return False
    indices, centroids = node.inputs
    builder.virtual[node.outputs[0]] = (np.ascontiguousarray(builder.consts[indices]),
                                        np.ascontiguousarray(builder.consts[centroids],
                                                             dtype=np.float32))
    return True


def lookup_weight(ctx, i: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(indices, centroids) when input ``i`` is a virtual codebook weight, else None."""
    value: Value | None = ctx.node.inputs[i] if i < len(ctx.node.inputs) else None
    return None if value is None else ctx.builder.virtual.get(value)
