"""quantize-weights: block-wise int4 / int8 weight-only linears, reference vs MatMulNBits."""

from __future__ import annotations

import os
import subprocess
import sys

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


def _int8_activation_reference(x, codes, scales, bits, block, k):
    """act_bits=8 written out in numpy, independently of the op's torch reference."""
    x = np.asarray(x, np.float64)
    blocks = scales.shape[1]
    if bits == 4:
        codes = np.stack([codes & 15, codes >> 4], -1).reshape(codes.shape[0], blocks, -1)
    w = codes.reshape(codes.shape[0], blocks, block).astype(np.int64) - 2 ** (bits - 1)
    xb = np.zeros(x.shape[:-1] + (blocks * block,))
    xb[..., :k] = x
    xb = xb.reshape(x.shape[:-1] + (blocks, block)).astype(np.float32)
    x_scale = np.abs(xb).max(-1) / np.float32(127)
    q = np.where(x_scale[..., None] > 0,
                 np.clip(np.rint(xb / np.where(x_scale > 0, x_scale, 1)[..., None]), -127, 127),
                 0).astype(np.int64)
    dots = np.einsum("...bk,nbk->...nb", q, w)
    return (dots * (x_scale[..., None, :].astype(np.float64) * scales)).sum(-1)


@pytest.mark.parametrize("bits, block, k, rows", [
    (4, 32, 768, 1), (4, 32, 800, 3), (4, 32, 96, 7), (8, 32, 800, 1), (8, 32, 784, 5),
    (4, 64, 640, 2), (4, 128, 512, 1), (8, 16, 96, 2), (4, 16, 80, 1), (4, 256, 1100, 2),
    (4, 32, 1312, 4), (8, 64, 640, 1)])
def test_int8_activations_match_the_definition(bits, block, k, rows):
    """act_bits=8: the op's reference, native (whichever path this CPU takes; the narrower
    ones in test_weight_only_kernel_paths) and onnxruntime's MatMulNBits accuracy_level 4 all
    compute the documented definition: blocks of 32 with an odd count end in a half chunk,
    blocks of 16 take the portable loop, 5 and 7 rows make partial row groups."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(k, 70)
    x = torch.randn(rows, k) * torch.linspace(0.1, 3, k)
    x[0, :block] = 0  # an all-zero block has scale 0
    graph = graphopt.optimize(graphopt.trace(lin.eval(), (x,)))
    out = graphopt.quantize(graph, "weight-only", bits=bits, block_size=block, act_bits=8)
    node = next(n for n in out.nodes if n.op == "linear_weight_only")
    assert node.attrs["act_bits"] == 8
    codes, scales = node.inputs[1].data, node.inputs[2].data
    expected = _int8_activation_reference(x.numpy(), codes, scales, bits, block, k)
    expected = expected + lin.bias.detach().numpy()
    ref = graphopt.run(out, x).numpy()
    np.testing.assert_allclose(ref, expected, rtol=2e-5, atol=2e-5 * np.abs(expected).max())
    for threads in (1, 2):
        native = graphopt.compile(out, backend="native", threads=threads)(x).numpy()
        np.testing.assert_allclose(native, ref, rtol=2e-5, atol=2e-5 * np.abs(ref).max())
    ort = np.asarray(graphopt.compile(out, backend="onnxruntime")(x))
    np.testing.assert_allclose(ort, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    levels = [a.i for n in graphopt.to_onnx(out).graph.node if n.op_type == "MatMulNBits"
              for a in n.attribute if a.name == "accuracy_level"]
    assert levels == [4]
    with torch.no_grad():
        float_out = lin(x).numpy()
    assert np.abs(ref - float_out).max() < 0.2 * np.abs(float_out).max()  # still the layer


@pytest.mark.parametrize("bits, block", [(4, 32), (4, 64), (4, 512), (8, 32), (8, 128)])
def test_int8_activations_at_the_extremes_stay_exact(bits, block):
    """Codes at both ends (0 and 15 / 255) against activations at both ends (+-127) over long
    blocks: the widest integer sums the kernels add in 16 bits before widening (AVX2 sums four
    4-bit units in i16; 8-bit pairs reach 2 * 128 * 127) must not saturate."""
    k = 1024
    torch.manual_seed(0)
    lin = torch.nn.Linear(k, 6, bias=False)
    x = torch.full((3, k), 2.5)
    x[1] = -2.5
    x[2, ::3] = -2.5
    graph = graphopt.optimize(graphopt.trace(lin.eval(), (x,)))
    out = graphopt.quantize(graph, "weight-only", bits=bits, block_size=block, act_bits=8)
    node = next(n for n in out.nodes if n.op == "linear_weight_only")
    codes, scales = node.inputs[1].data.copy(), node.inputs[2].data
    low, high = (0x00, 0xFF) if bits == 4 else (0, 255)
    patterns = [high, low, 0xF0 if bits == 4 else 200, 0x0F if bits == 4 else 1, high, low]
    for row, value in enumerate(patterns):
        codes[row] = value
    codes[4, ::2] = low  # alternating blocks of both ends
    stored = node.inputs[1]
    node.set_input(1, out.add_constant(codes, "extreme_codes"))
    out.remove_constant(stored)
    out.verify()
    expected = _int8_activation_reference(x.numpy(), codes, scales, bits, block, k)
    ref = graphopt.run(out, x).numpy()
    np.testing.assert_allclose(ref, expected, rtol=1e-5)
    native = graphopt.compile(out, backend="native", threads=1)(x).numpy()
    np.testing.assert_allclose(native, expected, rtol=1e-5)
    assert np.abs(expected).min() > 0  # every row and column: a real sum, not a vacuous zero


@pytest.mark.parametrize("bits, block, k, rows", [
    (4, 32, 768, 1), (4, 32, 800, 3), (8, 32, 784, 4), (4, 64, 640, 2), (8, 16, 96, 2),
    (4, 16, 80, 1), (4, 32, 40, 2)])
def test_float_activation_gemv_matches_reference(bits, block, k, rows):
    """act_bits=0 with 1-4 rows (the decode GEMV: AVX-512 whole-32-block loop, its general
    loop for other blocks and K tails, AVX2, portable) against the op's reference."""
    torch.manual_seed(2)
    lin = torch.nn.Linear(k, 37)
    x = torch.randn(rows, k)
    graph = graphopt.optimize(graphopt.trace(lin.eval(), (x,)))
    out = graphopt.quantize(graph, "weight-only", bits=bits, block_size=block)
    ref = graphopt.run(out, x)
    for threads in (1, 2):
        torch.testing.assert_close(graphopt.compile(out, backend="native", threads=threads)(x),
                                   ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_int8_activations_with_epilogue_and_options():
    """Fused residual + activation epilogues run after the integer product; act_bits is
    validated where it is given."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(96, 96), torch.nn.GELU(), torch.nn.Linear(96, 96))
    x = torch.randn(2, 96)

    class Residual(torch.nn.Module):
        def forward(self, x):
            return torch.relu(model(x) + x)

    graph = graphopt.optimize(graphopt.trace(Residual().eval(), (x,)))
    out = graphopt.quantize(graph, "weight-only", act_bits=8)
    ref = graphopt.run(out, x)
    torch.testing.assert_close(graphopt.compile(out, backend="native")(x), ref,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(graphopt.GraphoptError, match="act_bits"):
        graphopt.quantize(graph, "weight-only", act_bits=4)
    with pytest.raises(graphopt.GraphoptError, match="act_bits"):
        graphopt.quantize(graph, "dynamic", act_bits=8)
    passed = graphopt.optimize(graph, "quantize-weights{bits=4,act_bits=8}")
    assert {n.attrs.get("act_bits") for n in passed.nodes if n.op == "linear_weight_only"} == {8}


@pytest.mark.parametrize("env, paths", [
    ({"GRAPHOPT_DISABLE_VNNI": "1"}, ("avx512", "avx2")),
    ({"GRAPHOPT_DISABLE_AVX512": "1"}, ("avx2", "avx2")),
    ({"GRAPHOPT_DISABLE_AVX2": "1"}, ("portable", "portable"))])
def test_weight_only_kernel_paths(env, paths):
    """Each narrower path of both weight-only kernels (float and int8 activations) is taken
    when forced and passes this file's numeric tests (rerun in a subprocess)."""
    from graphopt import _C

    if _C.native_wo_isa() == paths:
        pytest.skip(f"the default run already took the paths {paths} (this CPU's best)")
    code = "from graphopt import _C; print(*_C.native_wo_isa())"
    environ = dict(os.environ, **env)
    picked = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                            text=True, check=True).stdout.split()
    if tuple(picked) != paths:
        pytest.skip(f"this CPU lacks the ISA of those paths: under {env} it takes {picked}, "
                    f"not {paths}")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", __file__, "-k",
                           "definition or epilogue or gemv or onnxruntime_and_eager"],
                          env=environ, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


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
