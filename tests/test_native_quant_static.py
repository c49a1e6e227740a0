"""Static int8 ops on the native backend: qlinear / qconv (u8 in, f32 or requantized u8 out),
quantize_linear / dequantize_linear (per tensor and per channel) and max pooling of u8 codes,
each against the op's reference. Integer results must be equal; f32 results agree at float
rounding (the kernels follow the references' operation order)."""

from __future__ import annotations

import pytest
import torch
from native_util import Const, check_op, op_graph, randn

import graphopt
from graphopt.native.builder import NativeUnsupportedError


def _codes(*shape, seed=0, dtype=torch.uint8):
    gen = torch.Generator().manual_seed(seed)
    lo, hi = (0, 256) if dtype == torch.uint8 else (-128, 128)
    return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int32).to(dtype)


def _scalar(v, dtype=torch.float32):
    return torch.tensor(v, dtype=dtype)


def _w_scale(n, seed=1):
    return (randn(n, seed=seed).abs() * 0.01 + 0.002).contiguous()


@pytest.mark.parametrize("requantize", [False, True], ids=["f32_out", "u8_out"])
@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("x_shape", [(1, 40), (7, 40), (2, 5, 40)])
def test_qlinear(x_shape, activation, requantize):
    n = 24
    outs = [_scalar(0.05), _scalar(7, torch.uint8)] if requantize else [None, None]
    check_op("qlinear", [_codes(*x_shape), _scalar(0.02), _scalar(131, torch.uint8),
                         Const(_codes(n, 40, seed=2, dtype=torch.int8)), Const(_w_scale(n)),
                         Const(randn(n, seed=3)), *outs],
             {"activation": activation, "activation_params": ()}, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("requantize", [False, True], ids=["f32_out", "u8_out"])
@pytest.mark.parametrize("case", [
    dict(c=8, co=16, k=3, stride=(1, 1), padding=(1, 1), groups=1),
    dict(c=8, co=8, k=3, stride=(2, 2), padding=(1, 1), groups=8),   # depthwise
    dict(c=6, co=9, k=1, stride=(1, 1), padding=(0, 0), groups=3),   # grouped 1x1
    dict(c=3, co=5, k=5, stride=(2, 1), padding=(2, 0), groups=1),   # odd, asymmetric
    dict(c=4, co=6, k=3, stride=(1, 1), padding=(2, 3), groups=2, dilation=(2, 3)),
    dict(c=5, co=4, k=5, stride=(1, 2), padding=(0, 4), groups=1, dilation=(1, 2)),
    dict(c=1, co=7, k=3, stride=(1, 1), padding=(1, 1), groups=1),   # one input channel
    dict(c=6, co=6, k=3, stride=(1, 1), padding=(0, 2), groups=6, dilation=(2, 1)),
    dict(c=5, co=5, k=5, stride=(2, 3), padding=(2, 1), groups=5),
], ids=["3x3", "depthwise_s2", "grouped_1x1", "5x5_odd", "dilated_grouped", "dilated_wide",
        "one_channel", "depthwise_dilated", "depthwise_5x5_strided"])
def test_qconv(case, requantize):
    c, co, k, groups = case["c"], case["co"], case["k"], case["groups"]
    outs = [_scalar(0.1), _scalar(3, torch.uint8)] if requantize else [None, None]
    check_op("qconv", [_codes(2, c, 9, 11), _scalar(0.03), _scalar(120, torch.uint8),
                       Const(_codes(co, c // groups, k, k, seed=4, dtype=torch.int8)),
                       Const(_w_scale(co)), Const(randn(co, seed=5)), *outs],
             {"stride": case["stride"], "padding": case["padding"],
              "dilation": case.get("dilation", (1, 1)), "groups": groups, "activation": "relu",
              "activation_params": ()},
             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["u8", "i8"])
@pytest.mark.parametrize("axis", [None, 1])
def test_quantize_and_dequantize_linear(dtype, axis):
    x = randn(3, 4, 5) * 3
    # exact rounding ties (k + 0.5) and saturation on both ends
    x[0, 0, :4] = torch.tensor([0.25, -0.25, 0.75, 1e6])
    x[0, 1, 0] = -1e6
    if axis is None:
        scale, zp = _scalar(0.5), _scalar(128 if dtype == "u8" else -3,
                                          torch.uint8 if dtype == "u8" else torch.int8)
    else:
        scale = torch.tensor([0.5, 0.25, 0.02, 1.0])
        zp = torch.tensor([0, 10, 128, 255] if dtype == "u8" else [0, -10, 5, 127],
                          dtype=torch.uint8 if dtype == "u8" else torch.int8)
    fn = check_op("quantize_linear", [x, Const(scale), Const(zp)],
                  {"axis": axis, "dtype": dtype})
    assert [s.kernel for s in fn.plan.steps] == ["quantize_linear"]
    q = graphopt.run(op_graph("quantize_linear", [x, Const(scale), Const(zp)],
                              {"axis": axis, "dtype": dtype})[0], x)
    fn = check_op("dequantize_linear", [q, Const(scale), Const(zp)], {"axis": axis},
                  rtol=0.0, atol=0.0)
    assert [s.kernel for s in fn.plan.steps] == ["dequantize_linear"]


def test_max_pool_of_codes():
    fn = check_op("max_pool", [_codes(2, 3, 9, 8)],
                  {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1)})
    assert [s.kernel for s in fn.plan.steps] == ["cast", "pool2d", "cast"]


def test_non_constant_int8_weight_is_named():
    g, feeds = op_graph("qlinear", [_codes(2, 8), _scalar(0.1), _scalar(0, torch.uint8),
                                    _codes(4, 8, dtype=torch.int8), _w_scale(4), None, None,
                                    None], {"activation": "none", "activation_params": ()})
    with pytest.raises(NativeUnsupportedError, match="qlinear.*not a constant"):
        graphopt.compile(g, backend="native", fallback="error")


@pytest.mark.parametrize("disabled", ["GRAPHOPT_DISABLE_AVX512", "GRAPHOPT_DISABLE_AVX2"])
def test_qconv_on_narrower_kernel_paths(disabled):
    """The qconv tests again with the AVX-512 kernels (then AVX2 too) turned off, in a
    subprocess: the int8 tiles, the requantization and the depthwise taps each have per-ISA
    code; skipped where this run already is on that path."""
    import os
    import subprocess
    import sys

    from graphopt._extension import load

    features = load().cpu_features()
    if disabled == "GRAPHOPT_DISABLE_AVX512" and not features.get("avx512f"):
        pytest.skip("no AVX-512 here: the AVX2 path is this run's own")
    if disabled == "GRAPHOPT_DISABLE_AVX2" and not features.get("avx2"):
        pytest.skip("no AVX2 here: the portable path is this run's own")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k",
         "qconv and not narrower"], env=dict(os.environ, **{disabled: "1"}),
        capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
