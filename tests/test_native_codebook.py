"""Codebook-shared weights on the native runtime (issue #17): decoded at plan time by default,
or read through the codebook inside the product with ``codebook="lookup"`` ("linear_codebook",
csrc/rt_codebook_gemv.cpp): same results as the reference, a quarter of the weight memory, on
every kernel path (AVX-512 register tables of 1 or 2 x 32 entries, the gather beyond, AVX2,
portable; the last two in a subprocess with the wider ISAs disabled)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import graphopt
from graphopt import _extension
from graphopt.errors import GraphoptError

_C = _extension.load()


class Residual(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.inner = torch.nn.Linear(width, width)
        self.head = torch.nn.Linear(width, 10)

    def forward(self, x):
        return self.head(torch.relu(self.inner(x) + x))


def _shared(bits: int, width: int = 96, sparsity: float = 0.5, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(40, width), torch.nn.GELU(), Residual(width))
    batch = torch.export.Dim("batch", min=1, max=64)
    graph = graphopt.trace(model, (torch.randn(2, 40),), dynamic_shapes=({0: batch},))
    graph = graphopt.optimize(graph, "default")
    pruned = graphopt.prune(graph, "magnitude", sparsity=sparsity)
    return graphopt.quantize(pruned, "codebook", bits=bits)


def _kernels(module) -> list[str]:
    return [line.split()[1] for line in module._last.describe().splitlines()
            if line.strip()[:1].isdigit()]


@pytest.mark.parametrize("bits", [2, 4, 5, 7])  # tables of 5, 17, 33 (two registers), 129
@pytest.mark.parametrize("rows", [1, 3, 6])  # 6: two blocks of rows
def test_lookup_matches_the_reference(bits, rows):
    shared = _shared(bits)
    x = torch.randn(rows, 40)
    expected = graphopt.run(shared, x).numpy()
    assert np.abs(expected).max() > 0.1
    lookup = graphopt.compile(shared, backend="native", codebook="lookup")
    np.testing.assert_allclose(np.asarray(lookup(x)), expected, rtol=1e-5, atol=1e-5)
    kernels = _kernels(lookup)
    assert kernels.count("linear_codebook") == 3 and "gemm" not in kernels
    assert "codebook_decode" not in kernels  # nothing decodes: the weights stay indices


def test_lookup_keeps_a_quarter_of_the_weight_bytes():
    shared = _shared(4, width=256)
    x = torch.randn(1, 40)
    decode = graphopt.compile(shared, backend="native", codebook="decode")
    lookup = graphopt.compile(shared, backend="native", codebook="lookup")
    np.testing.assert_allclose(np.asarray(lookup(x)), np.asarray(decode(x)), rtol=1e-5,
                               atol=1e-5)
    decoded = sum(a.nbytes for a in decode._last.constants)
    looked_up = sum(a.nbytes for a in lookup._last.constants)
    assert looked_up < 0.3 * decoded


def test_a_shared_weight_read_elsewhere_is_decoded():
    """A decode whose value is also a graph output (or read by a non-linear) is not virtual."""
    g = graphopt.parse("""graph g(%x: f32[2, 8]) {
      const %i: u8[4, 8]
      const %c: f32[3] = [-1.0, 0.5, 2.0]
      %w: f32[4, 8] = codebook_decode(%i, %c)
      %y: f32[2, 4] = linear(%x, %w, None)
      return %y, %w
    }""", {"i": np.random.default_rng(0).integers(0, 4, (4, 8)).astype(np.uint8)})
    x = torch.randn(2, 8)
    expected = graphopt.run(g, x)
    out = graphopt.compile(g, backend="native", codebook="lookup")(x)
    for got, want in zip(out, expected):
        np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-6, atol=1e-6)


def test_an_index_past_the_codebook_is_refused_when_the_plan_is_built():
    g = graphopt.parse("""graph g(%x: f32[1, 4]) {
      const %i: u8[2, 4] = [[0, 1, 2, 3], [3, 3, 9, 0]]
      const %c: f32[3] = [-1.0, 0.5, 2.0]
      %w: f32[2, 4] = codebook_decode(%i, %c)
      %y: f32[1, 2] = linear(%x, %w, None)
      return %y
    }""")
    with pytest.raises(GraphoptError, match="past the codebook"):
        graphopt.compile(g, backend="native", codebook="lookup")
    with pytest.raises(GraphoptError, match="codebook must be one of"):
        graphopt.compile(g, backend="native", codebook="sometimes")


def test_artifacts_keep_the_codebook_mode(tmp_path):
    from graphopt.native import load

    shared = _shared(4)
    module = graphopt.compile(shared, backend="native", codebook="lookup")
    path = tmp_path / "m.npz"
    module.save(path)
    loaded = load(path)
    assert loaded.codebook == "lookup"
    x = torch.randn(3, 40)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(module(x)), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("disabled", ["GRAPHOPT_DISABLE_AVX512", "GRAPHOPT_DISABLE_AVX2"])
def test_narrower_kernel_paths(disabled):
    """This file again with the AVX-512 kernels (then AVX2 too) turned off, in a subprocess;
    skipped where this run already is on that path."""
    features = _C.cpu_features()
    if disabled == "GRAPHOPT_DISABLE_AVX512" and not features.get("avx512f"):
        pytest.skip("no AVX-512 here: the AVX2 path is this run's own")
    if disabled == "GRAPHOPT_DISABLE_AVX2" and not features.get("avx2"):
        pytest.skip("no AVX2 here: the portable path is this run's own")
    environ = dict(os.environ, **{disabled: "1"})
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k",
         "not narrower_kernel_paths and not auto_reads"],  # (auto_reads: a choice, not a path)
        env=environ, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_auto_reads_large_weights_through_the_codebook():
    """auto: the lookup for a weight of 8 MiB or more as float32 (at <= 16 rows), the decode
    for one that stays in the caches."""
    from graphopt.native.lower.codebook import AUTO_MAX_ROWS

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2048, 1024), torch.nn.ReLU(),
                                torch.nn.Linear(1024, 64))
    for rows, large in [(1, True), (AUTO_MAX_ROWS + 1, False)]:
        x = torch.randn(rows, 2048)
        shared = graphopt.quantize(graphopt.trace(model, (x,)), "codebook", bits=4)
        module = graphopt.compile(shared, backend="native")
        kernels = _kernels(module)
        assert kernels.count("linear_codebook") == (1 if large else 0)
        np.testing.assert_allclose(np.asarray(module(x)), graphopt.run(shared, x).numpy(),
                                   rtol=1e-4, atol=1e-4)
