"""The native CSR kernel ``graphopt._C.sparse_linear`` against numpy, on edge shapes (size 1,
odd sizes around the 64-row tile and 8-lane vectors, several 1024-row K blocks, empty rows,
unsorted CSR, non-contiguous inputs), both kernels (AVX2 and portable), and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphopt.prune.sparse import SparseWeight, native_available, sparse_linear

pytestmark = pytest.mark.skipif(not native_available(), reason="graphopt._C without sparse_linear")


def _case(m, k, n, sparsity, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[rng.random((n, k)) < sparsity] = 0
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    return x, w, bias


@pytest.mark.parametrize("portable", [False, True], ids=["avx2", "portable"])
@pytest.mark.parametrize("m,k,n,sparsity", [
    (1, 1, 1, 0.0), (1, 5, 3, 0.5), (7, 33, 17, 0.9), (64, 64, 64, 0.8), (65, 100, 9, 0.95),
    (130, 2500, 40, 0.9), (128, 768, 768, 0.9), (3, 10, 6, 1.0)])
def test_matches_numpy(m, k, n, sparsity, portable):
    from graphopt import _C

    x, w, bias = _case(m, k, n, sparsity)
    sw = SparseWeight.from_dense(w)
    got = _C.sparse_linear(x, sw.indptr, sw.indices, sw.values, k, bias, "none", 2, portable)
    np.testing.assert_allclose(got, x @ w.T + bias, rtol=1e-4, atol=1e-4)
    got = _C.sparse_linear(x, sw.indptr, sw.indices, sw.values, k, None, "relu", 1, portable)
    np.testing.assert_allclose(got, np.maximum(x @ w.T, 0), rtol=1e-4, atol=1e-4)


def test_activation_epilogue_matches_torch_and_unsorted_noncontiguous_inputs():
    x, w, bias = _case(70, 1500, 31, 0.8, seed=1)
    sw = SparseWeight.from_dense(w)
    perm = np.random.default_rng(0).permutation(sw.nnz)
    rows = np.repeat(np.arange(31), np.diff(sw.indptr))
    order = np.lexsort((perm, rows))  # rows stay grouped, columns shuffled inside each row
    shuffled = SparseWeight(sw.shape, sw.indptr, sw.indices[order], sw.values[order])
    xt = np.asfortranarray(x)  # non-contiguous rows
    got = sparse_linear(xt, shuffled, bias, activation="gelu")
    want = torch.nn.functional.gelu(torch.from_numpy(x @ w.T + bias)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_errors():
    from graphopt import _C

    x, w, _ = _case(4, 8, 3, 0.5)
    sw = SparseWeight.from_dense(w)
    with pytest.raises(ValueError, match="in_features=9"):
        _C.sparse_linear(x, sw.indptr, sw.indices, sw.values, 9)
    with pytest.raises(ValueError, match="out of range"):
        _C.sparse_linear(x, sw.indptr, sw.indices + 8, sw.values, 8)
    with pytest.raises(ValueError, match="must be float32"):
        _C.sparse_linear(x.astype(np.float64), sw.indptr, sw.indices, sw.values, 8)
    with pytest.raises(ValueError, match="bias must have shape"):
        _C.sparse_linear(x, sw.indptr, sw.indices, sw.values, 8, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="unknown activation"):
        _C.sparse_linear(x, sw.indptr, sw.indices, sw.values, 8, None, "swish")
