"""Fusion passes: fuse-attention, fold-transpose-matmul, fuse-activation, and the fused ops'
torch lowering.

Per pass: golden IR before -> after, numeric equivalence with eager PyTorch on small models that
write the decomposed forms by hand, and negative tests that say (via ``explain``) why a rule
does not fire where it would be unsound (helpers from tests/test_fusion_passes.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from graphopt.passes.fold_transpose_matmul import MatMulTransposeB
from graphopt.passes.fuse_activation import ActivationEpilogue, ResidualEpilogue
from graphopt.passes.fuse_attention import (
    AttentionCausalMask,
    AttentionTrivialMask,
    DecomposedAttention,
)
from test_fusion_passes import golden, optimized, trace_and_check, why_not
from torch import nn

import graphopt

# ------------------------------------------------------------------------- fuse-attention
ATTENTION = """graph main(%q: f32[1, 2, 4, 8], %k: f32[1, 2, 4, 8], %v: f32[1, 2, 4, 8], %m: f32[1, 1, 1, 4]) {
  const %eight: f32[] = 8.0
  %kt: f32[1, 2, 8, 4] = permute(%k) {perm=[0, 1, 3, 2]}
  %s: f32[1, 2, 4, 4] = matmul(%q, %kt)
  %d: f32[1, 2, 4, 4] = div(%s, %eight)
  %a: f32[1, 2, 4, 4] = add(%d, %m)
  %p: f32[1, 2, 4, 4] = softmax(%a) {axis=-1}
  %o: f32[1, 2, 4, 8] = matmul(%p, %v)
  return %o
}"""


def test_fuse_attention_golden():
    assert optimized(ATTENTION, "fuse-attention,dce") == golden("""
graph main(%q: f32[1, 2, 4, 8], %k: f32[1, 2, 4, 8], %v: f32[1, 2, 4, 8], %m: f32[1, 1, 1, 4]) {
  %attention: f32[1, 2, 4, 8] = attention(%q, %k, %v, %m) {enable_gqa=false, is_causal=false, scale=0.125}
  return %attention
}""")
    args = [torch.randn(1, 2, 4, 8) for _ in range(3)] + [torch.randn(1, 1, 1, 4)]
    fused = graphopt.optimize(graphopt.parse(ATTENTION), "fuse-attention")
    torch.testing.assert_close(
        graphopt.run(fused, *args), graphopt.run(graphopt.parse(ATTENTION), *args)
    )


def test_fuse_attention_negative():
    probs_returned = ATTENTION.replace("  return %o", "  return %o, %p")
    assert "interior value %p (softmax) is also used by the graph output" in why_not(
        probs_returned, DecomposedAttention()
    )
    wrong_axis = ATTENTION.replace("softmax(%a) {axis=-1}", "softmax(%a) {axis=2}")
    assert "softmax over axis 2, not the key axis" in why_not(wrong_axis, DecomposedAttention())
    small_fill = """graph main(%q: f32[1, 4, 8], %k: f32[1, 8, 4], %v: f32[1, 4, 8], %c: bool[1, 4, 4]) {
  const %fill: f32[] = -10000.0
  %s: f32[1, 4, 4] = matmul(%q, %k)
  %w: f32[1, 4, 4] = where(%c, %s, %fill)
  %p: f32[1, 4, 4] = softmax(%w) {axis=-1}
  %o: f32[1, 4, 8] = matmul(%p, %v)
  return %o
}"""
    assert "fill -10000.0 is not -inf or <= -1e+30" in why_not(small_fill, DecomposedAttention())
    causal_but_wide = """graph main(%q: f32[1, 2, 4, 8], %k: f32[1, 2, 6, 8], %v: f32[1, 2, 6, 8]) {
  const %mask: bool[4, 6]
  %o: f32[1, 2, 4, 8] = attention(%q, %k, %v, %mask)
  return %o
}"""
    tril = {"mask": np.tril(np.ones((4, 6), dtype=bool))}
    assert "query length 4 != key length 6" in why_not(causal_but_wide, AttentionCausalMask(), tril)
    padding = """graph main(%q: f32[1, 2, 4, 8], %k: f32[1, 2, 4, 8], %v: f32[1, 2, 4, 8]) {
  const %mask: bool[1, 1, 1, 4] = [[[[true, true, true, false]]]]
  %o: f32[1, 2, 4, 8] = attention(%q, %k, %v, %mask)
  return %o
}"""
    assert "masks positions" in why_not(padding, AttentionTrivialMask())
    assert "is not [..., 4, 4]" in why_not(padding, AttentionCausalMask())


@pytest.mark.parametrize("mask", ["bool", "float_min"])
def test_fuse_attention_causal_constant_mask(mask):
    n = 5
    tril = np.tril(np.ones((n, n), dtype=bool))
    data = tril if mask == "bool" else np.where(tril, 0.0, np.finfo(np.float32).min)
    dtype = "bool" if mask == "bool" else "f32"
    text = f"""graph main(%q: f32[1, 2, {n}, 8], %k: f32[1, 2, {n}, 8], %v: f32[1, 2, {n}, 8]) {{
  const %mask: {dtype}[1, 1, {n}, {n}]
  %o: f32[1, 2, {n}, 8] = attention(%q, %k, %v, %mask)
  return %o
}}"""
    graph = graphopt.parse(text, {"mask": data.reshape(1, 1, n, n)})
    out = graphopt.optimize(graph, "fuse-attention,dce")
    (node,) = out.nodes
    assert node.attrs["is_causal"] and node.inputs[3] is None
    args = [torch.randn(1, 2, n, 8) for _ in range(3)]
    torch.testing.assert_close(graphopt.run(out, *args), graphopt.run(graph, *args))


class HandWrittenAttention(nn.Module):
    """Classic BERT-style self-attention written by hand, plus a masked_fill causal variant."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.heads, self.d = heads, d

    def forward(self, x, mask):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, -1)
        q, k, v = (t.view(b, n, self.heads, -1).permute(0, 2, 1, 3) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d // self.heads)
        probs = torch.softmax(scores + mask, dim=-1)
        ctx = probs @ v
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        s2 = torch.matmul(k, q.transpose(-2, -1)) * 0.25
        ctx2 = s2.masked_fill(causal, float("-inf")).softmax(-1) @ v
        q3 = q * (self.d // self.heads) ** -0.5  # pre-scaled query, no scale on the scores
        ctx3 = torch.softmax(q3 @ v.transpose(-1, -2), dim=-1) @ k
        return ctx, ctx2, ctx3


def test_fuse_attention_numerics_hand_written():
    mask = torch.zeros(2, 1, 1, 6)
    mask[0, ..., -2:] = -1e4
    graph = trace_and_check(
        HandWrittenAttention(), (torch.randn(2, 6, 32), mask), "cleanup,fuse-attention,cleanup"
    )
    hist = graph.op_histogram()
    assert hist["attention"] == 3 and "softmax" not in hist and "matmul" not in hist
    causal = [n for n in graph.nodes if n.op == "attention" and n.attrs["is_causal"]]
    assert len(causal) == 1 and causal[0].inputs[3] is None


# ------------------------------------------------------------------- fold-transpose-matmul
def test_fold_transpose_matmul_golden():
    text = """graph main(%a: f32[2, 8, 4], %b: f32[2, 5, 4], %x: f32[3, 4], %w: f32[6, 4]) {
  const %half: f32[] = 0.5
  %bt: f32[2, 4, 5] = permute(%b) {perm=[0, 2, 1]}
  %m: f32[2, 8, 5] = matmul(%a, %bt)
  %s: f32[2, 8, 5] = mul(%m, %half)
  %wt: f32[4, 6] = permute(%w) {perm=[1, 0]}
  %l: f32[3, 6] = matmul(%x, %wt)
  return %s, %l
}"""
    assert optimized(text, "fold-transpose-matmul,dce") == golden("""
graph main(%a: f32[2, 8, 4], %b: f32[2, 5, 4], %x: f32[3, 4], %w: f32[6, 4]) {
  %fused_matmul_1: f32[2, 8, 5] = fused_matmul(%a, %b, None, None) {activation="none", activation_params=[], alpha=0.5, trans_a=false, trans_b=true}
  %linear: f32[3, 6] = linear(%x, %w, None)
  return %fused_matmul_1, %linear
}""")
    graph = graphopt.parse(text)
    args = [torch.randn(2, 8, 4), torch.randn(2, 5, 4), torch.randn(3, 4), torch.randn(6, 4)]
    out = graphopt.optimize(graph, "fold-transpose-matmul")
    for got, want in zip(graphopt.run(out, *args), graphopt.run(graph, *args)):
        torch.testing.assert_close(got, want)


def test_fold_transpose_matmul_negative_not_a_last_dims_swap():
    text = """graph main(%a: f32[2, 3, 8, 4], %b: f32[3, 2, 4, 5]) {
  %bt: f32[2, 3, 4, 5] = permute(%b) {perm=[1, 0, 2, 3]}
  %m: f32[2, 3, 8, 5] = matmul(%a, %bt)
  return %m
}"""
    assert "perm=(1, 0, 2, 3) of %bt fails a swap of the last two dims" in why_not(
        text, MatMulTransposeB()
    )


def test_fold_transpose_matmul_numerics_both_transposed_and_linear():
    class M(nn.Module):
        def forward(self, a, b, w):
            return (
                a.transpose(-1, -2) @ b.transpose(-1, -2) * 0.5,
                F.linear(a[0], w.t()),
                F.linear(a[0], w.t(), torch.ones(3)),
            )

    graph = trace_and_check(
        M(),
        (torch.randn(2, 4, 6), torch.randn(2, 5, 4), torch.randn(6, 3)),
        "cleanup,fold-transpose-matmul,dce",
    )
    mm = [n for n in graph.nodes if n.op == "fused_matmul"]
    assert len(mm) == 2 and "permute" not in graph.op_histogram()
    assert mm[0].attrs["trans_a"] and mm[0].attrs["trans_b"] and mm[0].attrs["alpha"] == 0.5


# ------------------------------------------------------------------------ fuse-activation
def test_fuse_activation_golden():
    text = """graph main(%x: f32[1, 8, 4, 4], %w: f32[8, 8, 1, 1], %b: f32[8], %skip: f32[1, 8, 4, 4], %h: f32[2, 8], %lw: f32[16, 8]) {
  %c: f32[1, 8, 4, 4] = conv(%x, %w, %b)
  %s: f32[1, 8, 4, 4] = add(%c, %skip)
  %y: f32[1, 8, 4, 4] = relu(%s)
  %l: f32[2, 16] = linear(%h, %lw, None)
  %g: f32[2, 16] = gelu(%l) {approximate="tanh"}
  %c2: f32[1, 8, 4, 4] = conv(%y, %w, None)
  %r6: f32[1, 8, 4, 4] = clamp(%c2) {max=6.0, min=0.0}
  return %r6, %g
}"""
    assert optimized(text, "fuse-activation,dce") == golden("""
graph main(%x: f32[1, 8, 4, 4], %w: f32[8, 8, 1, 1], %b: f32[8], %skip: f32[1, 8, 4, 4], %h: f32[2, 8], %lw: f32[16, 8]) {
  %fused_conv_1: f32[1, 8, 4, 4] = fused_conv(%x, %w, %b, %skip) {activation="relu", activation_params=[], dilation=[1], groups=1, padding=[0], stride=[1]}
  %fused_linear: f32[2, 16] = fused_linear(%h, %lw, None, None) {activation="gelu_tanh", activation_params=[]}
  %fused_conv: f32[1, 8, 4, 4] = fused_conv(%fused_conv_1, %w, None, None) {activation="relu6", activation_params=[], dilation=[1], groups=1, padding=[0], stride=[1]}
  return %fused_conv, %fused_linear
}""")


def test_fuse_activation_negative():
    shared = """graph main(%x: f32[2, 8], %w: f32[4, 8]) {
  %l: f32[2, 4] = linear(%x, %w, None)
  %r: f32[2, 4] = relu(%l)
  return %r, %l
}"""
    assert "interior value %l (linear) is also used by the graph output" in why_not(
        shared, ActivationEpilogue("linear")
    )
    bias = """graph main(%x: f32[2, 8], %w: f32[4, 8], %b: f32[1, 4]) {
  %l: f32[2, 4] = linear(%x, %w, None)
  %r: f32[2, 4] = add(%l, %b)
  return %r
}"""
    assert "is not a residual of the result type" in why_not(bias, ResidualEpilogue("linear"))
    after_activation = """graph main(%x: f32[2, 8], %w: f32[4, 8], %s: f32[2, 4]) {
  %l: f32[2, 4] = fused_linear(%x, %w, None, None) {activation="relu"}
  %r: f32[2, 4] = add(%l, %s)
  return %r
}"""  # relu(l) + s is not relu(l + s)
    assert 'attribute activation: expected "none"' in why_not(
        after_activation, ResidualEpilogue("linear")
    ).replace("'", '"')


class Epilogues(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(6))
        self.lins = nn.ModuleList(nn.Linear(8, 8) for _ in range(5))

    def forward(self, x, t):
        c = self.convs
        x = F.relu(c[0](x))
        x = F.relu6(c[1](x))
        x = F.hardswish(c[2](x)) + x  # activation, then a residual that is not fused
        x = F.relu(c[3](x) + x)  # ResNet
        x = F.leaky_relu(c[4](x), 0.1)
        x = torch.clamp(c[5](x), -1.0, 1.0)
        l = self.lins
        t = F.gelu(l[0](t))
        t = F.silu(l[1](t)) + t  # silu, then a fused residual of the next add? no: not a linear
        t = torch.sigmoid(l[2](t))
        t = torch.tanh(l[3](t) + t)
        t = F.hardsigmoid(l[4](t))
        return x, t


def test_fuse_activation_numerics_every_activation():
    graph = trace_and_check(
        Epilogues(), (torch.randn(2, 8, 6, 6), torch.randn(3, 8)), "cleanup,fuse-activation,dce"
    )
    acts = sorted(n.attrs["activation"] for n in graph.nodes if n.op.startswith("fused_"))
    assert acts == sorted(
        [
            "relu",
            "relu6",
            "hardswish",
            "relu",
            "leaky_relu",
            "clamp",
            "gelu",
            "silu",
            "sigmoid",
            "tanh",
            "hardsigmoid",
        ]
    )
    residuals = [n for n in graph.nodes if n.op.startswith("fused_") and n.inputs[3] is not None]
    assert len(residuals) == 2
    assert graph.op_histogram()["add"] == 2  # after hardswish and after silu


def test_fused_ops_lower_to_torch():
    graph = graphopt.optimize(
        graphopt.trace(Epilogues().eval(), (torch.randn(2, 8, 6, 6), torch.randn(3, 8))), "default"
    )
    module = graphopt.to_torch(graph)
    args = (torch.randn(2, 8, 6, 6), torch.randn(3, 8))
    with torch.no_grad():
        for got, want in zip(module(*args), graphopt.run(graph, *args)):
            torch.testing.assert_close(got, want)
