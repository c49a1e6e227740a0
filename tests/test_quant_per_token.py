"""Per-token dynamic int8 (``qlinear_dynamic{per_token}``): golden IR, the reference's rule, the
onnxruntime and native lowerings against it, the CLI flag, and real MiniLM accuracy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from test_cli import MLP, assert_one_line_error, run_cli
from test_quant_dynamic import GOLDEN_AFTER, _golden_graph, _text

import graphopt
from graphopt.errors import QuantizationError
from graphopt.ops.quant import qlinear_dynamic


def test_pass_golden():
    out = graphopt.optimize(_golden_graph(), "quantize-dynamic{per_token=true}", verify=True)
    assert _text(out) == GOLDEN_AFTER.replace("per_token=false", "per_token=true")


def test_reference_is_the_per_tensor_rule_row_by_row():
    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.standard_normal((3, 5, 16)) * np.logspace(-1, 1, 5)[:, None])
                         .astype(np.float32))
    w = torch.from_numpy(rng.integers(-127, 128, (6, 16)).astype(np.int8))
    scale = torch.full((6,), 0.01)
    bias = torch.randn(6)
    got = qlinear_dynamic(x, w, scale, bias, per_token=True)
    rows = [qlinear_dynamic(x[i, j], w, scale, bias) for i in range(3) for j in range(5)]
    assert torch.equal(got.reshape(15, 6), torch.stack(rows))
    # and per tensor differs: the small rows lose their resolution there
    assert not torch.equal(got, qlinear_dynamic(x, w, scale, bias))


class _Block(torch.nn.Module):
    """A transformer-style block with outlier tokens: linear + GELU, linear + residual."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


@pytest.fixture(scope="module")
def block():
    x = torch.randn(2, 9, 32)
    x[0, 3] *= 40.0  # one outlier token
    model = _Block().eval()
    graph = graphopt.optimize(graphopt.trace(model, (x,)), "default")
    return model, x, graph


def test_lowerings_match_the_reference(block):
    model, x, graph = block
    q = graphopt.quantize(graph, per_token=True)
    assert q.op_histogram()["qlinear_dynamic"] == 2
    ref = graphopt.run(q, x)
    native = graphopt.compile(q, backend="native")
    torch.testing.assert_close(native(x), ref, rtol=1e-5, atol=1e-5)
    for contrib in (True, False):
        ort = graphopt.compile(q, backend="onnxruntime", contrib_ops=contrib)
        torch.testing.assert_close(torch.as_tensor(ort(x)), ref, rtol=1e-5, atol=1e-5)
    model_proto = graphopt.to_onnx(q)
    ops = {n.op_type for n in model_proto.graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeMatMul" not in ops
    onnx.checker.check_model(model_proto)
    # the outlier token no longer coarsens the others: much closer to fp32 than per tensor
    with torch.no_grad():
        fp32 = model(x)
    per_tensor = graphopt.run(graphopt.quantize(graph), x)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 3] = False
    err_token = (ref - fp32)[mask].abs().max()
    err_tensor = (per_tensor - fp32)[mask].abs().max()
    assert err_token < 0.25 * err_tensor, (err_token, err_tensor)


def test_error_budget_and_bad_options(block):
    _, x, graph = block
    q, rep = graphopt.quantize(graph, per_token=True, calibration=[(x,)], error_budget=1e-3,
                               report=True)
    assert rep.mode == "dynamic per-token" and rep.error <= 1e-3, str(rep)
    with pytest.raises(QuantizationError, match="per_token applies to mode='dynamic'"):
        graphopt.quantize(graph, "fp16", per_token=True)


def test_cli_flag(capsys, tmp_path):
    out = tmp_path / "m.onnx"
    code, stdout, _ = run_cli(capsys, "quantize", MLP, "-o", str(out), "--per-token")
    assert code == 0 and "dynamic per-token" in stdout, stdout
    assert "MatMulInteger" in {n.op_type for n in onnx.load(str(out)).graph.node}
    code, _, err = run_cli(capsys, "quantize", MLP, "-o", str(out), "-q", "--mode", "fp16",
                           "--per-token")
    assert_one_line_error(code, err, "--per-token applies to --mode dynamic or auto")


def test_minilm_per_token_int8_all_layers(minilm_optimized, minilm_fp32_embeddings):
    """Every linear int8, no error budget: per token meets what per tensor needs a budget for
    (per tensor, all layers: mean 0.993, min 0.957 on these sentences)."""
    from graphopt.models_minilm import EVAL_SENTENCES, embed

    torch.set_num_threads(2)
    q = graphopt.quantize(minilm_optimized.graph, per_token=True)
    assert q.op_histogram()["qlinear_dynamic"] == 36
    sentences = list(EVAL_SENTENCES)
    compiled = graphopt.compile(q, backend="onnxruntime")
    got = embed(sentences, lambda ids, mask: torch.as_tensor(compiled(ids, mask)))
    cos = (minilm_fp32_embeddings * got).sum(-1)
    assert cos.mean() >= 0.998 and cos.min() >= 0.985, (cos.mean(), cos.min())
    native = graphopt.compile(q, backend="native", threads=2)
    got_native = embed(sentences[::5], lambda ids, mask: native(ids, mask))
    cos_native = (minilm_fp32_embeddings[::5] * got_native).sum(-1)
    assert cos_native.mean() >= 0.998 and cos_native.min() >= 0.985, cos_native
