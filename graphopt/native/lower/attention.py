"""attention -> "attention" (csrc/rt_attention.cpp): streaming softmax, no L x S matrix.

q, k and v are read through their strides, so the usual head split (linear -> reshape ->
permute) costs no copy. When the result's only user is a permute (the head merge before the
output projection), the kernel writes straight into that permute's layout and the permute
becomes free as well. Keys and values that are a decoder's ``concat(cache, new)`` are read in
their two pieces (native/lower/kv_segments.py): the cache is not copied every step.
"""

from __future__ import annotations

import itertools
import math

from graphopt.ir.dtypes import DType
from graphopt.native.lower._common import require_float32
from graphopt.native.lower.kv_segments import key_segments
from graphopt.ops.registry import register_lowering
from graphopt.rewrite import Var, match_at, op


def _inner_contiguous(ctx, i: int):
    ref = ctx.ref(i)
    if ref.shape and ref.shape[-1] > 1 and ref.strides[-1] != 1:
        ref = ctx.contiguous(i)
    return ref


def _batch_strides(ref, batch: tuple[int, ...], ctx) -> tuple[int, int]:
    """(b, h) strides of ref's leading dims aligned to ``batch`` (broadcast dims: 0)."""
    dims = ref.shape[:-2]
    strides = ref.strides[:-2]
    lead = len(batch) - len(dims)
    aligned = []
    for i in range(len(batch)):
        j = i - lead
        aligned.append(0 if j < 0 or dims[j] == 1 else strides[j])
    if len(batch) <= 2:
        full = [0] * (2 - len(batch)) + aligned
        return full[0], full[1]
    # Merge all but the last batch dim into b: needs one arithmetic progression.
    head = [(d, s) for d, s in zip(batch[:-1], aligned[:-1]) if d != 1]
    for (_, s0), (d1, s1) in itertools.pairwise(head):
        if s0 != s1 * d1:
            ctx.unsupported("attention batch dims that do not merge into one")
    return (head[-1][1] if head else 0), aligned[-1]


@register_lowering("native", "attention")
def lower_attention(ctx) -> None:
    _lower(ctx, bf16=ctx.builder.precision == "bf16")


@register_lowering("native", "attention_bf16")
def lower_attention_bf16(ctx) -> None:
    """The same kernel with its bf16 flag whatever the compile precision (AMX tiles where the
    CPU has them; elsewhere f32, see the op)."""
    _lower(ctx, bf16=True)


def _lower(ctx, bf16: bool) -> None:
    require_float32(ctx, 0, 1, 2)
    out_shape = ctx.out_shape(0)
    if len(out_shape) < 2:
        ctx.unsupported("attention on rank < 2")
    pieces = key_segments(ctx)
    if pieces is None:
        q, k, v = (_inner_contiguous(ctx, i) for i in range(3))
        k2 = v2 = None
    else:
        q = _inner_contiguous(ctx, 0)
        k, v, k2, v2 = pieces
    batch = out_shape[:-2]
    L, E = q.shape[-2:]
    S, Ev = k.shape[-2], v.shape[-1]
    S2 = 0 if k2 is None else k2.shape[-2]
    group = 1
    if ctx.attrs["enable_gqa"] and len(q.shape) >= 3 and k.shape[-3] != q.shape[-3]:
        group = q.shape[-3] // k.shape[-3]

    def kv_strides(ref):
        if group == 1:
            return _batch_strides(ref, batch, ctx)
        # Grouped-query attention: the kernel indexes kv heads as h // group.
        as_q = ref.with_view(ref.offset, (*ref.shape[:-3], batch[-1], *ref.shape[-2:]),
                             ref.strides)
        return _batch_strides(as_q, batch, ctx)[0], ref.strides[-3]

    B = 1
    for d in batch[:-1]:
        B *= d
    H = batch[-1] if batch else 1
    scale = ctx.attrs["scale"]
    if scale is None:
        scale = 1.0 / math.sqrt(E)

    mask_kind, m_strides, mask = _mask_operand(ctx, batch, L, S + S2)
    out = _output_ref(ctx, out_shape)
    ob, oh = _batch_strides(out, batch, ctx)
    qb, qh = _batch_strides(q, batch, ctx)
    kb, kh = kv_strides(k)
    vb, vh = kv_strides(v)
    tail = [0] * 6 if k2 is None else [*kv_strides(k2), k2.strides[-2],
                                       *kv_strides(v2), v2.strides[-2]]
    ctx.emit("attention", [out, q, k, v, mask, k2, v2],
             [B, H, L, S, E, Ev, group,
              qb, qh, q.strides[-2], kb, kh, k.strides[-2], vb, vh, v.strides[-2],
              ob, oh, out.strides[-2], mask_kind, *m_strides, int(ctx.attrs["is_causal"]),
              int(bf16), S2, *tail],
             [scale])


def _mask_operand(ctx, batch: tuple[int, ...], L: int, S: int):
    """``(mask_kind, strides, ref)`` of the mask operand: kind 0 (no mask), 1 (bool, True
    attends) or 2 (float, added to the scores); the strides are (b, h, row, column)."""
    mask_kind, m_strides, mask = 0, (0, 0, 0, 0), None
    data = ctx.const(3)
    if data is not None and (data.all() if data.dtype == bool else not data.any()):
        pass  # a constant mask that masks nothing (BERT without padding): no mask at all
    elif ctx.has(3):
        mdtype = ctx.in_dtype(3)
        if mdtype == DType.bool:
            mask_kind, mask = 1, ctx.ref(3)
        else:
            mask_kind, mask = 2, ctx.cast(3, DType.float32, contiguous=False)
        mask = mask.expanded((*batch, L, S))
        mb, mh = _batch_strides(mask, batch, ctx)
        m_strides = (mb, mh, mask.strides[-2], mask.strides[-1])
    return mask_kind, m_strides, mask


def _output_ref(ctx, out_shape):
    """Where the kernel writes its result: into the layout of a permute that is the result's
    only user (the permute then costs nothing), else the node's own output."""
    node = ctx.node
    result = node.outputs[0]
    users = result.users
    out = None
    keeps_last_axis = op.permute(Var("x"), perm=lambda p: p[-1] == len(out_shape) - 1)
    if (len(users) == 1 and not result.is_graph_output and len(result.uses) == 1
            and match_at(keeps_last_axis, users[0])):
        perm = list(users[0].attrs["perm"])
        permuted = users[0].outputs[0]
        target = ctx.builder.new_ref(ctx.builder.shape(permuted), permuted.dtype, permuted.name,
                                     ctx.builder.last_use.get(permuted, -1))
        inverse = [perm.index(i) for i in range(len(perm))]
        ctx.builder.env[permuted] = target
        out = target.permuted(inverse)
        ctx.set_output(0, out)
    if out is None:
        out = ctx.output(0)
    return out
