"""Quantization ops: reference semantics, ONNX lowering equal to onnxruntime, IR round trip."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import graphopt
from graphopt.ops.quant import dynamic_quantize_linear, qlinear_dynamic
from graphopt.quant import quantize_weight_per_channel


def _ort(graph, *args, **options):
    return graphopt.compile(graph, backend="onnxruntime", **options)(*args)


def test_dynamic_quantize_linear_matches_onnx_formula():
    x = torch.tensor([[-1.0, 0.0, 0.5, 2.0, 1.0 / 3.0]])
    q, scale, zp = dynamic_quantize_linear(x)
    assert scale.item() == pytest.approx(3.0 / 255.0)
    assert zp.item() == 85  # round(1 / (3 / 255)) = round(85.0)
    deq = (q.float() - zp.float()) * scale
    torch.testing.assert_close(deq, x, atol=scale.item() / 2 + 1e-7, rtol=0)
    # an all-positive tensor still contains zero exactly (range is [min(0, lo), max(0, hi)])
    q, scale, zp = dynamic_quantize_linear(torch.tensor([1.0, 4.0]))
    assert zp.item() == 0 and q.tolist() == [64, 255]


def test_qdq_ops_lower_to_onnx_and_match_reference():
    text = """graph main(%x: f32[3, 5]) {
  %q: u8[3, 5], %s: f32[], %zp: u8[] = dynamic_quantize_linear(%x)
  %d: f32[3, 5] = dequantize_linear(%q, %s, %zp)
  %q2: i8[3, 5] = quantize_linear(%d, %s) {dtype="i8"}
  %d2: f32[3, 5] = dequantize_linear(%q2, %s)
  return %d, %d2
}"""
    graph = graphopt.parse(text)
    assert str(graphopt.parse(str(graph))) == str(graph)
    x = torch.randn(3, 5) * 3
    ref = graphopt.run(graph, x)
    got = _ort(graph, x)
    for a, b in zip(ref, got):
        torch.testing.assert_close(torch.as_tensor(b), a, rtol=0, atol=1e-6)
    onnx.checker.check_model(graphopt.to_onnx(graph))


@pytest.mark.parametrize("contrib", [True, False])
@pytest.mark.parametrize(
    "shape, n_out, activation, residual",
    [((1, 1), 1, "none", False), ((2, 7, 33), 17, "gelu", False), ((5, 64), 31, "relu", True),
     ((1, 3, 9), 8, "none", True)],
)
def test_qlinear_dynamic_reference_equals_onnxruntime(shape, n_out, activation, residual, contrib):
    torch.manual_seed(0)
    k = shape[-1]
    w_q, w_scale = quantize_weight_per_channel(np.random.randn(n_out, k).astype(np.float32))
    consts = {"w": w_q, "s": w_scale, "b": np.random.randn(n_out).astype(np.float32)}
    out_shape = list(shape[:-1]) + [n_out]
    ins = f"%x: f32{list(shape)}" + (f", %r: f32{out_shape}" if residual else "")
    text = f"""graph main({ins}) {{
  const %w: i8[{n_out}, {k}]
  const %s: f32[{n_out}]
  const %b: f32[{n_out}]
  %y: f32{out_shape} = qlinear_dynamic(%x, %w, %s, %b, {"%r" if residual else "None"}) {{activation="{activation}"}}
  return %y
}}"""
    graph = graphopt.parse(text, consts)
    args = [torch.randn(*shape) * 4]
    if residual:
        args.append(torch.randn(*out_shape))
    ref = graphopt.run(graph, *args)
    got = torch.as_tensor(_ort(graph, *args, contrib_ops=contrib))
    # the integer GEMM is exact in both; only the final float scaling may round differently
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    model = graphopt.to_onnx(graph, contrib_ops=contrib)
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert ("DynamicQuantizeMatMul" in ops) == contrib
    assert ("MatMulInteger" in ops) == (not contrib)


def test_qlinear_dynamic_non_contiguous_input_and_zero_input():
    w_q, w_scale = quantize_weight_per_channel(np.random.randn(6, 4).astype(np.float32))
    x = torch.randn(4, 3).T  # non-contiguous [3, 4]
    y = qlinear_dynamic(x, torch.from_numpy(w_q), torch.from_numpy(w_scale))
    ref = x @ torch.from_numpy(w_q).float().T * torch.from_numpy(w_scale)
    assert (y - ref).abs().max() < 0.05 * ref.abs().max()
    zero = qlinear_dynamic(torch.zeros(2, 4), torch.from_numpy(w_q), torch.from_numpy(w_scale))
    assert torch.equal(zero, torch.zeros(2, 6))  # scale 0: no NaN


def test_quantize_weight_per_channel_is_symmetric_and_bounded():
    w = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -3.0]], np.float32)
    w_q, scale = quantize_weight_per_channel(w)
    assert w_q.dtype == np.int8 and np.abs(w_q).max() == 127 and w_q.min() >= -127
    np.testing.assert_allclose(w_q * scale[:, None], w, atol=scale.max() / 2)
    assert w_q[1].tolist() == [0, 0, 0] and scale[1] == 1.0
