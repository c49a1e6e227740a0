"""Quantized models on the native runtime: dynamic int8 and weight-only graphs compiled for
native equal the reference interpreter on the same quantized graph, and stay close to fp32.

* BERT (2 layers, zoo): every linear is a ``qlinear_dynamic`` (or ``linear_weight_only``);
  native vs ``graphopt.run`` of the quantized graph at 1e-5 (scaled by the output's magnitude:
  only the float rounding of the epilogues and of the attention / layer norm kernels differs;
  the integer products are exact).
* MiniLM (real weights): the same check on the real tokens of a padded sentence, and the
  mean-pooled sentence embeddings of the native int8 encoder vs fp32 eager (cosine) on varied
  sentences. Padding positions are only compared loosely: there the fp32 graph already
  differs between native and the interpreter by ~1e-4 (float rounding of the masked
  attention rows), and the dynamic quantizer can move such a perturbed value to the next u8
  code, which later layers amplify (differences up to ~1% of the output's range).
"""

from __future__ import annotations

import pytest
import torch
from native_util import assert_same

import graphopt
from conftest import tensor_leaves


def _native_matches_reference(graph, args, dynamic_activations=False, **options):
    """Native == interpreter on the quantized graph.

    With weights alone quantized this holds at float rounding. With activations quantized at
    run time it cannot hold element-wise on a whole model: the fp32 kernels upstream of each
    quantizer (layer norm, softmax: vector reductions in another order, e.g. 16 lanes on
    AVX-512) differ by ulps, which moves a value sitting on a rounding boundary to the next u8
    code, and later layers spread that one-code step. Then most elements must still agree at
    rounding, no element may be off by more than a few codes' worth (1% of the output range),
    and the whole output must point the same way (cosine). A wrong kernel fails all three.
    """
    fn = graphopt.compile(graph, backend="native", threads=2, **options)
    got = tensor_leaves(fn(*args))
    ref = tensor_leaves(graphopt.run(graph, *args))
    for g, r in zip(got, ref, strict=True):
        if not dynamic_activations:
            assert_same(g, r, rtol=1e-5, atol=1e-5)
            continue
        assert g.shape == r.shape and g.dtype == r.dtype
        diff, scale = (g - r).abs(), r.abs().max().item()
        assert (diff <= 1e-5 * scale + 1e-5 * r.abs()).float().mean().item() >= 0.8
        assert diff.max().item() <= 0.01 * scale
        assert _cosine(g, r) >= 0.99999
    return fn, got


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize("mode", ["dynamic", "weight-only int4", "weight-only int8"])
def test_bert_quantized_on_native(traced_bert_small, mode):
    model, args, graph = traced_bert_small
    graph = graphopt.optimize(graph, "default")
    if mode == "dynamic":
        q = graphopt.quantize(graph)
        op, kernel = "qlinear_dynamic", "qlinear"
    else:
        bits = 4 if mode.endswith("int4") else 8
        q = graphopt.quantize(graph, "weight-only", bits=bits, block_size=32)
        op, kernel = "linear_weight_only", "linear_wo"
    assert q.op_histogram()[op] == 13
    fn, got = _native_matches_reference(q, args, dynamic_activations=mode == "dynamic")
    assert sum(s.kernel == kernel for s in fn.plan.steps) == 13
    fp32 = tensor_leaves(graphopt.run(graph, *args))
    assert _cosine(got[0], fp32[0]) > (0.999 if mode != "weight-only int4" else 0.99)


def test_minilm_dynamic_int8_on_native(minilm_int8_budget, minilm_fp32_embeddings):
    from graphopt.models_minilm import EVAL_SENTENCES, embed, encode

    q, _ = minilm_int8_budget  # error_budget=0.005 (as the onnxruntime test), see conftest.py
    assert q.op_histogram()["qlinear_dynamic"] >= 28
    # every node native, the attention-mask expansion (two constant index tensors) included
    fn = graphopt.compile(q, backend="native", threads=2)
    assert fn.plan.fallback_nodes == []
    ids, mask = encode(["Graph compilers rewrite networks."])
    got, ref = fn(ids, mask), graphopt.run(q, ids, mask)
    real = mask[0].bool()
    assert_same(got[0][real], ref[0][real], rtol=1e-5, atol=1e-5)
    assert (got - ref).abs().max() <= 0.02 * ref.abs().max()
    # 12 of the 60 sentences (all 60 on onnxruntime: tests/test_quant_dynamic.py)
    sentences = list(EVAL_SENTENCES)[::5]
    got = embed(sentences, lambda ids, mask: fn(ids, mask))
    cos = (minilm_fp32_embeddings[::5] * got).sum(-1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97, (cos.mean(), cos.min())
