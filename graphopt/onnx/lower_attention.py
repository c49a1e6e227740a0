"""ONNX lowering of ``attention`` (scaled dot-product attention).

Three forms, fastest first:

* opset >= 23: the standard ``Attention`` op takes (B, H, L, E) operands as they are;
* onnxruntime's ``com.microsoft.MultiHeadAttention`` (when contrib ops are allowed): float32
  (B, H, L, E) operands with static head counts and sizes; q goes in as (B, L, H*E), the
  result comes back as (B, L, H*Ev) and is viewed as (B, H, L, Ev) again (onnxruntime folds the
  transposes against the model's own head split/merge);
* the decomposition ``softmax(q @ k^T * scale + mask) @ v`` in plain MatMul/Softmax otherwise.
"""

from __future__ import annotations

import math

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Node, Value
from graphopt.ir.types import dims_equal
from graphopt.onnx._common import MICROSOFT
from graphopt.onnx.export import OnnxLowering
from graphopt.onnx.lower_shape import unsqueeze
from graphopt.ops.registry import register_lowering
from graphopt.rewrite import Var, match_at, op


def _scale(node: Node) -> float:
    scale = node.attrs["scale"]
    e = node.inputs[0].shape[-1]
    if scale is None:
        if not isinstance(e, int):
            return None  # computed at run time by the decomposition
        return 1.0 / math.sqrt(e)
    return float(scale)


def _static(*dims) -> bool:
    return all(isinstance(d, int) for d in dims)


def _fits_multihead(ctx: OnnxLowering, node: Node) -> bool:
    q, k, v, mask = node.inputs
    if not ctx.contrib or q.dtype is not DType.float32 or q.type.rank != 4:
        return False
    if k.type.rank != 4 or v.type.rank != 4:
        return False
    b, h, l_, e = q.shape
    kb, kh, s, ke = k.shape
    vb, vh, vs, ev = v.shape
    if not _static(h, e, ev, kh, vh) or kh != h or vh != h:
        return False  # grouped-query or broadcast heads: not MultiHeadAttention's layout
    if not (dims_equal(kb, b) and dims_equal(vb, b)) or ke != ev or not dims_equal(s, vs):
        return False  # MultiHeadAttention wants key and value of one shape
    if node.attrs["is_causal"] and not dims_equal(l_, s):
        return False  # torch's causal mask is top-left aligned for L != S
    if mask is not None and mask.type.rank > 4:
        return False
    return _scale(node) is not None


def _additive_mask(ctx: OnnxLowering, node: Node, dtype: DType) -> str:
    mask = node.inputs[3]
    name = ctx.input(node, 3)
    if mask.dtype is DType.bool:  # keep True -> 0, drop False -> -inf
        return ctx.op("Where", [name, ctx.scalar(0.0, dtype), ctx.scalar(-np.inf, dtype)])
    return ctx.cast(name, mask.dtype, dtype)


def merged_heads_source(value) -> Value | None:
    """The (B, S, H*E) tensor that ``value`` (B, H, S, E) was split from by the usual
    ``reshape -> permute(0, 2, 1, 3)``, if so; MultiHeadAttention can read it directly."""
    match = match_at(op.permute(op.reshape(Var("source")), perm=(0, 2, 1, 3)), value.producer)
    if match is None:
        return None
    source = match["source"]
    b, h, s, e = value.shape
    if source.type.rank == 3 and dims_equal(source.shape[0], b) and \
            dims_equal(source.shape[1], s) and dims_equal(source.shape[2], h * e):
        return source
    return None


def _lower_multihead(ctx: OnnxLowering, node: Node) -> None:
    q, k, v, mask = node.inputs
    b, h, l_, e = q.shape
    s = k.shape[2]
    ev = v.shape[3]
    # Read q (and k, v) before the model's head split when possible: the split then dies and
    # onnxruntime runs MultiHeadAttention on its native (B, S, H*E) layout.
    source = merged_heads_source(q)
    query = ctx.name(source) if source is not None else ctx.op(
        "Reshape", [ctx.op("Transpose", [ctx.input(node, 0)], perm=[0, 2, 1, 3]),
                    ctx.ints([0, 0, h * e])])
    k_source, v_source = merged_heads_source(k), merged_heads_source(v)
    if k_source is not None and v_source is not None:
        args = [query, ctx.name(k_source), ctx.name(v_source)]
    else:
        args = [query, ctx.input(node, 1), ctx.input(node, 2)]
    if mask is not None:
        bias = _additive_mask(ctx, node, DType.float32)
        if mask.type.rank < 4:
            bias = unsqueeze(ctx, bias, list(range(4 - mask.type.rank)))
        mshape = [1] * (4 - mask.type.rank) + list(mask.shape)
        if not (dims_equal(mshape[2], l_) and dims_equal(mshape[3], s)):
            # attention_bias must be (B or 1, H or 1, L, S): broadcast the last two dims.
            bias = ctx.op("Expand", [bias, ctx.shape_tensor([1, 1, l_, s])])
        args += ["", "", bias]  # bias, key_padding_mask, attention_bias
    out = ctx.op("MultiHeadAttention", args, domain=MICROSOFT, num_heads=int(h),
                 scale=_scale(node), unidirectional=1 if node.attrs["is_causal"] else None)
    heads = ctx.op("Reshape", [out, ctx.ints([0, 0, h, ev])])
    ctx.op("Transpose", [heads], out=ctx.output(node), perm=[0, 2, 1, 3])


def _lower_standard(ctx: OnnxLowering, node: Node) -> None:
    q, k, _, mask = node.inputs
    args = [ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2)]
    if mask is not None:
        m = ctx.input(node, 3)
        shape = [1] * (2 - mask.type.rank) + list(mask.shape)
        if not (dims_equal(shape[-2], q.shape[2]) and dims_equal(shape[-1], k.shape[2])):
            # onnxruntime wants the mask's last two dims exactly (L, S)
            m = ctx.op("Expand", [m, ctx.shape_tensor([q.shape[2], k.shape[2]])])
        args.append(m)
    ctx.op("Attention", args, out=ctx.output(node), scale=_scale(node),
           is_causal=1 if node.attrs["is_causal"] else None)


def _fits_standard(ctx: OnnxLowering, node: Node) -> bool:
    q, k, v, mask = node.inputs
    if ctx.opset < 23 or q.type.rank != 4 or k.type.rank != 4 or v.type.rank != 4:
        return False
    if q.dtype not in (DType.float32, DType.float16):
        return False
    if _scale(node) is None:
        return False
    if mask is not None and (mask.dtype not in (DType.bool, q.dtype) or mask.type.rank > 4):
        return False
    return node.attrs["is_causal"] is False or dims_equal(q.shape[2], k.shape[2])


def _repeat_heads(ctx: OnnxLowering, name: str, shape, groups: int) -> str:
    """(B, Hk, S, E) -> (B, Hk*groups, S, E), each kv head repeated for its query group."""
    b, hk, s, e = shape
    x = unsqueeze(ctx, name, [2])
    x = ctx.op("Expand", [x, ctx.shape_tensor([b, hk, groups, s, e])])
    return ctx.op("Reshape", [x, ctx.shape_tensor([b, hk * groups, s, e])])


def _lower_decomposed(ctx: OnnxLowering, node: Node) -> None:
    q, k, v, mask = node.inputs
    dtype = node.outputs[0].dtype
    qn, kn, vn = (ctx.input_as(node, i, dtype) for i in range(3))
    rank = k.type.rank
    if node.attrs["enable_gqa"] and rank == 4 and not dims_equal(q.shape[1], k.shape[1]):
        if not _static(q.shape[1], k.shape[1]):
            raise ctx.fail("grouped-query attention needs static head counts")
        groups = q.shape[1] // k.shape[1]
        kn = _repeat_heads(ctx, kn, k.shape, groups)
        vn = _repeat_heads(ctx, vn, v.shape, groups)
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    scores = ctx.op("MatMul", [qn, ctx.op("Transpose", [kn], perm=perm)])
    scale = _scale(node)
    if scale is None:  # 1/sqrt(E) for a symbolic head size
        e = ctx.op("Cast", [ctx.dim_tensor(q.shape[-1])], to=1 if dtype is DType.float32 else 11)
        scaled = ctx.op("Div", [scores, ctx.op("Sqrt", [e])])
    else:
        scaled = ctx.op("Mul", [scores, ctx.scalar(scale, dtype)])
    l_, s = q.shape[-2], k.shape[-2]
    if node.attrs["is_causal"]:
        if _static(l_, s):
            keep = ctx.const(np.tril(np.ones((l_, s), dtype=np.bool_)), DType.bool, "causal")
        else:
            ones = ctx.op("ConstantOfShape", [ctx.shape_tensor([l_, s])],
                          value=onnx_bool_true())
            keep = ctx.op("Trilu", [ones], upper=0)
        scaled = ctx.op("Where", [keep, scaled, ctx.scalar(-np.inf, dtype)])
    if mask is not None:
        if mask.dtype is DType.bool:
            scaled = ctx.op("Where", [ctx.input(node, 3), scaled, ctx.scalar(-np.inf, dtype)])
        else:
            scaled = ctx.op("Add", [scaled, ctx.input_as(node, 3, dtype)])
    probs = ctx.op("Softmax", [scaled], axis=-1)
    ctx.op("MatMul", [probs, vn], out=ctx.output(node))


def onnx_bool_true():
    from onnx import helper

    return helper.make_tensor("value", 9, [1], [True])


@register_lowering("onnx", "attention_bf16")  # onnxruntime has no bf16 attention: f32
@register_lowering("onnx", "attention")
def _attention(ctx, node):
    if _fits_standard(ctx, node):
        _lower_standard(ctx, node)
    elif _fits_multihead(ctx, node):
        _lower_multihead(ctx, node)
    else:
        _lower_decomposed(ctx, node)
