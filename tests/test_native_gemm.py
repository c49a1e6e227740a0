"""Tests of the native SGEMM kernel graphopt._C.sgemm against torch.

Both kernel sets run on every machine: the AVX2+FMA one (when the CPU has it) and the portable
one, forced with ``force_portable=True``.

Tolerances: references are computed in float64 by torch; a float32 dot product of length K with
unit-variance inputs has rounding error growing like sqrt(K), so the absolute tolerance is
``1e-4 * sqrt(K)`` (relative tolerance 1e-4). Activations are 1-Lipschitz or flatter (gelu
reaches 1.13), so the same tolerance holds after the epilogue.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graphopt import _C

HAS_AVX2 = bool(_C.cpu_features()["avx2"] and _C.cpu_features()["fma"])
PATHS = [
    pytest.param(False, id="native", marks=[] if HAS_AVX2 else [pytest.mark.skip("no AVX2+FMA")]),
    pytest.param(True, id="portable"),
]

ACTIVATIONS = {
    "none": lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "gelu": lambda x: F.gelu(x, approximate="none"),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "hardswish": F.hardswish,
}

EDGE_DIMS = [1, 2, 3, 7, 13, 16, 17, 31, 64, 97, 255, 256, 513]


@contextlib.contextmanager
def torch_threads(n):
    """Temporarily sets torch's intra-op thread count (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reference(a, b, bias=None, trans_b=False, activation="none"):
    """act(a @ b + bias) in float64 torch.

    Single-threaded: the references are small, and a multi-threaded torch stalls badly when the
    test shares its cores with other work, which made this helper dominate the test time.
    """
    ta = torch.from_numpy(np.asarray(a, dtype=np.float64))
    tb = torch.from_numpy(np.asarray(b, dtype=np.float64))
    tbias = None if bias is None else torch.from_numpy(np.asarray(bias, dtype=np.float64))
    with torch_threads(1):
        out = F.linear(ta, tb if trans_b else tb.t(), tbias)
        return ACTIVATIONS[activation](out).numpy()


def assert_close(actual, expected, k, rtol=1e-4):
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=1e-4 * math.sqrt(max(k, 1)))


def operands(rng, m, n, k, trans_b=False, with_bias=False):
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    bias = rng.standard_normal(n, dtype=np.float32) if with_bias else None
    return a, b, bias


@pytest.mark.parametrize("force_portable", PATHS)
def test_edge_shape_grid(force_portable):
    """Every (M, N, K) in EDGE_DIMS^3 except the big corner, both layouts, with/without bias."""
    rng = np.random.default_rng(0)
    for i, (m, n, k) in enumerate(itertools.product(EDGE_DIMS, repeat=3)):
        if m * n * k > 256 * 256 * 513:
            continue
        trans_b = i % 2 == 1
        with_bias = (i // 2) % 2 == 1
        a, b, bias = operands(rng, m, n, k, trans_b, with_bias)
        out = _C.sgemm(a, b, bias, trans_b=trans_b, force_portable=force_portable)
        assert_close(out, reference(a, b, bias, trans_b), k)


@pytest.mark.parametrize("force_portable", PATHS)
@pytest.mark.parametrize("trans_b", [False, True], ids=["b_kn", "b_nk"])
@pytest.mark.parametrize("m,n,k", [(513, 513, 513), (1, 513, 4099), (97, 31, 4099), (7, 1, 4099)])
def test_large_and_deep(m, n, k, trans_b, force_portable):
    """Several K blocks (K = 4099 -> 17 blocks) and more than one MC block of rows."""
    rng = np.random.default_rng(1)
    a, b, bias = operands(rng, m, n, k, trans_b, with_bias=True)
    out = _C.sgemm(a, b, bias, trans_b=trans_b, activation="relu", force_portable=force_portable)
    assert_close(out, reference(a, b, bias, trans_b, "relu"), k)


@pytest.mark.parametrize("force_portable", PATHS)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_activations_fused(activation, with_bias, force_portable):
    """Each activation on full and edge tiles (M=37, N=45 are not multiples of 6 and 16)."""
    rng = np.random.default_rng(2)
    for trans_b in (False, True):
        a, b, bias = operands(rng, 37, 45, 29, trans_b, with_bias)
        out = _C.sgemm(
            a, b, bias, trans_b=trans_b, activation=activation, force_portable=force_portable
        )
        assert_close(out, reference(a, b, bias, trans_b, activation), 29)


@pytest.mark.parametrize("force_portable", PATHS)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_activation_accuracy_over_range(activation, force_portable):
    """The epilogue's math alone, on x in [-30, 30] plus extremes: C = x @ ones(1, 24) = x."""
    x = np.concatenate(
        [
            np.linspace(-30.0, 30.0, 20001, dtype=np.float32),
            np.array([0.0, -0.0, 1e-30, -1e-30, 1e-6, -1e-6, 87.0, -87.0, 100.0, -100.0]),
            np.array([1e4, -1e4]),
        ]
    ).astype(np.float32)[:, None]
    ones = np.ones((1, 24), dtype=np.float32)
    out = _C.sgemm(x, ones, activation=activation, force_portable=force_portable)
    expected = ACTIVATIONS[activation](torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "relu6", "hardswish", "sigmoid", "gelu"])
def test_nan_propagates(activation):
    x = np.array([[np.nan]], dtype=np.float32)
    out = _C.sgemm(x, np.ones((1, 16), dtype=np.float32), activation=activation)
    assert np.isnan(out).all()


@pytest.mark.parametrize("force_portable", PATHS)
def test_matches_torch_float32_linear(force_portable):
    """Against what a user compares with: float32 F.linear + F.gelu."""
    rng = np.random.default_rng(3)
    x, w, bias = operands(rng, 128, 768, 768, trans_b=True, with_bias=True)
    out = _C.sgemm(x, w, bias, trans_b=True, activation="gelu", force_portable=force_portable)
    expected = F.gelu(F.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias)))
    assert_close(out, expected.numpy(), 768)


def test_portable_and_native_agree():
    rng = np.random.default_rng(4)
    a, b, bias = operands(rng, 100, 70, 300, with_bias=True)
    native = _C.sgemm(a, b, bias, activation="silu")
    portable = _C.sgemm(a, b, bias, activation="silu", force_portable=True)
    assert_close(native, portable.astype(np.float64), 300)


@pytest.mark.parametrize("force_portable", PATHS)
@pytest.mark.parametrize(
    "m,n,k", [(513, 255, 97), (1000, 64, 300), (64, 2000, 128), (3136, 256, 64), (6, 16, 5000)]
)
def test_thread_count_does_not_change_result(m, n, k, force_portable):
    """Bit-identical across thread counts: each element is summed in the same order."""
    rng = np.random.default_rng(5)
    a, b, bias = operands(rng, m, n, k, with_bias=True)
    kwargs = dict(activation="gelu", force_portable=force_portable)
    one = _C.sgemm(a, b, bias, threads=1, **kwargs)
    two = _C.sgemm(a, b, bias, threads=2, **kwargs)
    three = _C.sgemm(a, b, bias, threads=3, **kwargs)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, three)


@pytest.mark.parametrize("force_portable", PATHS)
def test_non_contiguous_inputs_are_read_in_place(force_portable):
    """Strided inputs are supported directly (no ValueError, no copy needed by the caller)."""
    rng = np.random.default_rng(6)
    base_a = rng.standard_normal((90, 140), dtype=np.float32)
    base_b = rng.standard_normal((120, 80), dtype=np.float32)
    views = {
        "a transposed": (base_a.T, base_b[:90, :50]),  # a: [140, 90], F-order
        "step slices": (base_a[::3, ::2], base_b[:70, ::2]),  # a: [30, 70], b: [70, 40]
        "negative strides": (base_a[::-1, ::-2], base_b[:70, ::-1]),  # a: [90, 70]
        "b transposed": (base_a[:, :80], base_b[:20, :].T),  # b: [80, 20], F-order
    }
    for name, (a, b) in views.items():
        out = _C.sgemm(a, b, force_portable=force_portable)
        assert_close(out, reference(a, b), a.shape[1]), name
    # trans_b with a non-contiguous [N, K] view
    w = base_b[::2, :70]  # [60, 70] as [N, K]
    a = base_a[:, :70]
    out = _C.sgemm(a, w, trans_b=True, force_portable=force_portable)
    assert_close(out, reference(a, w, trans_b=True), 70)


def test_zero_and_broadcast_strides():
    a = np.broadcast_to(np.arange(5, dtype=np.float32), (4, 5))  # row stride 0
    b = np.ones((5, 3), dtype=np.float32)
    np.testing.assert_array_equal(_C.sgemm(a, b), np.full((4, 3), 10.0, dtype=np.float32))


def test_odd_byte_strides_are_copied():
    rec = np.zeros((6, 4), dtype=[("x", np.float32), ("pad", np.int8)])  # 5-byte stride
    rec["x"] = np.arange(24, dtype=np.float32).reshape(6, 4)
    a = rec["x"]
    out = _C.sgemm(a, np.eye(4, dtype=np.float32))
    np.testing.assert_array_equal(out, a)


def test_accepts_torch_tensors():
    x, w = torch.randn(5, 7), torch.randn(3, 7)
    out = _C.sgemm(x, w, trans_b=True)
    torch.testing.assert_close(torch.from_numpy(out), x @ w.t(), rtol=1e-5, atol=1e-5)


def test_empty_dimensions():
    a = np.zeros((0, 5), dtype=np.float32)
    assert _C.sgemm(a, np.zeros((5, 3), dtype=np.float32)).shape == (0, 3)
    assert _C.sgemm(np.zeros((4, 5), np.float32), np.zeros((5, 0), np.float32)).shape == (4, 0)
    # K == 0: empty sum, so the result is act(bias).
    bias = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    out = _C.sgemm(
        np.zeros((2, 0), np.float32), np.zeros((0, 3), np.float32), bias, activation="relu"
    )
    np.testing.assert_array_equal(out, np.array([[0.0, 0.5, 2.0]] * 2, dtype=np.float32))


A23 = np.ones((2, 3), np.float32)
B34 = np.ones((3, 4), np.float32)
INVALID_ARGUMENTS = {
    "a_dtype": (A23.astype(np.float64), B34, {}, r"a must be float32, got float64"),
    "b_dtype": (A23, B34.astype(np.int32), {}, r"b must be float32, got int32"),
    "k_mismatch": (
        A23,
        np.ones((4, 5), np.float32),
        {},
        r"inner dimensions do not match: a is \[M=2, K=3\] but b is \[K=4, N=5\]",
    ),
    "k_mismatch_trans_b": (
        A23,
        B34,
        {"trans_b": True},
        r"a is \[M=2, K=3\] but b \(trans_b=True\) is \[N=3, K=4\]",
    ),
    "a_rank": (
        np.ones(3, np.float32),
        B34,
        {},
        r"a must be a 2-D array \[M, K\], got shape \(3,\)",
    ),
    "b_rank": (A23, np.ones((1, 3, 4), np.float32), {}, r"b must be a 2-D array \[K, N\]"),
    "bias_shape": (
        A23,
        B34,
        {"bias": np.ones(5, np.float32)},
        r"bias must have shape \[N=4\], got shape \(5,\)",
    ),
    "bias_dtype": (A23, B34, {"bias": np.ones(4)}, r"bias must be float32, got float64"),
    "activation": (A23, B34, {"activation": "gelu_erf"}, r"unknown activation 'gelu_erf'"),
    "threads": (A23, B34, {"threads": -1}, r"threads must be >= 0"),
}


@pytest.mark.parametrize(
    "a,b,kwargs,match", list(INVALID_ARGUMENTS.values()), ids=list(INVALID_ARGUMENTS)
)
def test_invalid_arguments_raise_value_error(a, b, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _C.sgemm(a, b, **kwargs)


def test_cpu_features_and_threads():
    features = _C.cpu_features()
    assert isinstance(features["avx2"], bool) and isinstance(features["fma"], bool)
    assert isinstance(features["avx512f"], bool)
    expected = "avx512_6x32" if features["avx512f"] else "avx2_fma_6x16"
    if not (features["avx2"] and features["fma"]):
        expected = "portable_6x16"
    assert features["sgemm_kernel"] == expected
    before = _C.get_num_threads()
    try:
        _C.set_num_threads(1)
        assert _C.get_num_threads() == 1
    finally:
        _C.set_num_threads(before)
    with pytest.raises(ValueError, match="n must be >= 1"):
        _C.set_num_threads(0)


def test_disable_avx2_env_selects_portable_kernel():
    """GRAPHOPT_DISABLE_AVX2=1 switches the whole process to the portable kernels."""
    code = "from graphopt import _C; print(_C.cpu_features()['sgemm_kernel'])"
    env = dict(os.environ, GRAPHOPT_DISABLE_AVX2="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "portable_6x16"


_WIDTH_CODE = """
import sys, numpy as np
from graphopt import _C
rng = np.random.default_rng(7)
out = []
for m, n, k in [(6, 32, 5), (7, 33, 300), (12, 64, 257), (13, 47, 1), (1, 4095, 31),
                (144, 4097, 9), (5, 16, 3), (30, 95, 520)]:
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    out.append(_C.sgemm(a, b, bias=bias, activation="relu", threads=2))
np.savez(sys.argv[1], *out)
"""


def test_avx512_and_avx2_kernels_agree_bit_for_bit(tmp_path):
    """The 6x32 AVX-512 tile sums every element in the AVX2 6x16 kernel's order: same bits,
    on full tiles, half tiles (16 of 32 columns) and edges. GRAPHOPT_DISABLE_AVX512=1 selects
    the AVX2 kernel; where the CPU has no AVX-512 both runs take the same path."""
    runs = {}
    for label, env in (("default", {}), ("avx2", {"GRAPHOPT_DISABLE_AVX512": "1"})):
        path = tmp_path / f"{label}.npz"
        subprocess.run([sys.executable, "-c", _WIDTH_CODE, str(path)],
                       env=dict(os.environ, **env), check=True)
        runs[label] = np.load(path)
    code = "from graphopt import _C; print(_C.cpu_features()['sgemm_kernel'])"
    kernel = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env=dict(os.environ, GRAPHOPT_DISABLE_AVX512="1"))
    assert kernel.stdout.strip() in ("avx2_fma_6x16", "portable_6x16")
    for name in runs["default"].files:
        np.testing.assert_array_equal(runs["default"][name], runs["avx2"][name])
