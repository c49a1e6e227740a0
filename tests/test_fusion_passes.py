"""Fusion passes: fold-batchnorm, fuse-matmul-add, fuse-layernorm, fuse-gelu (and the helpers
the other fusion test files share).

Per pass: golden IR before -> after, numeric equivalence with eager PyTorch on small models that
write the decomposed forms by hand, and negative tests that say (via ``explain``) why a rule
does not fire where it would be unsound. fuse-attention, fold-transpose-matmul and
fuse-activation: tests/test_fusion_attention_activation.py; full-size architectures:
tests/test_fusion_models.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from graphopt.passes.fold_batchnorm import ConvBatchNorm, LinearBatchNorm, PadIntoConv
from graphopt.passes.fuse_gelu import GeluErf, GeluTanh
from graphopt.passes.fuse_layernorm import LayerNorm, LayerNormShift, RMSNorm
from graphopt.passes.fuse_matmul_add import LinearAddBias, LinearThroughReshape, MatMulToLinear
from torch import nn

import graphopt
from graphopt.rewrite import explain
from graphopt.transform import PIPELINES


def optimized(text: str, pipeline: str, constants=None) -> str:
    return str(graphopt.optimize(graphopt.parse(text, constants), pipeline))


def golden(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def why_not(text: str, rule, constants=None) -> str:
    """The reason the rule does not fire at its best candidate (it must not fire anywhere)."""
    found = explain(graphopt.parse(text, constants), rule)
    assert not any(e.fired for e in found), [str(e) for e in found]
    return found[0].reason


def trace_and_check(model: nn.Module, args, pipeline: str, rtol=1e-4, atol=1e-5):
    """Trace, optimize (verify runs after every pass under pytest), compare with eager."""
    model.eval()
    graph = graphopt.optimize(graphopt.trace(model, args), pipeline)
    with torch.no_grad():
        expected = model(*args)
    actual = graphopt.run(graph, *args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = actual if isinstance(actual, tuple) else (actual,)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)
    return graph


def test_fusions_pipeline_order():
    assert PIPELINES["fusions"].replace("cleanup,", "").split(",") == [
        "fold-batchnorm",
        "fuse-matmul-add",
        "fuse-layernorm",
        "fuse-gelu",
        "fuse-attention",
        "fold-transpose-matmul",
        "fuse-activation",
    ]
    assert PIPELINES["default"] == "cleanup,fusions,cleanup"


# ------------------------------------------------------------------------ fold-batchnorm
CONV_BN = """graph main(%x: f32[1, 2, 4, 4]) {
  const %w: f32[2, 2, 1, 1] = [[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]]
  const %b: f32[2] = [0.0, 1.0]
  const %mean: f32[2] = [1.0, 0.0]
  const %var: f32[2] = [3.0, 3.0]
  const %gamma: f32[2] = [2.0, 4.0]
  const %beta: f32[2] = [0.5, -1.0]
  %p: f32[1, 2, 6, 6] = pad(%x) {pads=[1, 1, 1, 1]}
  %c: f32[1, 2, 6, 6] = conv(%p, %w, %b)
  %y: f32[1, 2, 6, 6] = batch_norm(%c, %mean, %var, %gamma, %beta) {eps=1.0}
  return %y
}"""


def test_fold_batchnorm_golden_conv_and_pad():
    # scale = gamma / sqrt(var + eps) = [1, 2]; bias = (b - mean) * scale + beta = [-0.5, 1]
    assert optimized(CONV_BN, "fold-batchnorm,dce") == golden("""
graph main(%x: f32[1, 2, 4, 4]) {
  const %w_bn: f32[2, 2, 1, 1] = [[[[1.0]], [[2.0]]], [[[6.0]], [[8.0]]]]
  const %w_bn_bias: f32[2] = [-0.5, 1.0]
  %conv_1: f32[1, 2, 6, 6] = conv(%x, %w_bn, %w_bn_bias) {dilation=[1], groups=1, padding=[1, 1], stride=[1]}
  return %conv_1
}""")
    graph = graphopt.parse(CONV_BN)
    x = torch.randn(1, 2, 4, 4)
    out = graphopt.run(graphopt.optimize(graph, "fold-batchnorm"), x)
    torch.testing.assert_close(out, graphopt.run(graph, x))


def test_fold_batchnorm_golden_linear_without_affine():
    text = """graph main(%x: f32[3, 2]) {
  const %w: f32[2, 2] = [[1.0, 2.0], [3.0, 4.0]]
  const %mean: f32[2] = [1.0, 0.0]
  const %var: f32[2] = [3.0, 3.0]
  %l: f32[3, 2] = linear(%x, %w, None)
  %y: f32[3, 2] = batch_norm(%l, %mean, %var, None, None) {eps=1.0}
  return %y
}"""
    assert optimized(text, "fold-batchnorm,dce") == golden("""
graph main(%x: f32[3, 2]) {
  const %w_bn: f32[2, 2] = [[0.5, 1.0], [1.5, 2.0]]
  const %w_bn_bias: f32[2] = [-0.5, 0.0]
  %linear: f32[3, 2] = linear(%x, %w_bn, %w_bn_bias)
  return %linear
}""")


def test_fold_batchnorm_negative_shared_conv_output_and_runtime_statistics():
    shared = CONV_BN.replace("  return %y", "  return %y, %c")
    assert "also used by the graph output" in why_not(shared, ConvBatchNorm())
    runtime = """graph main(%x: f32[1, 2, 4, 4], %mean: f32[2]) {
  const %w: f32[2, 2, 1, 1] = [[[[1.0]], [[2.0]]], [[[3.0]], [[4.0]]]]
  const %var: f32[2] = [3.0, 3.0]
  %c: f32[1, 2, 4, 4] = conv(%x, %w, None)
  %y: f32[1, 2, 4, 4] = batch_norm(%c, %mean, %var, None, None)
  return %y
}"""
    assert "'mean' must be a constant, found %mean (graph input" in why_not(
        runtime, ConvBatchNorm()
    )


def test_fold_batchnorm_negative_rank3_linear_and_asymmetric_pads():
    text = """graph main(%x: f32[2, 3, 4]) {
  const %w: f32[4, 4]
  const %s: f32[3]
  %l: f32[2, 3, 4] = linear(%x, %w, None)
  %y: f32[2, 3, 4] = batch_norm(%l, %s, %s, None, None)
  return %y
}"""
    consts = {"w": np.eye(4, dtype=np.float32), "s": np.ones(3, np.float32)}
    assert "not the feature axis" in why_not(text, LinearBatchNorm(), consts)
    pads = """graph main(%x: f32[1, 2, 4, 4], %w: f32[2, 2, 2, 2]) {
  %p: f32[1, 2, 5, 5] = pad(%x) {pads=[0, 1, 0, 1]}
  %c: f32[1, 2, 4, 4] = conv(%p, %w, None) {stride=[1]}
  return %c
}"""
    assert "not the same on both sides" in why_not(pads, PadIntoConv())
    reflect = pads.replace("{pads=[0, 1, 0, 1]}", '{mode="reflect", pads=[0, 1, 0, 1]}')
    assert "attribute mode" in why_not(reflect, PadIntoConv())


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.lin = nn.Linear(8, 6)
        self.bn1d = nn.BatchNorm1d(6)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(F.pad(x, (2, 2, 2, 2)))))
        return self.bn1d(self.lin(y.mean((2, 3))))


def test_fold_batchnorm_numerics_conv_and_linear():
    from graphopt.zoo import reinit_cnn

    model = reinit_cnn(ConvBN(), torch.randn(8, 3, 12, 12))
    graph = trace_and_check(model, (torch.randn(2, 3, 12, 12),), "cleanup,fold-batchnorm,dce")
    assert "batch_norm" not in graph.op_histogram() and "pad" not in graph.op_histogram()


# ------------------------------------------------------------------------ fuse-matmul-add
CONV1D = """graph main(%h: f32[1, 4, 3]) {
  const %w: f32[3, 2] = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
  const %b: f32[2] = [0.5, -0.5]
  %x: f32[4, 3] = reshape(%h) {shape=[-1, 3]}
  %m: f32[4, 2] = matmul(%x, %w)
  %a: f32[4, 2] = add(%m, %b)
  %y: f32[1, 4, 2] = reshape(%a) {shape=[1, 4, 2]}
  return %y
}"""


def test_fuse_matmul_add_golden_gpt2_conv1d():
    out = graphopt.optimize(graphopt.parse(CONV1D), "fuse-matmul-add,dce", report=True)
    assert str(out[0]) == golden("""
graph main(%h: f32[1, 4, 3]) {
  const %b: f32[2] = [0.5, -0.5]
  const %w_t: f32[2, 3] = [[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]]
  %linear: f32[1, 4, 2] = linear(%h, %w_t, %b)
  return %linear
}""")
    assert out[1].rewrites() == {
        "matmul-to-linear": 1,
        "linear-add-bias": 1,
        "linear-through-reshape": 1,
        "dead-constant": 1,
    }
    h = torch.randn(1, 4, 3)
    torch.testing.assert_close(graphopt.run(out[0], h), graphopt.run(graphopt.parse(CONV1D), h))


def test_fuse_matmul_add_negative_bias_runtime_weight_and_broadcast():
    per_row = """graph main(%x: f32[4, 3], %w: f32[2, 3]) {
  const %b: f32[4, 1] = [[1.0], [2.0], [3.0], [4.0]]
  %l: f32[4, 2] = linear(%x, %w, None)
  %a: f32[4, 2] = add(%l, %b)
  return %a
}"""  # one value per row is not a bias
    assert "does not run along the last dim (2)" in why_not(per_row, LinearAddBias())
    runtime = """graph main(%x: f32[4, 3], %w: f32[3, 2]) {
  %m: f32[4, 2] = matmul(%x, %w)
  return %m
}"""
    assert "'w' must be a constant, found %w (graph input" in why_not(runtime, MatMulToLinear())
    batched = """graph main(%x: f32[2, 4, 3]) {
  const %w: f32[2, 3, 2]
  %m: f32[2, 4, 2] = matmul(%x, %w)
  return %m
}"""
    reason = why_not(batched, MatMulToLinear(), {"w": np.ones((2, 3, 2), np.float32)})
    assert "fails a 2-D float constant" in reason


def test_fuse_matmul_add_negative_shared_weight_and_regrouped_rows():
    shared = """graph main(%x: f32[4, 3]) {
  const %w: f32[3, 2] = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
  %m: f32[4, 2] = matmul(%x, %w)
  %n: f32[3, 2] = mul(%w, %w)
  return %m, %n
}"""
    assert "weight %w has 2 users" in why_not(shared, MatMulToLinear())
    regrouped = """graph main(%x: f32[2, 4, 3], %w: f32[6, 3]) {
  %f: f32[8, 3] = reshape(%x) {shape=[8, 3]}
  %l: f32[8, 6] = linear(%f, %w, None)
  %y: f32[4, 12] = reshape(%l) {shape=[4, 12]}
  return %y
}"""  # rows of 6 become rows of 12: not a per-row view
    assert "does not regroup the 8 rows" in why_not(regrouped, LinearThroughReshape())


def test_fuse_matmul_add_numerics_hand_written_conv1d():
    class Conv1D(nn.Module):  # GPT-2's Conv1D: addmm on the flattened rows
        def __init__(self, nx, nf):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
            self.bias = nn.Parameter(torch.randn(nf))

        def forward(self, x):
            y = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
            return y.view(x.size()[:-1] + (self.weight.size(1),)) @ torch.ones(5, 3) + 1.0

    graph = trace_and_check(Conv1D(6, 5), (torch.randn(2, 7, 6),), "cleanup,fuse-matmul-add,dce")
    assert graph.op_histogram() == {"linear": 2}


# ------------------------------------------------------------------------ fuse-layernorm
LN_TEXT = """graph main(%x: f32[2, 8], %g: f32[8], %b: f32[8]) {
  const %two: f32[] = 2.0
  const %eps: f32[] = 1e-05
  %m: f32[2, 1] = mean(%x) {axes=[-1], keepdim=true}
  %d: f32[2, 8] = sub(%x, %m)
  %sq: f32[2, 8] = pow(%d, %two)
  %v: f32[2, 1] = mean(%sq) {axes=[-1], keepdim=true}
  %ve: f32[2, 1] = add(%v, %eps)
  %s: f32[2, 1] = sqrt(%ve)
  %n: f32[2, 8] = div(%d, %s)
  %ng: f32[2, 8] = mul(%n, %g)
  %y: f32[2, 8] = add(%ng, %b)
  return %y
}"""


def test_fuse_layernorm_golden():
    assert optimized(LN_TEXT, "fuse-layernorm,dce") == golden("""
graph main(%x: f32[2, 8], %g: f32[8], %b: f32[8]) {
  %layer_norm: f32[2, 8] = layer_norm(%x, %g, %b) {eps=1e-05, normalized_shape=[8]}
  return %layer_norm
}""")


def test_fuse_layernorm_golden_rmsnorm():
    text = """graph main(%x: f32[2, 3, 8]) {
  const %w: f32[8] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
  const %eps: f32[] = 1e-06
  %sq: f32[2, 3, 8] = mul(%x, %x)
  %ms: f32[2, 3, 1] = mean(%sq) {axes=[2], keepdim=true}
  %a: f32[2, 3, 1] = add(%ms, %eps)
  %r: f32[2, 3, 1] = rsqrt(%a)
  %n: f32[2, 3, 8] = mul(%x, %r)
  %y: f32[2, 3, 8] = mul(%w, %n)
  return %y
}"""
    assert optimized(text, "fuse-layernorm,dce") == golden("""
graph main(%x: f32[2, 3, 8]) {
  const %w: f32[8] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
  %rms_norm_1: f32[2, 3, 8] = rms_norm(%x, %w) {axis=-1, eps=1e-06}
  return %rms_norm_1
}""")


def test_fuse_layernorm_negative():
    # normalizing over a middle axis is not a layer norm (those are trailing dims)
    middle = """graph main(%x: f32[2, 8, 3]) {
  const %eps: f32[] = 1e-05
  %m: f32[2, 1, 3] = mean(%x) {axes=[1], keepdim=true}
  %d: f32[2, 8, 3] = sub(%x, %m)
  %sq: f32[2, 8, 3] = mul(%d, %d)
  %v: f32[2, 1, 3] = mean(%sq) {axes=[1], keepdim=true}
  %ve: f32[2, 1, 3] = add(%v, %eps)
  %r: f32[2, 1, 3] = rsqrt(%ve)
  %n: f32[2, 8, 3] = mul(%d, %r)
  return %n
}"""
    assert "the means reduce axes [1], not trailing dims" in why_not(middle, LayerNorm())
    assert "the means reduce axes [1], not trailing dims" in why_not(middle, RMSNorm())
    # a mean over the last axis but a variance over another: not one normalization
    mixed = LN_TEXT.replace(
        "%v: f32[2, 1] = mean(%sq) {axes=[-1], keepdim=true}",
        "%v: f32[2, 1] = mean(%sq) {axes=[1], keepdim=true}",
    )
    assert "captured attribute 'axes' differs: (-1,) vs (1,)" in why_not(mixed, LayerNorm())
    # the per-sample shift is not a bias over the normalized shape
    shift = """graph main(%x: f32[2, 8], %r: f32[2, 8]) {
  %n: f32[2, 8] = layer_norm(%x, None, None) {normalized_shape=[8]}
  %y: f32[2, 8] = add(%n, %r)
  return %y
}"""
    assert "not per-element over the normalized shape [8]" in why_not(shift, LayerNormShift())


class HandWrittenNorms(nn.Module):
    """Layer norms written by hand, the ways real code writes them."""

    def __init__(self, d=16):
        super().__init__()
        self.g = nn.Parameter(torch.randn(d))
        self.b = nn.Parameter(torch.randn(d))

    def forward(self, x):
        m = x.mean(-1, keepdim=True)
        v = ((x - m) ** 2).mean(-1, keepdim=True)
        a = self.g * (x - m) / torch.sqrt(v + 1e-5) + self.b  # gamma applied first
        x2 = x * 2.0
        v2 = x2.var(-1, keepdim=True, unbiased=False)
        b = (x2 - x2.mean(-1, keepdim=True)) * torch.rsqrt(v2 + 1e-6) * self.g + self.b
        x3 = x + 1.0
        d3 = x3 - x3.mean(dim=-1, keepdim=True)
        c = d3 / (d3 * d3).mean(-1, keepdim=True).add(1e-12).sqrt()
        x4 = x - 1.0
        rms = x4 * torch.rsqrt(x4.pow(2).mean(-1, keepdim=True) + 1e-6) * self.g  # T5/LLaMA
        x5 = x * 3.0
        annotated = self.g * (x5 - x5.mean(-1, keepdim=True)) / (x5.std(-1, keepdim=True) + 1e-6)
        return a, b, c, rms, annotated


def test_fuse_layernorm_numerics_hand_written():
    graph = trace_and_check(
        HandWrittenNorms(), (torch.randn(2, 5, 16),), "cleanup,fuse-layernorm,cleanup"
    )
    hist = graph.op_histogram()
    assert hist["layer_norm"] == 3 and hist["rms_norm"] == 1
    # the annotated-transformer form (unbiased std, eps outside the root) is another function
    assert hist["std"] == 1 and "sqrt" not in hist and "rsqrt" not in hist


# ------------------------------------------------------------------------------ fuse-gelu
GELU_TANH = """graph main(%x: f32[4, 8]) {
  const %half: f32[] = 0.5
  const %three: f32[] = 3.0
  const %kappa: f32[] = 0.044715
  const %beta: f32[] = 0.7978846
  const %one: f32[] = 1.0
  %h: f32[4, 8] = mul(%x, %half)
  %c: f32[4, 8] = pow(%x, %three)
  %k: f32[4, 8] = mul(%c, %kappa)
  %i: f32[4, 8] = add(%x, %k)
  %s: f32[4, 8] = mul(%i, %beta)
  %t: f32[4, 8] = tanh(%s)
  %o: f32[4, 8] = add(%t, %one)
  %g: f32[4, 8] = mul(%h, %o)
  return %g
}"""


def test_fuse_gelu_golden_gpt2_gelu_new():
    assert optimized(GELU_TANH, "fuse-gelu,dce") == golden("""
graph main(%x: f32[4, 8]) {
  %gelu: f32[4, 8] = gelu(%x) {approximate="tanh"}
  return %gelu
}""")


def test_fuse_gelu_negative_wrong_constant_and_quick_gelu():
    wrong = GELU_TANH.replace("0.044715", "0.0447")
    assert "fails a scalar ~= 0.044715" in why_not(wrong, GeluTanh())
    quick = """graph main(%x: f32[4, 8]) {
  const %c: f32[] = 1.702
  %s: f32[4, 8] = mul(%x, %c)
  %g: f32[4, 8] = sigmoid(%s)
  %y: f32[4, 8] = mul(%x, %g)
  return %y
}"""  # x * sigmoid(1.702 x) approximates GELU; it is not GELU
    assert graphopt.optimize(graphopt.parse(quick), "fuse-gelu").op_histogram()["sigmoid"] == 1
    assert not any(e.fired for e in explain(graphopt.parse(quick), GeluErf()))


class HandWrittenGelus(nn.Module):
    def forward(self, x):
        a = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
        y = x + 1.0
        b = y * 0.5 * (1.0 + torch.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y * y * y)))
        z = x - 1.0
        c = z * (0.5 * (1.0 + torch.erf(z * (1 / math.sqrt(2)))))
        w = x * 2.0
        d = (w * (1 + torch.tanh(math.sqrt(2 / math.pi) * (w + 0.044715 * torch.pow(w, 3))))) * 0.5
        return a, b, c, d


def test_fuse_gelu_numerics_all_associations():
    graph = trace_and_check(HandWrittenGelus(), (torch.randn(3, 10),), "cleanup,fuse-gelu,dce")
    assert graph.op_histogram()["gelu"] == 4
    kinds = sorted(n.attrs["approximate"] for n in graph.nodes if n.op == "gelu")
    assert kinds == ["none", "none", "tanh", "tanh"]
