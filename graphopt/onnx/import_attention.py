"""Converters of ONNX Attention and onnxruntime's MultiHeadAttention.

Plain scaled dot-product attention (optionally causal, masked or grouped-query) becomes the IR
``attention`` op; KV caches, softcap, sliding windows and the qk output are built from plain IR
ops following the ONNX reference step by step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from graphopt.errors import GraphoptError
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Value
from graphopt.ir.types import normalize_dim
from graphopt.limits import check_shape
from graphopt.onnx._common import MICROSOFT
from graphopt.onnx.importer import ImportContext, OnnxNode, onnx_converter


def _split_heads(ctx: ImportContext, x: Value, heads: int, adapter: bool = False) -> Value:
    """(B, S, H*E) -> (B, H, S, E); ``adapter`` marks the nodes as layout adapters."""
    if x.type.rank != 3:
        raise GraphoptError(f"operand {x.type} must be (batch, sequence, hidden)")
    b, s, d = x.shape
    if not isinstance(heads, int) or heads < 1 or (isinstance(d, int) and d % heads):
        raise GraphoptError(f"{heads} heads do not split the hidden size {d} of {x.type}")
    y = ctx.emit("reshape", [x], {"shape": (b, s, heads, normalize_dim(d // heads))})
    y = ctx.emit("permute", [y], {"perm": (0, 2, 1, 3)})
    if adapter:
        ctx.mark_synthetic(y.producer.inputs[0])
        ctx.mark_synthetic(y)
    return y


def _merge_heads(ctx: ImportContext, x: Value, adapter: bool = False) -> Value:
    """(B, H, L, E) -> (B, L, H*E)."""
    b, h, l_, e = x.shape
    y = ctx.emit("permute", [x], {"perm": (0, 2, 1, 3)})
    y = ctx.emit("reshape", [y], {"shape": (b, l_, normalize_dim(h * e))})
    if adapter:
        ctx.mark_synthetic(y.producer.inputs[0])
        ctx.mark_synthetic(y)
    return y


def _causal_mask(ctx: ImportContext, mask: Value | None, l_, s, dtype: DType) -> Value:
    """Combine an explicit mask with the top-left causal mask (static lengths)."""
    if not (isinstance(l_, int) and isinstance(s, int)):
        raise GraphoptError("causal attention with an explicit mask over symbolic lengths")
    check_shape((l_, s), 4, f"the causal mask constant ({l_}, {s})")
    keep = np.tril(np.ones((l_, s), dtype=np.bool_))
    if mask.dtype is DType.bool:
        return ctx.emit("logical_and", [mask, ctx.constant(keep, DType.bool, "causal")])
    bias = torch.where(torch.from_numpy(keep), 0.0, float("-inf")).to(dtype.torch)
    return ctx.emit("add", [mask, ctx.constant(bias, name="causal")])


@onnx_converter("Attention")
def _attention(ctx, node):
    q, k, v, mask = (ctx.value(node, i) for i in range(4))
    rank = q.type.rank
    if rank not in (3, 4) or k.type.rank != rank or v.type.rank != rank:
        raise GraphoptError(f"Q {q.type}, K {k.type} and V {v.type} must all be 3-D or 4-D")
    if rank == 3:
        qh, kvh = node.positive_int("q_num_heads"), node.positive_int("kv_num_heads")
        q, k, v = _split_heads(ctx, q, qh), _split_heads(ctx, k, kvh), _split_heads(ctx, v, kvh)
    hq, hk = q.shape[1], k.shape[1]
    if isinstance(hq, int) and isinstance(hk, int) and (hk < 1 or hq % hk):
        raise GraphoptError(f"{hq} query heads are not a multiple of {hk} key/value heads")
    for name in ("scale", "softcap"):
        value = node.attr(name, None)
        if value is not None and not math.isfinite(value):
            raise GraphoptError(f"attribute '{name}' = {value} must be finite")
    wants_scores = len(node.outputs) > 3 and bool(node.outputs[3])
    if (any(node.has_input(i) for i in (4, 5, 6)) or node.attr("softcap", 0.0) or wants_scores
            or node.attr("left_window_size", -1) >= 0
            or node.attr("right_window_size", -1) >= 0):
        return _attention_decomposed(ctx, node, q, k, v, mask, rank)
    is_causal = bool(node.attr("is_causal", 0))
    if is_causal and mask is not None:
        mask = _causal_mask(ctx, mask, q.shape[2], k.shape[2], q.dtype)
        is_causal = False
    scale = node.attr("scale", None)
    gqa = q.shape[1] != k.shape[1]
    y = ctx.emit("attention", [q, k, v, mask], {"scale": scale, "is_causal": is_causal,
                                                "enable_gqa": gqa})
    if rank == 3:
        y = _merge_heads(ctx, y)
    present_k = k if len(node.outputs) > 1 else None
    present_v = v if len(node.outputs) > 2 else None
    return [y, present_k, present_v, None]


def _repeat_kv(ctx: ImportContext, x: Value, groups: int) -> Value:
    """(B, Hk, S, E) -> (B, Hk*groups, S, E), each head repeated for its query group."""
    b, h, s, e = x.shape
    y = ctx.emit("unsqueeze", [x], {"axis": 2})
    y = ctx.emit("expand", [y], {"shape": (b, h, groups, s, e)})
    return ctx.emit("reshape", [y], {"shape": (b, h * groups, s, e)})


def _attention_decomposed(ctx: ImportContext, node: OnnxNode, q, k, v, mask, rank: int):
    """ONNX Attention with KV cache, softcap, windows or the qk output, from plain IR ops
    (the steps of the ONNX reference: scale both operands by sqrt(scale), softcap, additive
    bias, softmax with fully-masked rows zeroed, then @ V)."""
    past_k, past_v, nonpad = ctx.value(node, 4), ctx.value(node, 5), ctx.value(node, 6)
    if past_k is not None:
        k = ctx.emit("concat", [past_k, k], {"axis": 2})
        v = ctx.emit("concat", [past_v, v], {"axis": 2})
    present_k, present_v = k, v
    dtype = q.dtype
    _, hq, seq_q, head = q.shape
    hk, seq_k = k.shape[1], k.shape[2]
    if not all(isinstance(d, int) for d in (hq, hk, seq_q, seq_k, head)):
        raise GraphoptError("Attention with KV cache/softcap/windows over symbolic sizes")
    check_shape((seq_q, seq_k), 8, f"the attention bias constants ({seq_q}, {seq_k})")
    if hq != hk:
        k, v = _repeat_kv(ctx, k, hq // hk), _repeat_kv(ctx, v, hq // hk)
    scores = _scaled_scores(ctx, node, q, k, head)
    softcap = node.attr("softcap", 0.0)
    if softcap:
        scores = ctx.emit("mul", [ctx.emit("tanh", [ctx.emit("div", [
            scores, ctx.scalar(softcap, dtype)])]), ctx.scalar(softcap, dtype)])
    qk_out = scores
    neg_inf, zero = ctx.scalar(-math.inf, dtype), ctx.scalar(0.0, dtype)
    bias = _mask_bias(ctx, mask, seq_k, dtype, zero, neg_inf)
    past_len = past_k.shape[2] if past_k is not None else 0
    bias = _position_bias(ctx, node, bias, seq_q, seq_k, past_len, nonpad, dtype, zero,
                          neg_inf)
    if nonpad is not None:  # keys at or past nonpad_kv_seqlen[b] are padding
        valid = ctx.emit("lt", [ctx.constant(np.arange(seq_k), DType.int64, "keys"),
                                ctx.emit("reshape", [ctx.cast(nonpad, DType.int64)],
                                         {"shape": (-1, 1, 1, 1)})])
        term = ctx.emit("where", [valid, zero, neg_inf])
        bias = term if bias is None else ctx.emit("add", [bias, term])
    if bias is not None:
        scores = ctx.emit("add", [scores, bias])
        if node.attr("qk_matmul_output_mode", 0) == 2 or (
                node.attr("qk_matmul_output_mode", 0) == 1 and not softcap):
            qk_out = scores
    probs = ctx.emit("softmax", [scores], {"axis": -1})
    if bias is not None:  # rows with no attendable key give 0, not NaN
        row_max = ctx.emit("amax", [bias], {"axes": (-1,), "keepdim": True})
        dead = ctx.emit("eq", [row_max, neg_inf])
        probs = ctx.emit("where", [dead, zero, probs])
    if node.attr("qk_matmul_output_mode", 0) == 3:
        qk_out = probs
    y = ctx.emit("matmul", [probs, v])
    if rank == 3:
        y = _merge_heads(ctx, y)
    return [y, present_k, present_v, qk_out]


def _scaled_scores(ctx: ImportContext, node: OnnxNode, q: Value, k: Value, head: int) -> Value:
    """Q @ K^T with both operands scaled by sqrt(scale), as the ONNX reference does (the
    default scale is 1/sqrt(head size))."""
    dtype = q.dtype
    scale = node.attr("scale", None)
    if head < 1 or (scale is not None and not scale > 0):
        raise GraphoptError(f"scale {scale} must be > 0 and the head size {head} >= 1")
    root = math.sqrt(scale if scale is not None else 1.0 / math.sqrt(head))
    qs = ctx.emit("mul", [q, ctx.scalar(root, dtype)])
    ks = ctx.emit("mul", [k, ctx.scalar(root, dtype)])
    return ctx.emit("matmul", [qs, ctx.emit("permute", [ks], {"perm": (0, 1, 3, 2)})])


def _mask_bias(ctx: ImportContext, mask: Value | None, seq_k: int, dtype: DType, zero: Value,
               neg_inf: Value) -> Value | None:
    """The explicit attention mask as an additive bias (None without a mask)."""
    if mask is None:
        return None
    if mask.shape[-1] != seq_k:  # a short mask is padded with "masked"
        extra = seq_k - mask.shape[-1]
        fill = False if mask.dtype is DType.bool else -math.inf
        mask = ctx.emit("pad", [mask], {"pads": (0, extra), "mode": "constant",
                                        "value": fill})
    return ctx.emit("where", [mask, zero, neg_inf]) if mask.dtype is DType.bool \
        else ctx.cast(mask, dtype)


def _position_bias(ctx: ImportContext, node: OnnxNode, bias: Value | None, seq_q: int,
                   seq_k: int, past_len: int, nonpad: Value | None, dtype: DType,
                   zero: Value, neg_inf: Value) -> Value | None:
    """``bias`` plus the causal and sliding-window constraints on key position j against
    query position i (None when there is neither bias nor constraint)."""
    # j <= i + offset (causal) and the window, with offset = past length, or per batch
    # nonpad_kv_seqlen - L for an external cache.
    rel = np.arange(seq_k)[None, :] - np.arange(seq_q)[:, None]  # j - i
    left, right = node.attr("left_window_size", -1), node.attr("right_window_size", -1)
    constraints = []
    if node.attr("is_causal", 0):
        constraints.append(("le", rel, 0))  # j - i <= offset
    if left >= 0:
        constraints.append(("ge", rel, -left))  # i + offset - j <= left
    if right >= 0:
        constraints.append(("le", rel, right))  # j - i - offset <= right
    for cmp, grid, bound in constraints:
        if nonpad is None:
            allowed = (grid - past_len <= bound) if cmp == "le" else (grid - past_len >= bound)
            term = ctx.constant(torch.where(torch.from_numpy(allowed), 0.0, -math.inf)
                                .to(dtype.torch), name="attn_bias")
        else:
            offset = ctx.emit("sub", [ctx.cast(nonpad, DType.int64),
                                      ctx.scalar(seq_q, DType.int64)])
            offset = ctx.emit("reshape", [offset], {"shape": (-1, 1, 1, 1)})
            shifted = ctx.emit("sub", [ctx.constant(grid.astype(np.int64), DType.int64, "rel"),
                                       offset])
            ok = ctx.emit(cmp, [shifted, ctx.scalar(bound, DType.int64)])
            term = ctx.emit("where", [ok, zero, neg_inf])
        bias = term if bias is None else ctx.emit("add", [bias, term])
    return bias


@onnx_converter("MultiHeadAttention", domain=MICROSOFT)
def _multi_head_attention(ctx, node):
    q, k, v, bias = (ctx.value(node, i) for i in range(4))
    for i, what in ((4, "key_padding_mask"), (6, "past_key"), (7, "past_value")):
        if node.has_input(i):
            raise GraphoptError(f"MultiHeadAttention with {what} is not supported")
    if k is None or v is None or q.type.rank != 3:
        raise GraphoptError("MultiHeadAttention with packed q/k/v is not supported")
    heads = node.positive_int("num_heads")
    if bias is not None:  # packed (q, k, v) input-projection biases
        if k.type.rank != 3 or v.type.rank != 3:
            raise GraphoptError("MultiHeadAttention bias with (B, N, S, H) key/value")
        qb, kb, vb = ctx.emit("split", [bias], {"axis": 0, "sizes": (
            q.shape[2], k.shape[2], v.shape[2])})
        q, k, v = (ctx.emit("add", [x, b]) for x, b in ((q, qb), (k, kb), (v, vb)))
    q = _split_heads(ctx, q, heads, adapter=True)
    k = _split_heads(ctx, k, heads, adapter=True) if k.type.rank == 3 else k
    v = _split_heads(ctx, v, heads, adapter=True) if v.type.rank == 3 else v
    mask = ctx.value(node, 5)
    scale = node.attr("scale", 0.0) or None
    y = ctx.emit("attention", [q, k, v, mask], {
        "scale": scale, "is_causal": bool(node.attr("unidirectional", 0))})
    return [_merge_heads(ctx, y, adapter=True), None, None]
