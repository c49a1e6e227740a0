"""graphopt.quantize(graph, "bf16-compute"): linear_bf16 layers with the int8 accuracy control.

The op is checked on every backend against its reference (bf16-rounded input x bf16 weight,
f32 sums); the mode on a real architecture for what it rewrote, its accuracy against eager and
the budget's fallback.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from native_util import randn

import graphopt
from graphopt.errors import QuantizationError, TypeInferenceError
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph
from graphopt.ir.types import TensorType
from graphopt.quant.half import to_half_bits


def _bf16_graph(m: int, k: int, n: int, *, bias=True, residual=False, act="none"):
    g = Graph("bf16")
    x = g.add_input("x", TensorType((m, k), DType.float32))
    w = randn(n, k) / k ** 0.5
    wv = g.add_constant(to_half_bits(w.numpy(), DType.bfloat16), "w", dtype=DType.bfloat16)
    b = g.add_constant(randn(n).numpy(), "b") if bias else None
    feeds = [randn(m, k, seed=1)]
    r = None
    if residual:
        r = g.add_input("r", TensorType((m, n), DType.float32))
        feeds.append(randn(m, n, seed=2))
    node = g.create_node("linear_bf16", [x, wv, b, r],
                         {"activation": act, "activation_params": ()})
    g.set_outputs(node.outputs)
    return g, feeds, w


@pytest.mark.parametrize("m,k,n,bias,residual,act", [
    (1, 64, 48, True, False, "none"), (37, 70, 50, False, True, "gelu"),
    (64, 96, 80, True, True, "relu"), (130, 200, 33, True, False, "none")])
def test_linear_bf16_on_every_backend(m, k, n, bias, residual, act):
    g, feeds, w = _bf16_graph(m, k, n, bias=bias, residual=residual, act=act)
    want = graphopt.run(g, *feeds)
    # The reference is what it says: rounded operands, f32 sums (not the f32 linear).
    x16 = feeds[0].to(torch.bfloat16).float()
    manual = x16 @ w.to(torch.bfloat16).float().T
    if bias:
        manual = manual + torch.as_tensor(g.constants["b"].data)
    if residual:
        manual = manual + feeds[1]
    manual = {"none": manual, "gelu": torch.nn.functional.gelu(manual),
              "relu": torch.relu(manual)}[act]
    torch.testing.assert_close(want, manual, rtol=1e-5, atol=1e-5)
    for backend in ("native", "onnxruntime"):
        fn = graphopt.compile(g, backend=backend, threads=2)
        torch.testing.assert_close(fn(*feeds), want, rtol=1e-5, atol=1e-5)
    native = graphopt.compile(g, backend="native", fallback="error")
    assert [s.ints[-1] for s in native.plan.steps if s.kernel == "gemm"] == [1]


def test_linear_bf16_refuses_a_float_weight():
    g = Graph("bad")
    x = g.add_input("x", TensorType((2, 8), DType.float32))
    w = g.add_constant(np.ones((4, 8), np.float32), "w")
    with pytest.raises(TypeInferenceError, match="linear_bf16 weight must be bf16"):
        g.create_node("linear_bf16", [x, w, None, None])


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))


def test_mode_on_bert(traced_bert_small):
    model, args, graph = traced_bert_small
    g = graphopt.optimize(graph)
    layers = [n for n in g.nodes if n.op in ("linear", "fused_linear")]
    weight_bytes = sum(n.inputs[1].data.nbytes for n in layers)
    q, rep = graphopt.quantize(g, "bf16-compute", report=True)
    assert q.op_histogram()["linear_bf16"] == len(layers) == len(rep.quantized)
    assert not any(op in q.op_histogram() for op in ("linear", "fused_linear"))
    # bf16 weights: the linears' bytes halve (the embedding tables stay f32).
    assert rep.bytes_before - rep.bytes_after == weight_bytes // 2
    fn = graphopt.compile(q, backend="native", threads=2, fallback="error")
    assert all(s.ints[-1] == 1 for s in fn.plan.steps if s.kernel == "gemm")
    with torch.no_grad():
        want = _first(model(*args))
    got = _first(fn(*args))
    assert float(want.abs().max()) > 1e-2
    cos = torch.nn.functional.cosine_similarity(got.flatten(0, -2), want.flatten(0, -2), -1)
    assert float(cos.mean()) >= 0.999 and float(cos.min()) >= 0.995
    # The reference interpreter computes the same model (rounding flips across layers aside).
    ref = _first(graphopt.run(q, *args))
    cos_ref = torch.nn.functional.cosine_similarity(got.flatten(0, -2), ref.flatten(0, -2), -1)
    assert float(cos_ref.min()) >= 0.9999


def test_budget_keeps_sensitive_layers_float(traced_bert_small):
    _, args, graph = traced_bert_small
    g = graphopt.optimize(graph)
    full, rep_full = graphopt.quantize(g, "bf16-compute", calibration=[args], error_budget=1.0,
                                       report=True)
    assert not rep_full.fallback
    budget = rep_full.error / 4  # a quarter of the all-bf16 error: some layers must stay f32
    q, rep = graphopt.quantize(g, "bf16-compute", calibration=[args], error_budget=budget,
                               report=True)
    assert rep.fallback and rep.quantized and rep.error <= budget
    hist = q.op_histogram()
    assert hist["linear_bf16"] == len(rep.quantized)
    assert hist.get("linear", 0) + hist.get("fused_linear", 0) == len(rep.fallback)
    assert "bf16" in str(rep) and "fell back" in str(rep)


def test_exclude_and_bad_options(traced_bert_small):
    _, _, graph = traced_bert_small
    g = graphopt.optimize(graph)
    q = graphopt.quantize(g, "bf16-compute", exclude=["pooler*"])
    assert any(n.op == "fused_linear" and "pooler" in n.inputs[1].name for n in q.nodes)
    with pytest.raises(QuantizationError, match="per_token applies to mode='dynamic'"):
        graphopt.quantize(g, "bf16-compute", per_token=True)
    with pytest.raises(QuantizationError, match="error_budget"):
        graphopt.quantize(g, "bf16-compute", error_budget=0.01)


def test_artifact_round_trip(tmp_path):
    g, feeds, _ = _bf16_graph(8, 64, 32)
    fn = graphopt.compile(g, backend="native")
    fn.save(tmp_path / "m.npz")
    loaded = graphopt.native.load(tmp_path / "m.npz")
    torch.testing.assert_close(loaded(*feeds), fn(*feeds), rtol=0, atol=0)


def test_onnx_export_keeps_bf16_initializers(tmp_path):
    g, feeds, _ = _bf16_graph(4, 32, 16)
    proto = graphopt.to_onnx(g, str(tmp_path / "m.onnx"))
    kinds = {init.data_type for init in proto.graph.initializer}
    import onnx

    assert onnx.TensorProto.BFLOAT16 in kinds
