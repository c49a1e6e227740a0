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


@register_op(
    "attention",
    inputs=("q", "k", "v", "mask?"),
    attrs={
        "scale": AttrSpec((float, type(None)), None, "None: 1/sqrt(head_dim)"),
        "is_causal": False,
        "enable_gqa": False,
    },
    traits={PURE},
    infer=_sdpa_infer,
)
def attention(q, k, v, mask=None, scale=None, is_causal=False, enable_gqa=False):
    """softmax(q @ k^T * scale + mask) @ v. A bool mask keeps True positions; a float mask adds.

    Shapes (..., L, E), (..., S, E), (..., S, Ev) -> (..., L, Ev).
    """
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
    )
