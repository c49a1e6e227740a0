"""Native int8 GEMM ("qlinear") and weight-only ("linear_wo") kernels against exact references.

Kernel level (``graphopt.native.kernel_call.KernelCall``: one step on numpy arrays): the static
form (u8 input with a given scale / zero point, f32 or requantized u8 output) and the dynamic
form (f32 input quantized in the kernel) against an integer-exact reference written here:
odd M / N / K, M = 1 and K = 1, the saturation worst cases (activations 255 against weights
127 / -128, which overflow vpmaddubsw's i16 pair sums), zero points 0 / 128 / 255, per-channel
scales, strided inputs. Without an activation the kernel performs the reference's float steps
in the same order, so results are compared for equality.

``qconv2d`` (the static int8 convolution: u8 im2col padded with the zero point, then the
int8 GEMM) against ``F.conv2d`` on the exact integers.

Op level (one-op graphs, tests/native_util.py): ``qlinear_dynamic`` and ``linear_weight_only``
against the ops' reference implementations.

Every kernel set runs: the default one (AVX512-VNNI, else AVX-VNNI, where the CPU has it), then
``test_other_kernel_sets`` reruns the file with GRAPHOPT_DISABLE_AVX512=1 (AVX-VNNI where the
CPU has it, else AVX2), GRAPHOPT_DISABLE_VNNI=1 (AVX2) and GRAPHOPT_DISABLE_AVX2=1 (portable).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from native_util import Const, check_graph, check_op, op_graph, randn

import graphopt
from graphopt import _C
from graphopt.ir.graph import Graph
from graphopt.ir.types import TensorType
from graphopt.native import NativeUnsupportedError
from graphopt.native.codes import ACTIVATION_CODES
from graphopt.native.kernel_call import KernelCall
from graphopt.ops.fused import apply_activation
from graphopt.quant.weight_only import quantize_blocks

F32 = np.float32


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def qlinear(x, w, w_scale, bias=None, residual=None, act="none", params=(), x_scale=None,
            x_zp=0, y_scale=None, y_zp=0, threads=1, x_view=None, per_row=False):
    """Runs kernel "qlinear". ``x`` is the C-contiguous base array; ``x_view`` =
    (rows, cols, row stride, col stride) of the view read (default: all of x as [M, K])."""
    m, k, rs, cs = x_view or (x.shape[0], x.shape[1], x.shape[1], 1)
    n = w.shape[0]
    out = np.zeros((m, n), np.uint8 if y_scale is not None else F32)
    static = x_scale is not None
    scalars = [None if v is None else np.asarray(v, dt) for v, dt in
               ((x_scale, F32), (x_zp if static else None, np.uint8), (y_scale, F32),
                (y_zp if y_scale is not None else None, np.uint8))]
    p = [float(v) for v in params] + [0.0, 0.0]
    call = KernelCall("qlinear", [out, x, w, w_scale, bias, residual, *scalars],
                      [m, n, k, rs, cs, k, 1, int(static), ACTIVATION_CODES[act], 0,
                       int(per_row)],
                      p[:2], threads=threads, const=(2,))
    call.run()
    return out


def reference(xq, x_scale, x_zp, w, w_scale, bias=None, residual=None, act="none", params=(),
              y_scale=None, y_zp=0):
    """The static qlinear's definition, integer-exact (int64 accumulation)."""
    acc = (xq.astype(np.int64) - int(x_zp)) @ w.astype(np.int64).T
    y = torch.from_numpy(acc).to(torch.float32) * (
        torch.tensor(x_scale, dtype=torch.float32) * torch.from_numpy(w_scale))
    if bias is not None:
        y = y + torch.from_numpy(bias)
    if residual is not None:
        y = y + torch.from_numpy(residual)
    y = apply_activation(y, act, params)
    if y_scale is None:
        return y.numpy()
    q = torch.clamp(torch.round(y / torch.tensor(y_scale, dtype=torch.float32)) + y_zp, 0, 255)
    return q.to(torch.uint8).numpy()


def _operands(m, k, n, seed=0):
    rng = _rng(seed)
    xq = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    w_scale = (rng.random(n) * 0.02 + 0.001).astype(F32)  # per channel
    bias = rng.standard_normal(n).astype(F32)
    return xq, w, w_scale, bias


SHAPES = [(1, 1, 1), (1, 5, 3), (2, 7, 17), (5, 3, 16), (6, 4, 15), (7, 33, 31), (13, 257, 47),
          (1, 384, 100), (64, 64, 64), (100, 130, 40)]


def test_kernel_set_is_reported():
    assert _C.native_qgemm_isa() in ("avx512vnni_quad_u8", "avxvnni_quad_u8", "avx2_pair_i16",
                                     "portable_pair_i16")


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("x_zp", [0, 128, 255])
def test_static_shapes_exact(m, k, n, x_zp):
    xq, w, w_scale, bias = _operands(m, k, n, seed=m * 7 + k)
    x_scale = 0.037
    expected = reference(xq, x_scale, x_zp, w, w_scale, bias)
    for threads in (1, 2):
        got = qlinear(xq, w, w_scale, bias, x_scale=x_scale, x_zp=x_zp, threads=threads)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("k", [1, 2, 3, 63, 64, 1000, 4099])
@pytest.mark.parametrize("pattern", ["max", "min", "alternating", "pairs"])
def test_saturation_worst_cases(k, pattern):
    """Activations at 255 (and 0 with zero point 255: -255) against weights at the int8
    extremes; vpmaddubsw would saturate its i16 pair sums (255 * 127 * 2 > 32767)."""
    n = 19
    col = np.arange(k)
    weights = {
        "max": np.full((n, k), 127), "min": np.full((n, k), -128),
        "alternating": np.where(col % 2 == 0, 127, -128)[None].repeat(n, 0),
        "pairs": np.where((col // 2) % 2 == 0, -128, 127)[None].repeat(n, 0),
    }[pattern].astype(np.int8)
    weights[1::3] = -weights[1::3] - 1  # flip some channels: 127 <-> -128
    w_scale = np.ones(n, F32)
    for xq, zp in ((np.full((3, k), 255, np.uint8), 0), (np.zeros((3, k), np.uint8), 255),
                   (np.where(col % 2 == 0, 255, 0).astype(np.uint8)[None].repeat(3, 0), 0)):
        got = qlinear(xq, weights, w_scale, x_scale=1.0, x_zp=zp)
        np.testing.assert_array_equal(got, reference(xq, 1.0, zp, weights, w_scale))


@pytest.mark.parametrize("m,k,n", [(1, 40, 33), (9, 77, 50), (30, 16, 16)])
@pytest.mark.parametrize("y_zp", [0, 128, 255])
@pytest.mark.parametrize("act", ["none", "relu"])
def test_requantize_epilogue(m, k, n, y_zp, act):
    xq, w, w_scale, bias = _operands(m, k, n, seed=3)
    args = dict(x_scale=0.05, x_zp=100, act=act, y_scale=0.07, y_zp=y_zp)
    got = qlinear(xq, w, w_scale, bias, **args)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, reference(xq, 0.05, 100, w, w_scale, bias, act=act,
                                                 y_scale=0.07, y_zp=y_zp))
    # values on both sides of the u8 range are saturated
    assert got.min() == 0 or got.max() == 255


@pytest.mark.parametrize("act,params", [("gelu", ()), ("sigmoid", ()), ("clamp", (-0.5, 0.5)),
                                        ("leaky_relu", (0.1,)), ("hardsigmoid", ())])
def test_static_activations_and_residual(act, params):
    xq, w, w_scale, bias = _operands(11, 50, 37, seed=4)
    residual = _rng(5).standard_normal((11, 37)).astype(F32)
    got = qlinear(xq, w, w_scale, bias, residual, act, params, x_scale=0.02, x_zp=7)
    expected = reference(xq, 0.02, 7, w, w_scale, bias, residual, act, params)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_strided_input():
    base = _rng(6).integers(0, 256, (20, 90), dtype=np.uint8)
    _, w, w_scale, bias = _operands(1, 30, 21, seed=6)
    # rows 0, 2, 4.. (row stride 180) and every third column: a [10, 30] view
    view = base[::2, ::3]
    got = qlinear(base, w, w_scale, bias, x_scale=0.1, x_zp=9, x_view=(10, 30, 180, 3))
    np.testing.assert_array_equal(got, reference(view, 0.1, 9, w, w_scale, bias))


def _dynamic_reference(x, w, w_scale, bias=None, residual=None, act="none", params=(),
                       per_token=False):
    from graphopt.ops.quant import qlinear_dynamic

    def t(a):
        return None if a is None else torch.from_numpy(a)

    return qlinear_dynamic(t(x), t(w), t(w_scale), t(bias), t(residual), act, params,
                           per_token=per_token).numpy()


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_dynamic_exact(m, k, n):
    rng = _rng(m + k + n)
    x = (rng.standard_normal((m, k)) * 3).astype(F32)
    _, w, w_scale, bias = _operands(m, k, n, seed=n)
    w[w == -128] = -127  # dynamic weights are symmetric
    for threads in (1, 2):
        got = qlinear(x, w, w_scale, bias, threads=threads)
        np.testing.assert_array_equal(got, _dynamic_reference(x, w, w_scale, bias))


@pytest.mark.parametrize("kind", ["zeros", "positive", "negative", "extremes", "ties",
                                  "near_ties"])
def test_dynamic_ranges(kind):
    """Zero points 0 (x >= 0) and 255 (x <= 0), all-zero input (scale 0), values that hit 0 and
    255 exactly, values on rounding ties of x / scale, and values a few ulps either side of a
    tie at a scale that is no power of two (where the quantizers' division-free path must hand
    over to the true division)."""
    rng = _rng(8)
    m, k, n = 5, 70, 24
    x = rng.standard_normal((m, k)).astype(F32)
    if kind == "zeros":
        x[:] = 0.0
    elif kind == "positive":
        x = np.abs(x)
    elif kind == "negative":
        x = -np.abs(x)
    elif kind == "extremes":
        x[0, 0], x[1, 1] = -4.0, 4.0
    elif kind == "ties":  # multiples of half the scale: (hi - lo) / 255 with hi - lo = 255
        x = (rng.integers(-200, 110, (m, k)) / 2).astype(F32)
        x[0, 0], x[0, 1] = -127.5, 127.5
    else:
        scale = (F32(2.08) - F32(-1.3)) / F32(255)  # 1 / scale rounds badly here
        x = ((rng.integers(-90, 150, (m, k)) + F32(0.5)) * scale).astype(F32)
        for _ in range(3):  # 0..3 ulps below or above
            way = rng.random(x.shape)
            x = np.nextafter(x, np.where(way < 0.35, -np.inf, np.where(way < 0.7, np.inf, x)))
        x[0, 0], x[0, 1] = -1.3, 2.08
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    w_scale = np.full(n, 0.01, F32)
    np.testing.assert_array_equal(qlinear(x, w, w_scale), _dynamic_reference(x, w, w_scale))


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_dynamic_per_row_exact(m, k, n):
    """Per-token activations: every row its own scale / zero point (rows of very different
    ranges, an all-zero row, a non-negative row), bit for bit with the reference."""
    rng = _rng(m * 3 + k + n)
    x = (rng.standard_normal((m, k)) * np.logspace(-2, 2, m)[:, None]).astype(F32)
    if m > 2:
        x[1] = 0.0
        x[2] = np.abs(x[2])
    _, w, w_scale, bias = _operands(m, k, n, seed=n + 1)
    w[w == -128] = -127
    expected = _dynamic_reference(x, w, w_scale, bias, per_token=True)
    for threads in (1, 2):
        got = qlinear(x, w, w_scale, bias, threads=threads, per_row=True)
        np.testing.assert_array_equal(got, expected)
    if m > 2:  # and it is not the per-tensor result
        assert not np.array_equal(expected, _dynamic_reference(x, w, w_scale, bias))


def test_dynamic_per_row_epilogue_and_strided():
    rng = _rng(12)
    base = (rng.standard_normal((14, 60)) * 2).astype(F32)
    _, w, w_scale, bias = _operands(1, 30, 23, seed=12)
    w[w == -128] = -127
    residual = rng.standard_normal((7, 23)).astype(F32)
    view = np.ascontiguousarray(base[::2, ::2])  # [7, 30], row stride 120, column stride 2
    got = qlinear(base, w, w_scale, bias, residual, "gelu", x_view=(7, 30, 120, 2),
                  per_row=True)
    expected = _dynamic_reference(view, w, w_scale, bias, residual, "gelu", per_token=True)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_dynamic_strided_and_batched_rows():
    base = _rng(9).standard_normal((2, 12, 40)).astype(F32)
    _, w, w_scale, bias = _operands(1, 20, 18, seed=9)
    w[w == -128] = -127
    view = base.reshape(24, 40)[:, ::2]  # every other column of all 24 rows
    got = qlinear(base, w, w_scale, bias, x_view=(24, 20, 40, 2))
    np.testing.assert_array_equal(got, _dynamic_reference(np.ascontiguousarray(view), w,
                                                          w_scale, bias))


def test_kernel_errors():
    w = np.ones((2, 70000), np.int8)
    with pytest.raises(ValueError, match="exceeds"):
        KernelCall("qlinear", [np.zeros((1, 2), F32), np.zeros((1, 70000), F32), w,
                               np.ones(2, F32)], [1, 2, 70000, 70000, 1, 70000, 1, 0, 0, 0, 0],
                   [0.0, 0.0], const=(2,))
    with pytest.raises(ValueError, match="plan constant"):
        KernelCall("qlinear", [np.zeros((1, 2), F32), np.zeros((1, 3), F32),
                               np.ones((2, 3), np.int8), np.ones(2, F32)],
                   [1, 2, 3, 3, 1, 3, 1, 0, 0, 0, 0], [0.0, 0.0])
    with pytest.raises(ValueError, match="per-row quantization is for dynamic mode"):
        KernelCall("qlinear", [np.zeros((1, 2), F32), np.zeros((1, 3), np.uint8),
                               np.ones((2, 3), np.int8), np.ones(2, F32), None, None,
                               np.float32(0.1), np.uint8(0)],
                   [1, 2, 3, 3, 1, 3, 1, 1, 0, 0, 1], [0.0, 0.0], const=(2,))


# ------------------------------------------------------------------------------- qconv2d
def qconv(x, w, w_scale, bias, stride, pad, dil, groups, x_scale, x_zp, act="none",
          y_scale=None, y_zp=0, threads=1):
    """Runs kernel "qconv2d" (symmetric padding)."""
    n, c, h, wd = x.shape
    co, _, kh, kw = w.shape
    ho = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, co, ho, wo), np.uint8 if y_scale is not None else F32)
    scalars = [np.asarray(x_scale, F32), np.asarray(x_zp, np.uint8),
               None if y_scale is None else np.asarray(y_scale, F32),
               None if y_scale is None else np.asarray(y_zp, np.uint8)]
    call = KernelCall("qconv2d", [out, x, w, w_scale, bias, None, *scalars],
                      [n, c, h, wd, co, kh, kw, *stride, *pad, *dil, groups, ho, wo,
                       ACTIVATION_CODES[act]], [0.0, 0.0], threads=threads, const=(2,))
    call.run()
    return out


def qconv_reference(x, w, w_scale, bias, stride, pad, dil, groups, x_scale, x_zp, act="none",
                    y_scale=None, y_zp=0):
    """Padding with the zero point = zero padding of (x - x_zp); float64 sums are exact."""
    acc = torch.nn.functional.conv2d(torch.from_numpy(x).double() - x_zp,
                                     torch.from_numpy(w).double(), None, stride, pad, dil,
                                     groups)
    scale = torch.tensor(x_scale, dtype=torch.float32) * torch.from_numpy(w_scale)
    y = acc.to(torch.float32) * scale[:, None, None]
    if bias is not None:
        y = y + torch.from_numpy(bias)[:, None, None]
    y = apply_activation(y, act, ())
    if y_scale is None:
        return y.numpy()
    q = torch.clamp(torch.round(y / torch.tensor(y_scale, dtype=torch.float32)) + y_zp, 0, 255)
    return q.to(torch.uint8).numpy()


QCONV_CASES = [
    # (N, C, H, W), (Co, C/g, kh, kw), stride, padding, dilation, groups
    ((1, 3, 7, 9), (5, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((2, 4, 11, 6), (6, 4, 1, 1), (1, 1), (0, 0), (1, 1), 1),  # pointwise: no im2col
    ((1, 5, 13, 13), (17, 5, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    ((1, 3, 10, 10), (4, 3, 3, 1), (1, 2), (2, 0), (2, 1), 1),  # asymmetric, dilated
    ((1, 8, 9, 9), (6, 4, 3, 3), (1, 1), (1, 1), (1, 1), 2),  # grouped
    ((2, 6, 12, 12), (6, 1, 3, 3), (1, 1), (1, 1), (1, 1), 6),  # depthwise
    ((1, 32, 8, 8), (40, 32, 3, 3), (1, 1), (1, 1), (1, 1), 1),
]


@pytest.mark.parametrize("x_shape,w_shape,stride,pad,dil,groups", QCONV_CASES)
@pytest.mark.parametrize("x_zp", [0, 131, 255])
def test_qconv2d(x_shape, w_shape, stride, pad, dil, groups, x_zp):
    rng = _rng(sum(x_shape) + sum(w_shape))
    x = rng.integers(0, 256, x_shape, dtype=np.uint8)
    w = rng.integers(-128, 128, w_shape, dtype=np.int8)
    w_scale = (rng.random(w_shape[0]) * 0.01 + 1e-3).astype(F32)
    bias = rng.standard_normal(w_shape[0]).astype(F32)
    args = (x, w, w_scale, bias, stride, pad, dil, groups, 0.03, x_zp)
    for threads in (1, 2):
        np.testing.assert_array_equal(qconv(*args, threads=threads), qconv_reference(*args))
    # requantized u8 output with a relu epilogue
    np.testing.assert_array_equal(qconv(*args, act="relu", y_scale=0.05, y_zp=3),
                                  qconv_reference(*args, act="relu", y_scale=0.05, y_zp=3))


# ------------------------------------------------------------------------------- op level
ATTRS = {"activation": "none", "activation_params": ()}


def _int8(n, k, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8),
            torch.rand(n, generator=gen) * 0.02 + 1e-3)


@pytest.mark.parametrize("x_shape,n", [((1, 1), 1), ((1, 37), 5), ((4, 300), 17),
                                       ((2, 5, 33), 40), ((3, 1, 7, 16), 16), ((150, 64), 48)])
def test_qlinear_dynamic_op(x_shape, n):
    w, ws = _int8(n, x_shape[-1], 1)
    check_op("qlinear_dynamic", [randn(*x_shape), Const(w), Const(ws), Const(randn(n, seed=2))],
             ATTRS, rtol=0, atol=0)


@pytest.mark.parametrize("act,params", [("relu", ()), ("gelu", ()), ("gelu_tanh", ()),
                                        ("silu", ()), ("clamp", (-1.0, 1.0)),
                                        ("leaky_relu", (0.2,))])
def test_qlinear_dynamic_epilogue(act, params):
    w, ws = _int8(24, 40, 3)
    check_op("qlinear_dynamic", [randn(9, 40), Const(w), Const(ws), Const(randn(24, seed=2)),
                                 randn(9, 24, seed=3)],
             {"activation": act, "activation_params": params})


def test_qlinear_dynamic_transposed_input_and_inplace_residual():
    """x is a transposed view (read through its strides); the residual dies at the node, so
    the product accumulates onto it in place."""
    g = Graph("t")
    xt = g.add_input("xt", TensorType((40, 6), graphopt.DType.float32))
    r = g.add_input("r", TensorType((6, 24), graphopt.DType.float32))
    w, ws = _int8(24, 40, 4)
    x = g.create_node("permute", [xt], {"perm": (1, 0)}).outputs[0]
    r2 = g.create_node("add", [r, r]).outputs[0]
    y = g.create_node("qlinear_dynamic", [x, g.add_constant(w.numpy(), "w"),
                                          g.add_constant(ws.numpy(), "ws"), None, r2],
                      {"activation": "relu", "activation_params": ()}).outputs[0]
    g.set_outputs([y])
    fn = check_graph(g, [randn(40, 6), randn(6, 24, seed=1)])
    (step,) = [s for s in fn.plan.steps if s.kernel == "qlinear"]
    assert step.ints[-2] == 1  # residual_in_c (last: per_row)
    assert [s.kernel for s in fn.plan.steps] == ["binary", "qlinear"]  # no copy of x


def test_qlinear_dynamic_weight_must_be_constant():
    w, ws = _int8(4, 8, 5)
    g, feeds = op_graph("qlinear_dynamic", [randn(2, 8), w, Const(ws), None], ATTRS)
    with pytest.raises(NativeUnsupportedError, match="qlinear_dynamic.*not a constant"):
        graphopt.compile(g, backend="native", fallback="error")
    fn = graphopt.compile(g, backend="native", fallback="reference")
    torch.testing.assert_close(fn(*feeds), graphopt.run(g, *feeds))


@pytest.mark.parametrize("bits,block", [(4, 16), (4, 32), (4, 64), (8, 32), (8, 128)])
@pytest.mark.parametrize("x_shape,n", [((1, 40), 33), ((3, 100), 17), ((4, 64), 16),
                                       ((2, 5, 77), 20), ((70, 130), 40)])
def test_linear_weight_only_op(bits, block, x_shape, n):
    k = x_shape[-1]
    codes, scales = quantize_blocks(randn(n, k, seed=1).numpy(), bits, block)
    attrs = {"bits": bits, "block_size": block, "k": k, **ATTRS}
    check_op("linear_weight_only", [randn(*x_shape), Const(codes), Const(scales),
                                    Const(randn(n, seed=2)), None], attrs)


@pytest.mark.parametrize("m", [1, 9])
def test_linear_weight_only_epilogue_and_strided_input(m):
    k, n = 96, 24
    codes, scales = quantize_blocks(randn(n, k, seed=1).numpy(), 4, 32)
    attrs = {"bits": 4, "block_size": 32, "k": k, "activation": "gelu", "activation_params": ()}
    x = randn(k, m).t()  # columns strided: the lowering copies x once
    check_op("linear_weight_only", [x, Const(codes), Const(scales), Const(randn(n, seed=2)),
                                    randn(m, n, seed=3)], attrs)
    # codes that are graph inputs (not constants) are read at run time as well
    check_op("linear_weight_only", [randn(m, k), torch.from_numpy(codes),
                                    torch.from_numpy(scales), None, None],
             {**attrs, "activation": "none"})


# ------------------------------------------------------------------------ other kernel sets
def _set(name: str) -> bool:
    return os.environ.get(name) not in (None, "", "0")


def _kernels_with(env: str) -> tuple[str, ...]:
    """The int8 kernel sets this process's CPU and environment may pick once ``env`` is set."""
    default = _C.native_qgemm_isa()
    features = _C.cpu_features()
    if env == "GRAPHOPT_DISABLE_AVX2" or _set("GRAPHOPT_DISABLE_AVX2") or not (
            features["avx2"] and features["fma"]):
        return ("portable_pair_i16",)
    if env == "GRAPHOPT_DISABLE_VNNI":
        return ("avx2_pair_i16",)
    # GRAPHOPT_DISABLE_AVX512: AVX512-VNNI gives way to AVX-VNNI where the CPU has it, else AVX2;
    # any other default does not use AVX-512 and stays.
    return ("avxvnni_quad_u8", "avx2_pair_i16") if default == "avx512vnni_quad_u8" else (default,)


@pytest.mark.parametrize("env", ["GRAPHOPT_DISABLE_AVX512", "GRAPHOPT_DISABLE_VNNI",
                                 "GRAPHOPT_DISABLE_AVX2"])
def test_other_kernel_sets(env):
    """Each switch picks the kernel set it promises on this CPU, and the whole file passes on
    it (rerun in a subprocess unless that set is this run's own, already tested here)."""
    expected = _kernels_with(env)
    environ = dict(os.environ, **{env: "1"})
    code = "from graphopt import _C; print(_C.native_qgemm_isa())"
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                         text=True, check=True)
    picked = out.stdout.strip()
    assert picked in expected
    if picked == _C.native_qgemm_isa():
        return  # the same kernels as this run: the tests above already ran on them
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
         "-k", "not other_kernel_sets"],
        env=environ, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_amx_tiles_and_their_switch():
    """Where the int8 GEMM runs AMX tiles (from 8 rows on), every test above ran on them; the
    whole file passes again on the VNNI tiles with GRAPHOPT_DISABLE_AMX=1 (a subprocess)."""
    environ = dict(os.environ, GRAPHOPT_DISABLE_AMX="1")
    code = "from graphopt import _C; print(_C.cpu_features()['int8_gemm_tiles'])"
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "none"
    if _C.cpu_features()["int8_gemm_tiles"] != "amx":
        return  # this run is already on the VNNI / AVX2 tiles
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
         "-k", "not other_kernel_sets and not amx_tiles"],
        env=environ, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
