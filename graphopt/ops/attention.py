"""Attention: scaled dot-product attention as one op (frontends emit it for SDPA; the
fuse-attention pass produces it from the decomposed QK^T/softmax/V form)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from graphopt.errors import TypeInferenceError
from graphopt.ir.types import TensorType
from graphopt.ops._infer import broadcast_shapes, expect_dim
from graphopt.ops.registry import PURE, AttrSpec, register_op


def _sdpa_infer(types, attrs):
    q, k, v, mask = (list(types) + [None])[:4]  # the mask may be left out
    if q.rank < 2 or k.rank != q.rank or v.rank != q.rank:
        raise TypeInferenceError(f"attention q/k/v must share rank >= 2: {q}, {k}, {v}")
    expect_dim(q.shape[-1], k.shape[-1], "attention head dim of q vs k")
    expect_dim(k.shape[-2], v.shape[-2], "attention key length of k vs v")
    if mask is not None:
        scores = q.shape[:-1] + (k.shape[-2],)
        broadcast_shapes(mask.shape, scores)
    if attrs["enable_gqa"] and q.rank >= 3:  # k/v heads (dim -3) are shared by query groups
        kv_batch = broadcast_shapes(k.shape[:-3], v.shape[:-3])
        batch = broadcast_shapes(q.shape[:-3], kv_batch) + (q.shape[-3],)
    else:
        batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    return q.with_shape(batch + (q.shape[-2], v.shape[-1]))


# attention and attention_bf16: one schema (operands, attributes, shape rule)
_SCHEMA = dict(
    inputs=("q", "k", "v", "mask?"),
    attrs={
        "scale": AttrSpec((float, type(None)), None, "None: 1/sqrt(head_dim)"),
        "is_causal": False,
        "enable_gqa": False,
    },
    traits={PURE},
    infer=_sdpa_infer,
)


@register_op("attention", **_SCHEMA)
def attention(q, k, v, mask=None, scale=None, is_causal=False, enable_gqa=False):
    """softmax(q @ k^T * scale + mask) @ v. A bool mask keeps True positions; a float mask adds.

    Shapes (..., L, E), (..., S, E), (..., S, Ev) -> (..., L, Ev).
    """
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
    )


def _bf16(t):
    return t.to(torch.bfloat16).to(torch.float32)


@register_op("attention_bf16", **_SCHEMA)
def attention_bf16(q, k, v, mask=None, scale=None, is_causal=False, enable_gqa=False):
    """attention with both products in bf16 (``graphopt.quantize(..., error_budget=...)``
    chooses it where the budget allows, on CPUs with AMX): q, k, v and the unnormalized
    probabilities ``p = exp(s - rowmax)`` rounded to bf16, products summed in f32, the softmax
    in f32: ``out = (bf16(p) @ bf16(v)) / sum(p)``. Exactly what the native AMX kernel computes
    for one key block (S <= 512; past that its running maximum rounds earlier blocks' p
    relative to an older maximum). Backends without bf16 tiles (native without AMX,
    onnxruntime) compute attention in f32, which is at least as accurate. A row with every key
    masked gives 0.
    """
    qf, kf, vf = _bf16(q), _bf16(k), _bf16(v)
    if enable_gqa and q.dim() >= 3 and k.shape[-3] != q.shape[-3]:
        group = q.shape[-3] // k.shape[-3]
        kf, vf = kf.repeat_interleave(group, -3), vf.repeat_interleave(group, -3)
    if scale is None:
        scale = 1.0 / float(q.shape[-1]) ** 0.5
    scores = (qf @ kf.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool \
            else scores + mask
    if is_causal:
        rows, cols = scores.shape[-2:]
        keep = torch.ones(rows, cols, dtype=torch.bool).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    top = scores.amax(-1, keepdim=True)
    top = torch.where(torch.isneginf(top), torch.zeros_like(top), top)
    p = torch.exp(scores - top)
    total = p.sum(-1, keepdim=True)
    out = _bf16(p) @ vf
    return torch.where(total > 0, out / torch.where(total > 0, total, 1.0), 0.0)
