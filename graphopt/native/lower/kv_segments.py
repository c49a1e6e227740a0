"""Attention over a concatenation without making it: a decoder step's KV cache.

A traced decoder step attends to ``concat(past, new)`` along the key axis for both keys and
values: the whole cache (``max_length`` slots per layer) concatenated with the step's own keys,
copied every step although attention only reads it. When a two-piece concatenation along the
key axis (axis -2 of a rank-4 float32 tensor) is read only as the keys or values of attention
nodes, ``lower_concat`` leaves it unmade: ``builder.segments`` records the two pieces, and the
attention kernel (csrc/rt_attention.cpp, operands k2 / v2) reads the keys from both where they
lie. Any other reader (a fallback, a graph output) gets the concatenation made on demand by
``builder.plain_ref`` (:func:`join_segments`), so deferring never changes a result.

The two pieces stay alive until the last attention that reads them (their buffers'
``pending_end`` is moved to the concatenation's last use).
"""

from __future__ import annotations

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Node, Value
from graphopt.native.lower._common import norm_axis
from graphopt.native.refs import TensorRef


def _read_as_keys_or_values(value: Value) -> bool:
    # op-name check: only the attention kernel reads a concatenation in two pieces
    return bool(value.uses) and all(
        user.op in ("attention", "attention_bf16") and slot in (1, 2) for user, slot in value.uses)


def defer_concat(ctx) -> bool:
    """Record ``ctx.node`` (a concat) as two pieces instead of copying them, when only
    attention reads it as keys or values (module doc); False: lower it as usual."""
    node: Node = ctx.node
    out = node.outputs[0]
    if len(node.inputs) != 2 or out.is_graph_output or out.dtype is not DType.float32:
        return False
    shape = ctx.out_shape(0)
    if len(shape) != 4 or norm_axis(ctx.attrs["axis"], 4) != 2:
        return False
    if not _read_as_keys_or_values(out):
        return False
    first, second = ctx.ref(0), ctx.ref(1)
    if first.shape[-1] > 1 and first.strides[-1] != 1 or \
            second.shape[-1] > 1 and second.strides[-1] != 1:
        return False  # the kernel reads rows with unit stride
    end = ctx.builder.last_use.get(out, -1)
    for piece in (first, second):
        piece.buffer.pending_end = max(piece.buffer.pending_end, end)
    ctx.builder.segments[out] = (first, second, 2)
    return True


def join_segments(builder, value: Value, segments: tuple[TensorRef, TensorRef, int]
                  ) -> TensorRef:
    """Make the concatenation ``value`` of its recorded pieces (for a reader that needs it
    whole); the copies are emitted where the reader is lowered."""
    first, second, axis = segments
    out = builder.new_ref(builder.shape(value), value.dtype, value.name,
                          builder.last_use.get(value, -1))
    split = first.shape[axis]
    for piece, start in ((first, 0), (second, split)):
        if piece.shape[axis]:
            builder.emit_copy(out.sliced(axis, start, piece.shape[axis]), piece,
                              f"{value.name}.join")
    return out


def key_segments(ctx) -> tuple[TensorRef, TensorRef, TensorRef, TensorRef] | None:
    """(k, v, k2, v2) of ``ctx.node`` (attention) when both its keys and values are deferred
    concatenations split at the same key, else None (the kernel then reads them whole)."""
    builder = ctx.builder
    k_seg = builder.segments.get(ctx.node.inputs[1])
    v_seg = builder.segments.get(ctx.node.inputs[2])
    if k_seg is None or v_seg is None or k_seg[0].shape[2] != v_seg[0].shape[2]:
        return None
    return k_seg[0], v_seg[0], k_seg[1], v_seg[1]
