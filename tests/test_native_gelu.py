"""The exact (erf) GELU of the native vector epilogue: accuracy over a dense grid, and the same
bits from the AVX2 and AVX-512 forms.

The vector form evaluates erfc(|x| / sqrt 2) as eight degree-7 polynomials on [0, 4) and 0
beyond (csrc/erfc_pieces.h), without exp or division. Its contract, checked here against a
float64 reference: absolute error <= 1e-7 + 1e-6 |gelu(x)| everywhere (the negative tail
included, where torch's float32 0.5 x (1 + erf) cancels to 0), and bit-identical results on
both ISAs (a model's output must not depend on the machine's vector width).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

from graphopt import _C

_RUN_CODE = """
import sys
import numpy as np
from graphopt.ir.dtypes import DType
from graphopt.native.codes import ACTIVATION_CODES, DTYPE_CODES, UNARY_CODES
from graphopt.native.kernel_call import KernelCall

x = np.load(sys.argv[1])
a = x.reshape(-1, 1).copy()
epilogue = np.zeros((x.size, 1), np.float32)
KernelCall("gemm", [epilogue, a, np.ones((1, 1), np.float32), None, None],
           [0, x.size, 1, 1, 1, 1, 1, 1, ACTIVATION_CODES["gelu"], 0, 0], [1.0, 0.0, 0.0]).run()
unary = np.zeros_like(x)
KernelCall("unary", [unary, x], [UNARY_CODES["gelu"], DTYPE_CODES[DType.float32], x.size]).run()
np.savez(sys.argv[2], epilogue=epilogue[:, 0], unary=unary)
"""


def _grid() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([np.linspace(-12, 12, 240_001), rng.standard_normal(60_000) * 3,
                           [-np.inf, np.inf, np.nan, -0.0, 0.0, 1e-30, -1e4, 1e4]]
                          ).astype(np.float32)


def _run(tmp_path, label: str, env: dict) -> dict:
    """Both GELU kernels ("gemm" epilogue, "unary") on the grid, in a process with ``env``."""
    grid, out = tmp_path / "grid.npy", tmp_path / f"{label}.npz"
    np.save(grid, _grid())
    subprocess.run([sys.executable, "-c", _RUN_CODE, str(grid), str(out)],
                   env=dict(os.environ, **env), check=True, timeout=300)
    data = np.load(out)
    return {name: data[name] for name in data.files}


def test_gelu_accuracy_on_a_dense_grid(tmp_path):
    got = _run(tmp_path, "here", {})
    x = _grid()
    want = F.gelu(torch.from_numpy(x).double()).numpy()
    finite = np.isfinite(x)
    for name, values in got.items():
        err = np.abs(values[finite].astype(np.float64) - want[finite])
        bound = 1e-7 + 1e-6 * np.abs(want[finite])
        worst = int(np.argmax(err - bound))
        assert (err <= bound).all(), (
            f"{name} on {_C.native_vec_isa()}: gelu({x[finite][worst]}) = "
            f"{values[finite][worst]}, float64 {want[finite][worst]}")
        # not vacuous: the negative tail is resolved, not flushed to 0
        tail = (x[finite] > -5.0) & (x[finite] < -3.0)
        assert (values[finite][tail] < 0).all()
    nan_in = np.isnan(x)
    assert np.isnan(got["epilogue"][nan_in]).all()


def test_gelu_is_the_same_on_avx2_and_avx512(tmp_path):
    """GRAPHOPT_DISABLE_AVX512=1 takes the AVX2 form (eight-lane table lookups); on a CPU
    without AVX-512 both runs take that path."""
    default = _run(tmp_path, "default", {})
    narrow = _run(tmp_path, "avx2", {"GRAPHOPT_DISABLE_AVX512": "1"})
    for name in default:
        np.testing.assert_array_equal(default[name].view(np.uint32), narrow[name].view(np.uint32))
