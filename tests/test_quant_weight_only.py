"""quantize-weights: block-wise int4 / int8 weight-only linears, reference vs MatMulNBits."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import graphopt


def _mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(96, 64), torch.nn.GELU(), torch.nn.Linear(64, 33))
    x = torch.randn(2, 5, 96)
    return model.eval(), x, graphopt.optimize(graphopt.trace(model.eval(), (x,)), "default")


@pytest.mark.parametrize("bits, block_size, tol", [(4, 32, 0.15), (8, 16, 0.01), (4, 64, 0.15)])
def test_weight_only_matches_onnxruntime_and_eager(bits, block_size, tol):
    model, x, graph = _mlp()
    out = graphopt.optimize(graph, f"quantize-weights{{bits={bits},block_size={block_size}}}",
                            verify=True)
    assert out.op_histogram()["linear_weight_only"] == 2
    assert out.constant_bytes() < graph.constant_bytes() * (0.2 if bits == 4 else 0.35)
    ref = graphopt.run(out, x)
    with torch.no_grad():
        eager = model(x)
    assert (ref - eager).abs().max() < tol * eager.abs().max()
    got = torch.as_tensor(graphopt.compile(out, backend="onnxruntime")(x))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    model_proto = graphopt.to_onnx(out)
    onnx.checker.check_model(model_proto)
    assert "MatMulNBits" in {n.op_type for n in model_proto.graph.node}


def test_matmul_nbits_accuracy_level_option():
    """accuracy_level 4 (onnxruntime's int8-compute MatMulNBits, its fastest on CPU) is an
    option of to_onnx and of the onnxruntime backend; the result stays near level 0's."""
    _, x, graph = _mlp()
    out = graphopt.optimize(graph, "quantize-weights{bits=4,block_size=32}")
    levels = {n.op_type: [a.i for a in n.attribute if a.name == "accuracy_level"]
              for n in graphopt.to_onnx(out, nbits_accuracy_level=4).graph.node}
    assert levels["MatMulNBits"] == [4]
    exact = torch.as_tensor(graphopt.compile(out, backend="onnxruntime")(x))
    fast = torch.as_tensor(graphopt.compile(out, backend="onnxruntime",
                                            nbits_accuracy_level=4)(x))
    assert (fast - exact).abs().max() < 0.05 * exact.abs().max()
    with pytest.raises(graphopt.GraphoptError, match="accuracy_level"):
        graphopt.to_onnx(out, nbits_accuracy_level=7)


def test_block_codes_roundtrip_and_bad_options():
    from graphopt.ops.quant import unpack_blocks
    from graphopt.quant.weight_only import quantize_blocks

    w = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)  # K not a multiple
    codes, scales = quantize_blocks(w, 4, 16)
    assert codes.shape == (3, 3, 8) and scales.shape == (3, 3)
    deq = (unpack_blocks(torch.from_numpy(codes), 4, 40) - 8) * torch.from_numpy(
        scales).repeat_interleave(16, 1)[:, :40]
    assert np.abs(deq.numpy() - w).max() <= scales.max() / 2 + 1e-6
    _, _, graph = _mlp()
    with pytest.raises(Exception, match="block_size"):
        graphopt.optimize(graph, "quantize-weights{block_size=24}")


def test_quantize_api_weight_only_mode():
    _, x, graph = _mlp()
    out, rep = graphopt.quantize(graph, "weight-only", bits=8, block_size=32,
                                 calibration=[(x,)], report=True)
    assert out.op_histogram()["linear_weight_only"] == 2 and len(rep.quantized) == 2
    assert rep.error < 1e-3 and "weight-only int8/32" in str(rep)
    # the error budget and fallback of the other modes apply (tests/test_quant_api.py)
    _, tight = graphopt.quantize(graph, "weight-only", bits=4, calibration=[(x,)],
                                 error_budget=1e-9, report=True)
    assert tight.fallback and tight.error <= 1e-9 and "fell back" in str(tight)
