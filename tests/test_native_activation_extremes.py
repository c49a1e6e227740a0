"""The exp-based activations of the native kernels against torch on extreme inputs.

One vector exp per ISA (csrc/vec_exp_avx2.h, csrc/vec_exp_avx512.h) with one rule: below
-87.33654 the result is exactly 0, above 88.3762626647949 it is +inf, NaN stays NaN. Every
path that uses it (the SGEMM epilogue through `unary` and `gemm` steps and `_C.sgemm`; softmax
through the vector table) is checked here on +-100, +-1e4, +-inf, NaN and the edges of the exp
range. The main run takes this CPU's best ISA; ``test_narrower_isa`` reruns the file with
GRAPHOPT_DISABLE_AVX512=1 (the AVX2 path on an AVX-512 CPU) and GRAPHOPT_DISABLE_AVX2=1 (the
portable path, std::exp).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graphopt import _extension
from graphopt.native.codes import ACTIVATION_CODES, DTYPE_CODES, UNARY_CODES
from graphopt.ir.dtypes import DType
from graphopt.native.kernel_call import KernelCall

_C = _extension.load()

EXTREMES = np.array([-1e4, -100.0, -88.5, -88.0, -87.5, -87.0, -20.0, -9.0, -1.0, -0.0, 0.0,
                     1e-30, 1.0, 9.0, 20.0, 87.0, 87.5, 88.0, 88.5, 100.0, 1e4,
                     np.inf, -np.inf, np.nan], np.float32)
# Enough copies that full vectors (8 / 16 lanes) and tails both meet every value.
X = np.concatenate([EXTREMES, EXTREMES[::-1], EXTREMES[3:]]).astype(np.float32)

REFERENCE = {
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    "tanh": torch.tanh,
}


def _close(got: np.ndarray, x: np.ndarray, name: str) -> None:
    want = REFERENCE[name](torch.from_numpy(x)).numpy()
    # atol: torch computes gelu as 0.5 x (1 + erf), which cancels to 0 below x ~ -5.5 where
    # the kernels (through erfc) keep ~1e-18; NaN and inf must match exactly.
    ok = np.isclose(got, want, rtol=2e-5, atol=1e-7, equal_nan=True)
    ok &= np.isnan(got) == np.isnan(want)
    ok &= np.where(np.isinf(want), got == want, True)
    if name == "gelu":
        # gelu(+inf): torch and the vector epilogue (0.5 x erfc(...) = inf * 0) give NaN, the
        # portable path (std::erfc) gives inf. Either is accepted; nothing else differs.
        ok |= (x == np.inf) & (np.isnan(got) | (got == np.inf))
    bad = [(float(a), float(g), float(w)) for a, g, w, o in zip(x, got, want, ok) if not o]
    assert not bad, f"{name} on {_C.native_vec_isa()} (x, native, torch): {bad}"


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_unary_kernel(name):
    out = np.zeros_like(X)
    KernelCall("unary", [out, X], [UNARY_CODES[name], DTYPE_CODES[DType.float32], X.size],
               validate=True).run()
    _close(out, X, name)


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.parametrize("bias", [False, True])
def test_gemm_epilogue(name, bias):
    # C[m, 0] = act(a[m] * 1 (+ 0 bias)): the epilogue sees exactly X.
    a = X.reshape(-1, 1).copy()
    b = np.ones((1, 3), np.float32)
    out = np.zeros((X.size, 3), np.float32)
    bias_arr = np.zeros(3, np.float32) if bias else None
    KernelCall("gemm", [out, a, b, bias_arr, None],
               [0, X.size, 3, 1, 1, 1, 3, 1, ACTIVATION_CODES[name], 0, 0], [1.0, 0.0, 0.0],
               validate=True).run()
    for j in range(3):
        _close(out[:, j], X, name)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_sgemm_epilogue(name):
    out = np.asarray(_C.sgemm(X.reshape(-1, 1).copy(), np.ones((1, 1), np.float32),
                              activation=name)).reshape(-1)
    _close(out, X, name)


@pytest.mark.parametrize("row", [
    [0.0, -np.inf, 100.0, -100.0, 0.0],
    [1e4, -1e4, 0.0, 88.5, -88.5],
    [-np.inf, -np.inf, 0.0, -87.4, -87.3],
    [np.nan, 0.0, 1.0, 2.0, 3.0],
    [np.inf, 0.0, 1.0, 2.0, 3.0],
])
def test_softmax_extremes(row):
    x = np.array([row * 4], np.float32)  # 20 columns: full vectors and a tail
    out = np.zeros_like(x)
    KernelCall("softmax", [out, x], [1, x.shape[1], 1, 0], validate=True).run()
    want = torch.softmax(torch.from_numpy(x), -1).numpy()
    assert np.allclose(out, want, rtol=2e-5, atol=1e-30, equal_nan=True), (out, want)


def test_exp_underflow_is_exact_zero():
    """exp(-inf) is exactly 0 (masked attention scores rely on it); the vector exp flushes
    everything below -87.33654 to 0 (the portable path keeps std::exp's subnormals)."""
    x = np.array([[0.0] + [-np.inf] * 8 + [-1e4] * 8 + [-87.4] * 8], np.float32)
    out = np.zeros_like(x)
    KernelCall("softmax", [out, x], [1, x.shape[1], 1, 0]).run()
    assert out[0, 0] == 1.0 and not out[0, 1:17].any()
    if _C.native_vec_isa() != "portable":
        assert not out[0, 17:].any()


# ------------------------------------------------------------------------- other ISA paths
_NARROWER = [("GRAPHOPT_DISABLE_AVX2", "portable")]
if _C.native_vec_isa() == "avx512":
    _NARROWER.append(("GRAPHOPT_DISABLE_AVX512", "avx2_fma"))


@pytest.mark.skipif(os.environ.get("GRAPHOPT_DISABLE_AVX2") not in (None, "", "0")
                    or os.environ.get("GRAPHOPT_DISABLE_AVX512") not in (None, "", "0"),
                    reason="already on a narrower path")
@pytest.mark.parametrize("env_var,isa", _NARROWER, ids=[i for _, i in _NARROWER])
def test_narrower_isa(env_var, isa):
    env = dict(os.environ, **{env_var: "1"})
    check = subprocess.run([sys.executable, "-c", "from graphopt import _C; "
                            "print(_C.native_vec_isa())"], env=env, capture_output=True,
                           text=True, check=True)
    assert check.stdout.strip() == isa
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         os.path.abspath(__file__), "-k", "not narrower"],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
