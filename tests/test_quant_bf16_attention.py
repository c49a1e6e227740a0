"""attention_bf16: attention's two products in bf16 (the op, the attention-bf16 pass, and
``graphopt.quantize`` choosing it under an error budget on CPUs with AMX)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from native_util import op_graph, randn

import graphopt
from graphopt import _C

AMX = _C.cpu_features()["use_amx"]


def _case(case: str):
    b, h, l_, s_, e, ev = 2, 4, 70, 90, 40, 24
    kv_heads = 2 if case == "gqa" else h
    q, k, v = randn(b, h, l_, e), randn(b, kv_heads, s_, e, seed=1), \
        randn(b, kv_heads, s_, ev, seed=2)
    mask = None
    if case in ("bool_mask", "masked_row"):
        mask = torch.rand(b, 1, l_, s_, generator=torch.Generator().manual_seed(3)) > 0.3
        if case == "masked_row":
            mask[0, 0, 5] = False  # a query row that sees no key: 0, as the kernel gives
    elif case == "float_mask":
        mask = randn(b, 1, l_, s_, seed=4)
    attrs = {"scale": None, "is_causal": case == "causal", "enable_gqa": case == "gqa"}
    return [q, k, v, mask], attrs


@pytest.mark.parametrize("case", ["plain", "bool_mask", "masked_row", "float_mask", "causal",
                                  "gqa"])
def test_reference_is_what_the_kernel_computes(case):
    """The op's reference rounds q, k, v and the probabilities to bf16; on AMX the native
    kernel computes exactly that up to the order of the f32 sums; elsewhere native runs f32
    (closer to fp32 attention than the reference is)."""
    inputs, attrs = _case(case)
    g16, feeds = op_graph("attention_bf16", inputs, attrs)
    g32, _ = op_graph("attention", inputs, attrs)
    want16, want32 = graphopt.run(g16, *feeds), graphopt.run(g32, *feeds)
    scale = float(want32.abs().max())
    rounding = float((want16 - want32).abs().max())
    assert 1e-5 * scale < rounding < 3e-2 * scale  # bf16 happened, and only bf16
    if case == "masked_row":
        assert not want16[0, :, 5].any()
    got = graphopt.compile(g16, backend="native")(*feeds)
    if AMX:
        # The same up to f32 summation order and the exp's last bit, which now and then
        # flips one probability's bf16 rounding (one bf16 step of that term).
        diff = (got - want16).abs()
        assert float((diff <= 2e-6 * scale).float().mean()) > 0.99
        assert float(diff.max()) <= 3e-4 * scale < rounding
    else:
        torch.testing.assert_close(got, want32, rtol=1e-4, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def small_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2,
                     intermediate_size=128, vocab_size=300)
    model = BertModel(cfg).eval()
    mask = torch.ones(1, 24, dtype=torch.long)
    mask[0, 18:] = 0
    args = (torch.randint(0, 300, (1, 24), generator=torch.Generator().manual_seed(1)), mask)
    graph = graphopt.optimize(graphopt.trace(model, args), "default")
    calibration = [(torch.randint(0, 300, (1, 24), generator=torch.Generator().manual_seed(s)),
                    mask) for s in (2, 3)]
    return graph, args, calibration


def _ops(graph) -> Counter:
    return Counter(node.op for node in graph.nodes)


def test_pass_rewrites_every_attention(small_bert):
    graph, args, _ = small_bert
    out = graphopt.optimize(graph, "attention-bf16")
    assert _ops(out)["attention_bf16"] == _ops(graph)["attention"] == 2
    assert _ops(out)["attention"] == 0
    want = graphopt.run(graph, *args).last_hidden_state
    got = graphopt.compile(out, backend="native")(*args).last_hidden_state
    assert not torch.equal(got, want) or not AMX
    cos = torch.nn.functional.cosine_similarity(got[0], want[0], -1)
    assert float(cos.min()) > 0.9999


def test_quantize_chooses_bf16_attention_within_the_budget(small_bert):
    graph, _, calibration = small_bert
    q, rep = graphopt.quantize(graph, calibration=calibration, error_budget=0.01, report=True)
    if not AMX:
        assert rep.attention == "fp32" and _ops(q)["attention"] == 2
        assert any("no AMX" in note for note in rep.notes)
        return
    assert rep.attention == "bf16" and _ops(q)["attention_bf16"] == 2, rep
    assert rep.error <= 0.01
    assert "attention in bf16" in str(rep)


@pytest.mark.skipif(not AMX, reason="the budget is only tried where AMX tiles run bf16")
def test_quantize_keeps_f32_attention_over_the_budget(small_bert):
    graph, _, calibration = small_bert
    q, rep = graphopt.quantize(graph, calibration=calibration, error_budget=1e-9, report=True)
    assert rep.attention == "fp32" and _ops(q)["attention"] == 2
    assert any("over the budget" in note for note in rep.notes), rep.notes


def test_quantize_without_a_budget_leaves_attention_alone(small_bert):
    graph, _, _ = small_bert
    q, rep = graphopt.quantize(graph, report=True)
    assert rep.attention == "fp32" and _ops(q)["attention"] == 2
