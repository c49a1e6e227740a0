"""quantize-dynamic / graphopt.quantize: golden IR, negative cases, fallback, real MiniLM."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import graphopt
from graphopt.errors import QuantizationError

GOLDEN_BEFORE = """graph main(%x: f32[2, 8], %v: f32[8, 4]) {
  const %w: f32[4, 8]
  const %b: f32[4]
  %y: f32[2, 4] = linear(%x, %w, %b)
  %z: f32[2, 4] = matmul(%x, %v)
  %o: f32[2, 4] = add(%y, %z)
  return %o
}"""

GOLDEN_AFTER = """graph main(%x: f32[2, 8], %v: f32[8, 4]) {
  const %b: f32[4]
  const %w_q: i8[4, 8]
  const %w_scale: f32[4]
  %y_q: f32[2, 4] = qlinear_dynamic(%x, %w_q, %w_scale, %b, None) {activation="none", activation_params=[], per_token=false}
  %z: f32[2, 4] = matmul(%x, %v)
  %o: f32[2, 4] = add(%y_q, %z)
  return %o
}"""


def _golden_graph():
    rng = np.random.default_rng(0)
    consts = {"w": rng.standard_normal((4, 8)).astype(np.float32),
              "b": rng.standard_normal(4).astype(np.float32)}
    return graphopt.parse(GOLDEN_BEFORE, consts)


def _text(graph):  # constants without their data, as in the golden text
    return "\n".join(
        line.split(" = [")[0] if line.lstrip().startswith("const") else line
        for line in str(graph).splitlines()
    )


def test_pass_golden_and_negative():
    graph = _golden_graph()
    out, report = graphopt.optimize(graph, "quantize-dynamic", report=True, verify=True)
    # the matmul by a graph input (%v) is not a constant weight: it must stay float
    assert _text(out) == GOLDEN_AFTER
    x, v = torch.randn(2, 8), torch.randn(8, 4)
    torch.testing.assert_close(graphopt.run(out, x, v), graphopt.run(graph, x, v),
                               atol=0.05, rtol=0.05)
    # nothing left to quantize: the pass reports no change
    again = graphopt.optimize(out, "quantize-dynamic,quantize-dynamic{exclude=('*',)}")
    assert str(again) == str(out)


def test_pass_exclude_and_matmul_constant():
    rng = np.random.default_rng(1)
    graph = graphopt.parse("""graph main(%x: f32[3, 8]) {
  const %w: f32[4, 8]
  const %m: f32[8, 5]
  %y: f32[3, 4] = linear(%x, %w, None)
  %z: f32[3, 5] = matmul(%x, %m)
  return %y, %z
}""", {"w": rng.standard_normal((4, 8)).astype(np.float32),
       "m": rng.standard_normal((8, 5)).astype(np.float32)})
    out = graphopt.optimize(graph, "quantize-dynamic{exclude=('w',)}")
    assert out.op_histogram() == {"linear": 1, "qlinear_dynamic": 1}
    x = torch.randn(3, 8)
    ref, got = graphopt.run(graph, x), graphopt.run(out, x)
    torch.testing.assert_close(got[1], ref[1], atol=0.05, rtol=0.05)
    ort = graphopt.compile(out, backend="onnxruntime")(x)
    torch.testing.assert_close(torch.as_tensor(ort[1]), got[1], atol=1e-5, rtol=1e-5)


class _Outlier(torch.nn.Module):
    """fc2's input has one channel ~1000x the rest: per-tensor u8 activations crush it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = (torch.nn.Linear(32, 32) for _ in range(3))
        with torch.no_grad():
            self.fc1.bias[3] = 500.0
            self.fc2.weight[:, 3] = 0.0  # ...and unused, so it only costs resolution

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_error_budget_falls_back_the_sensitive_layer():
    model = _Outlier().eval()
    x = torch.randn(4, 32)
    graph = graphopt.optimize(graphopt.trace(model, (x,)), "default")
    calib = [(torch.randn(4, 32),) for _ in range(3)]
    full, rep_full = graphopt.quantize(graph, calibration=calib, report=True)
    assert len(rep_full.quantized) == 3 and rep_full.error > 1e-3
    for sensitivity in ("local", "end-to-end"):
        q, rep = graphopt.quantize(graph, calibration=calib, error_budget=1e-3,
                                   sensitivity=sensitivity, report=True)
        fc2 = [r for r in rep.layers if r.weight == "fc2.weight"][0]
        assert rep.fallback == [fc2.node], str(rep)
        assert fc2.sensitivity == max(r.sensitivity for r in rep.layers)
        assert rep.error <= 1e-3 and "fell back" in fc2.reason and "float" in str(rep)
    assert graph.op_histogram().get("qlinear_dynamic", 0) == 0  # input graph untouched
    ort = graphopt.compile(q, backend="onnxruntime")(x)
    torch.testing.assert_close(torch.as_tensor(ort), graphopt.run(q, x), atol=1e-4, rtol=1e-4)
    onnx.checker.check_model(graphopt.to_onnx(q))


def test_quantize_rejects_bad_options():
    graph = _golden_graph()
    with pytest.raises(ValueError, match="calibration"):
        graphopt.quantize(graph, error_budget=0.01)
    with pytest.raises(QuantizationError, match="needs calibration data"):
        graphopt.quantize(graph, mode="static")
    with pytest.raises(QuantizationError, match="unknown quantize mode 'int3'"):
        graphopt.quantize(graph, mode="int3")


def test_minilm_dynamic_int8_keeps_sentence_embeddings(minilm_int8_budget,
                                                       minilm_fp32_embeddings):
    from graphopt.models_minilm import EVAL_SENTENCES, embed

    torch.set_num_threads(2)
    q, rep = minilm_int8_budget  # error_budget=0.005, see conftest.py
    assert len(rep.layers) == 36 and len(rep.quantized) >= 28, str(rep)
    assert rep.bytes_after < 0.8 * rep.bytes_before
    compiled = graphopt.compile(q, backend="onnxruntime")
    sentences = list(EVAL_SENTENCES)
    assert len(sentences) >= 50
    ref = minilm_fp32_embeddings
    got = embed(sentences, lambda ids, mask: torch.as_tensor(compiled(ids, mask)))
    cos = (ref * got).sum(-1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97, (cos.mean(), cos.min(), str(rep))


def test_embedding_table_weight_only_int8():
    rng = np.random.default_rng(2)
    graph = graphopt.parse("""graph main(%ids: i64[2, 5]) {
  const %table: f32[50, 16]
  %e: f32[2, 5, 16] = embedding(%table, %ids)
  return %e
}""", {"table": rng.standard_normal((50, 16)).astype(np.float32)})
    out = graphopt.optimize(graph, "quantize-dynamic", verify=True)
    assert out.op_histogram() == {"embedding": 2, "cast": 1, "mul": 1}
    assert out.constant_bytes() < 0.35 * graph.constant_bytes()  # 1 B + 4 B / row
    ids = torch.randint(0, 50, (2, 5))
    ref, got = graphopt.run(graph, ids), graphopt.run(out, ids)
    torch.testing.assert_close(got, ref, atol=float(ref.abs().max()) / 254 + 1e-6, rtol=0)
    ort = graphopt.compile(out, backend="onnxruntime")(ids)
    torch.testing.assert_close(torch.as_tensor(ort), got, atol=1e-6, rtol=0)
    kept = graphopt.optimize(graph, "quantize-dynamic{embeddings=false}")
    assert kept.op_histogram() == {"embedding": 1}


class _DictOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)

    def forward(self, x):
        return {"hidden": self.fc(x), "ids": torch.argmax(x, -1)}


def test_error_is_measured_on_dict_outputs():
    x = torch.randn(3, 16)
    graph = graphopt.trace(_DictOut().eval(), (x,))
    _, rep = graphopt.quantize(graph, calibration=[(x,)], report=True)
    assert rep.error is not None and 0 < rep.error < 1e-2
