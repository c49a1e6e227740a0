"""The fusion passes on real architectures: fusion counts, numerics, and the ONNX lowering.

``optimize(graph, "default")`` (verify runs after every pass under pytest) on ResNet-50,
MobileNetV2, BERT-base and GPT-2 at full depth, and on the decomposed ("eager") attention of
transformers' BERT and GPT-2.

Tolerances: BERT / GPT-2 outputs stay within rtol 1e-4 / atol 1e-5 of eager PyTorch. Folding
batch norm into conv weights rounds the weights differently, and through 50 layers the fp32
rounding noise of ResNet-50 reaches ~5e-4 (eager fp32 itself is that far from the float64
model), so the CNNs are checked against the float64 model instead: the optimized graph must be
no further from it than eager fp32 is (x2).
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import Traced, tensor_leaves

import graphopt


def optimize_with_counts(graph: graphopt.Graph) -> tuple[graphopt.Graph, dict[str, int]]:
    out, report = graphopt.optimize(graph, "default", report=True)
    return out, report.rewrites()


def assert_fp32_faithful(traced: Traced, graph: graphopt.Graph, run=None, factor: float = 2.0):
    """``graph`` is at most ``factor`` times as far from the float64 model as eager fp32."""
    model64 = copy.deepcopy(traced.model).double()
    args64 = [a.double() if a.is_floating_point() else a for a in traced.args]
    with torch.no_grad():
        reference = tensor_leaves(model64(*args64))
        eager = tensor_leaves(traced.model(*traced.args))
    actual = tensor_leaves((run or (lambda *a: graphopt.run(graph, *a)))(*traced.args))
    assert len(actual) == len(reference)
    for i, (got, want, fp32) in enumerate(zip(actual, reference, eager)):
        got = torch.as_tensor(got)
        noise = (fp32.double() - want).abs().max().item()
        error = (got.double() - want).abs().max().item()
        assert error <= factor * noise + 1e-6, f"output {i}: {error:.3g} vs fp32 noise {noise:.3g}"


# ------------------------------------------------------------------------------------ CNNs
def test_resnet50_conv_bn_folded_and_epilogues_fused(traced_resnet50: Traced):
    graph, counts = optimize_with_counts(traced_resnet50.graph)
    hist = graph.op_histogram()
    assert counts["conv-batchnorm"] == 53 and "batch_norm" not in hist
    # 49 relus: 33 after a conv, 16 after a conv + residual add (the bottleneck outputs)
    assert counts["conv-activation"] == 49 and counts["conv-residual"] == 16
    assert hist == {"fused_conv": 49, "conv": 4, "max_pool": 1, "adaptive_avg_pool": 1}
    assert_fp32_faithful(traced_resnet50, graph)


def test_mobilenetv2_conv_bn_folded_and_relu6_fused(traced_mobilenetv2: Traced):
    graph, counts = optimize_with_counts(traced_mobilenetv2.graph)
    hist = graph.op_histogram()
    assert counts["conv-batchnorm"] == 52 and "batch_norm" not in hist
    relu6 = [n for n in graph.nodes if n.op == "fused_conv" and n.attrs["activation"] == "relu6"]
    assert counts["conv-activation"] == len(relu6) == 35 and "clamp" not in hist
    assert counts["conv-residual"] == 10 and "add" not in hist
    # TF-style padding: 47 all-zero or symmetric pads move into the convs; the 5 asymmetric
    # ones (stride-2 "same" padding) have no symmetric conv form
    assert counts["pad-into-conv"] == 47 and hist["pad"] == 5
    assert_fp32_faithful(traced_mobilenetv2, graph)


# ---------------------------------------------------------------------------- transformers
def test_bert_base_sdpa_kept_norms_and_epilogues(traced_bert_base: Traced, assert_matches_eager):
    graph, counts = optimize_with_counts(traced_bert_base.graph)
    hist = graph.op_histogram()
    assert hist["attention"] == 12 and counts["attention-trivial-mask"] == 12
    assert all(n.inputs[3] is None for n in graph.nodes if n.op == "attention")
    assert hist["layer_norm"] == 25  # already layer_norm in the trace
    gelu = [n for n in graph.nodes if n.op == "fused_linear" and n.attrs["activation"] == "gelu"]
    assert len(gelu) == 12 and "gelu" not in hist
    assert counts["linear-residual"] == 24 and counts["linear-activation"] == 13  # + pooler tanh
    assert_matches_eager(traced_bert_base, graph)


def test_gpt2_base_conv1d_gelu_new_and_causal_mask(traced_gpt2_base: Traced, assert_matches_eager):
    graph, counts = optimize_with_counts(traced_gpt2_base.graph)
    hist = graph.op_histogram()
    assert counts["matmul-to-linear"] == 48 and counts["linear-add-bias"] == 48
    assert counts["linear-through-reshape"] == 48 and "matmul" not in hist
    assert counts["gelu-tanh"] == 12
    assert hist["attention"] == 12 and counts["attention-causal-mask"] == 12
    assert all(n.attrs["is_causal"] for n in graph.nodes if n.op == "attention")
    tanh_gelu = [
        n for n in graph.nodes if n.op == "fused_linear" and n.attrs["activation"] == "gelu_tanh"
    ]
    assert len(tanh_gelu) == 12
    assert len(graph.nodes) < len(traced_gpt2_base.graph.nodes) * 0.4
    assert_matches_eager(traced_gpt2_base, graph)


def test_gpt2_small_gelu_new_fires_per_layer(traced_gpt2_small: Traced, assert_matches_eager):
    graph = graphopt.optimize(traced_gpt2_small.graph, "cleanup,fuse-gelu,dce")
    assert graph.op_histogram()["gelu"] == 2
    assert "tanh" not in graph.op_histogram() and "pow" not in graph.op_histogram()
    assert_matches_eager(traced_gpt2_small, graph)


def _eager_transformer(kind: str, layers: int = 12) -> Traced:
    import transformers as T

    torch.manual_seed(0)
    if kind == "bert":
        config = T.BertConfig(
            num_hidden_layers=layers,
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=128,
            attn_implementation="eager",
        )
        model = T.BertModel(config)
    else:
        config = T.GPT2Config(
            n_layer=layers, n_embd=64, n_head=4, use_cache=False, attn_implementation="eager"
        )
        model = T.GPT2Model(config)
    assert model.config._attn_implementation == "eager"
    ids = torch.randint(0, 1000, (1, 16))
    model.eval()
    return Traced(model, (ids,), graphopt.trace(model, (ids,)))


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_eager_attention_of_transformers_fuses_every_block(kind, assert_matches_eager):
    traced = _eager_transformer(kind)
    assert "attention" not in traced.graph.op_histogram()  # decomposed: matmul/softmax/matmul
    graph, counts = optimize_with_counts(traced.graph)
    hist = graph.op_histogram()
    assert counts["decomposed-attention"] == 12 and hist["attention"] == 12
    assert "softmax" not in hist and "matmul" not in hist
    if kind == "bert":  # all-zero additive padding mask: dropped
        assert counts["attention-trivial-mask"] == 12
    else:  # finfo.min above the diagonal: the causal mask
        assert counts["attention-causal-mask"] == 12
    assert_matches_eager(traced, graph)


def test_llama_rmsnorm_and_grouped_query_attention_fuse(assert_matches_eager):
    """LLaMA writes RMSNorm by hand (x * rsqrt(mean(x^2) + eps) * w) and eager attention with
    k/v heads repeated for query groups (expand + reshape before the matmul)."""
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_cache=False,
        attn_implementation="eager",
    )
    model = T.LlamaModel(config).eval()
    ids = torch.randint(0, 100, (1, 12))
    traced = Traced(model, (ids,), graphopt.trace(model, (ids,)))
    assert "rms_norm" not in traced.graph.op_histogram()
    graph, counts = optimize_with_counts(traced.graph)
    hist = graph.op_histogram()
    assert counts["rmsnorm"] == hist["rms_norm"] == 2 * 3 + 1
    assert "rsqrt" not in hist and "mean" not in hist
    assert counts["decomposed-attention"] == 3 and counts["attention-causal-mask"] == 3
    assert_matches_eager(traced, graph)


# ---------------------------------------------------------------------- ONNX / onnxruntime
@pytest.mark.parametrize("contrib", [True, False], ids=["contrib", "standard"])
def test_onnxruntime_runs_optimized_transformers(
    traced_bert_small, traced_gpt2_small, assert_matches_eager, contrib
):
    for traced in (traced_bert_small, traced_gpt2_small):
        graph = graphopt.optimize(traced.graph, "default")
        fn = graphopt.compile(graph, backend="onnxruntime", contrib_ops=contrib)
        with torch.no_grad():
            expected = tensor_leaves(traced.model(*traced.args))
        for got, want in zip(tensor_leaves(fn(*traced.args)), expected):
            torch.testing.assert_close(torch.as_tensor(got), want, rtol=1e-4, atol=1e-4)


def test_onnxruntime_runs_optimized_cnns(traced_resnet50, traced_mobilenetv2):
    for traced in (traced_resnet50, traced_mobilenetv2):
        graph = graphopt.optimize(traced.graph, "default")
        fn = graphopt.compile(graph, backend="onnxruntime")
        ops = {n.op_type for n in fn.onnx_model.graph.node}
        assert "FusedConv" in ops and "BatchNormalization" not in ops
        assert_fp32_faithful(traced, graph, run=fn)


def test_onnx_export_of_eager_gpt2_is_checked_and_compact():
    traced = _eager_transformer("gpt2", layers=2)
    graph = graphopt.optimize(traced.graph, "default")
    model = graphopt.to_onnx(graph)  # onnx.checker (full_check) runs inside
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MultiHeadAttention") == 2 and "Softmax" not in ops
    fn = graphopt.compile(graph, backend="onnxruntime")
    with torch.no_grad():
        expected = traced.model(*traced.args)[0]
    torch.testing.assert_close(torch.as_tensor(fn(*traced.args)[0]), expected, rtol=1e-4, atol=1e-4)
