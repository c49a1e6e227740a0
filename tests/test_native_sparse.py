"""The native runtime's "sparse_linear" step: the CSR kernel on edge shapes against the reference
interpreter (both of its paths: M <= 4 rows and 64-row tiles; K blocks of 1024; empty rows;
bias, every epilogue activation, residual in place or not, strided inputs), the plan-time
choice (cost model over density and rows M; sparse="auto" / "never" / "always"), pruned BERT
against the dense path and its choice flipping with sparsity, and the kernel's own validation
errors. ``make asan`` runs this file.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from native_util import assert_same

import graphopt
from graphopt import zoo
from graphopt.compile import BACKENDS
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph
from graphopt.ir.types import TensorType
from graphopt.ir.encodings import attach_sparse, sparse_weight
from graphopt.native.lower.sparse import crossover_density
from tests.conftest import tensor_leaves

pytestmark = pytest.mark.skipif("native" not in BACKENDS, reason="native backend not built")
torch.set_num_threads(1)


def linear_graph(m, k, n, sparsity, *, fused=False, bias=True, act="none", params=(),
                 transposed_x=False, seed=0, record=True):
    """``[fused_]linear(x, W, b[, r])`` with W of the given sparsity (CSR record attached)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[rng.random(w.shape) < sparsity] = 0
    g = Graph("sparse")
    if transposed_x:  # x arrives as [K, M] and is permuted: a strided operand
        xt = g.add_input("xt", TensorType((k, m), DType.float32))
        x = g.create_node("permute", [xt], {"perm": (1, 0)}).output
    else:
        x = g.add_input("x", TensorType((m, k), DType.float32))
    wv = g.add_constant(w, "w")
    bv = g.add_constant(rng.standard_normal(n).astype(np.float32), "b") if bias else None
    feeds = [torch.randn((k, m) if transposed_x else (m, k), generator=torch.Generator()
                         .manual_seed(seed))]
    if fused:
        r = g.add_input("r", TensorType((m, n), DType.float32))
        attrs = {"activation": act}
        if params:
            attrs["activation_params"] = tuple(params)
        node = g.create_node("fused_linear", [x, wv, bv, r], attrs)
        feeds.append(torch.randn(m, n, generator=torch.Generator().manual_seed(seed + 1)))
    else:
        node = g.create_node("linear", [x, wv, bv])
    g.set_outputs(node.outputs)
    if record:
        attach_sparse(wv)
    return g, feeds


def kernels(fn) -> list[str]:
    return [s.kernel for s in fn.plan.steps if s.kernel in ("gemm", "sparse_linear")]


@pytest.mark.parametrize("m,k,n,sparsity", [
    (1, 1, 1, 0.0), (1, 33, 17, 0.9), (2, 8, 3, 1.0), (4, 100, 40, 0.8), (5, 7, 9, 0.5),
    (64, 64, 64, 0.8), (65, 100, 9, 0.95), (130, 2500, 40, 0.9)])
def test_kernel_matches_reference(m, k, n, sparsity):
    g, feeds = linear_graph(m, k, n, sparsity)
    fn = graphopt.compile(g, backend="native", threads=2, sparse="always")
    assert kernels(fn) == ["sparse_linear"]
    assert_same(fn(*feeds), graphopt.run(g, *feeds))


@pytest.mark.parametrize("m", [3, 70])  # the row path and the tile path
@pytest.mark.parametrize("act,params", [("none", ()), ("relu", ()), ("gelu", ()),
                                        ("gelu_tanh", ()), ("silu", ()), ("sigmoid", ()),
                                        ("hardsigmoid", ()), ("clamp", (-0.5, 0.5)),
                                        ("leaky_relu", (0.1,))])
def test_fused_epilogue_with_residual(m, act, params):
    g, feeds = linear_graph(m, 300, 24, 0.85, fused=True, act=act, params=params)
    fn = graphopt.compile(g, backend="native", threads=2, sparse="always")
    assert kernels(fn) == ["sparse_linear"]
    assert_same(fn(*feeds), graphopt.run(g, *feeds))


def test_residual_in_place_strided_input_and_no_bias():
    # r dies at the node: the output reuses its buffer and the product accumulates onto it
    g = Graph("inplace")
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 48)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0
    x = g.add_input("x", TensorType((40, 48), DType.float32))
    wv = g.add_constant(w, "w")
    attach_sparse(wv)
    r = g.create_node("linear", [x, g.add_constant(np.ones((16, 48), np.float32), "w2"),
                                 None]).output
    y = g.create_node("fused_linear", [x, wv, None, r], {"activation": "relu"}).output
    g.set_outputs([y])
    fn = graphopt.compile(g, backend="native", threads=2)
    step = next(s for s in fn.plan.steps if s.kernel == "sparse_linear")
    assert step.ints[-1] == 1  # residual_in_c
    feeds = [torch.randn(40, 48)]
    assert_same(fn(*feeds), graphopt.run(g, *feeds))
    for m in (3, 70):
        g, feeds = linear_graph(m, 50, 20, 0.9, bias=False, transposed_x=True)
        fn = graphopt.compile(g, backend="native", threads=2, sparse="always")
        assert_same(fn(*feeds), graphopt.run(g, *feeds))


def test_choice_follows_density_and_rows():
    # rows <= 4 (GEMV regime) cross over at a higher density than 5-8 rows (a part-filled tile)
    assert crossover_density(1) > crossover_density(5) < crossover_density(128)
    for m in (1, 128):
        dense, _ = linear_graph(m, 64, 32, 0.5)
        sparse, _ = linear_graph(m, 64, 32, 0.9)
        assert kernels(graphopt.compile(dense, backend="native", threads=1)) == ["gemm"]
        assert kernels(graphopt.compile(sparse, backend="native", threads=1)) == ["sparse_linear"]
        assert kernels(graphopt.compile(sparse, backend="native", threads=1,
                                        sparse="never")) == ["gemm"]
    # density 0.15: CSR for one row, dense for five (between the two crossovers)
    d = 0.15
    assert crossover_density(5) < d < crossover_density(1)
    for m, want in ((1, "sparse_linear"), (5, "gemm")):
        g, _ = linear_graph(m, 200, 40, 0.0)
        w = g.constants["w"]
        w.data = np.where(np.random.default_rng(2).random(w.data.shape) < d, w.data, 0)
        w.data.flags.writeable = False
        attach_sparse(w)
        assert abs(sparse_weight(w).density - d) < 0.02
        assert kernels(graphopt.compile(g, backend="native", threads=1)) == [want]
    # without a record, auto stays dense even at 90% zeros; always still takes CSR
    g, _ = linear_graph(8, 64, 32, 0.9, record=False)
    assert kernels(graphopt.compile(g, backend="native", threads=1)) == ["gemm"]
    assert kernels(graphopt.compile(g, backend="native", threads=1,
                                    sparse="always")) == ["sparse_linear"]
    with pytest.raises(Exception, match="sparse must be one of"):
        graphopt.compile(g, backend="native", sparse="yes")


@pytest.fixture(scope="module")
def bert_seq64():
    """BERT, 2 layers, sequence 64 (64 rows per linear: CSR from ~71% sparsity), optimized."""
    model, args = zoo.get("bert", layers=2, seq=64)
    return graphopt.optimize(graphopt.trace(model, args), "default"), args


def _linear_names(graph) -> set[str]:
    return {n.name for n in graph.nodes if n.op in ("linear", "fused_linear")}


def _csr_names(fn) -> set[str]:
    return {s.name for s in fn.plan.steps if s.kernel == "sparse_linear"}


@pytest.mark.parametrize("sparsity", [0.8, 0.9])
def test_pruned_bert_sparse_plan_equals_dense_plan(bert_seq64, sparsity):
    graph, args = bert_seq64
    pruned = graphopt.prune(graph, "magnitude", sparsity=sparsity)
    auto = graphopt.compile(pruned, backend="native", threads=2)
    dense = graphopt.compile(pruned, backend="native", threads=2, sparse="never")
    linears = _linear_names(pruned)
    assert _csr_names(auto) == linears and len(linears) == 13  # 2 x (q k v o ffn1 ffn2) + pooler
    assert not _csr_names(dense)
    for got, want, ref in zip(tensor_leaves(auto(*args)), tensor_leaves(dense(*args)),
                              tensor_leaves(graphopt.run(pruned, *args))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_bert_choice_flips_with_sparsity_at_16_rows(traced_bert_small):
    # 16 rows: CSR only from ~84% sparsity (measured), so 50% and 80% stay dense, 90% does not;
    # the pooler sees one row (the [CLS] token): CSR from ~77%, so at 80% it alone switches
    graph = graphopt.optimize(traced_bert_small.graph, "default")
    args = traced_bert_small.args
    linears = _linear_names(graph)
    pooler = {n.name for n in graph.nodes if n.name in linears and n.output.type.shape == (1, 768)}
    assert len(pooler) == 1
    for sparsity, want in ((0.5, set()), (0.8, pooler), (0.9, linears)):
        pruned = graphopt.prune(graph, "magnitude", sparsity=sparsity)
        fn = graphopt.compile(pruned, backend="native", threads=1)
        assert _csr_names(fn) == want, sparsity
    torch.testing.assert_close(tensor_leaves(fn(*args)),
                               tensor_leaves(graphopt.run(pruned, *args)), rtol=1e-4, atol=1e-5)


def _plan_with_csr(indptr, indices, n=2, k=4, m=1):
    from graphopt import _C

    arrays = [np.asarray(indptr, np.int32), np.asarray(indices, np.int32),
              np.ones(len(indices), np.float32)]
    plan = _C.NativePlan(1)
    for a in arrays:
        plan.add_constant(a.ctypes.data, a.nbytes)
    operands = [(0, 0, 0), (0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 2, 0), None, None, None]
    plan.add_step("sparse_linear", "%my_linear", operands,
                  [m, n, k, len(indices), k, 0, 0], [0.0, 0.0])
    return arrays  # keep alive until here


def test_kernel_validates_csr_and_names_the_node():
    _plan_with_csr([0, 1, 2], [3, 0])  # valid, unsorted columns are fine
    with pytest.raises(ValueError, match=r"sparse_linear %my_linear: column 4 out of range"):
        _plan_with_csr([0, 1, 2], [4, 0])
    with pytest.raises(ValueError, match="indptr must run from 0 to nnz"):
        _plan_with_csr([0, 1, 3], [1, 0])
    with pytest.raises(ValueError, match="indptr decreases at row 1"):
        _plan_with_csr([0, 2, 1, 2], [1, 2], n=3)
    with pytest.raises(ValueError, match="needs the xt scratch"):
        _plan_with_csr([0, 1, 2], [3, 0], m=5)


@pytest.mark.skipif(os.environ.get("GRAPHOPT_DISABLE_AVX2") not in (None, "", "0"),
                    reason="already on the portable path")
def test_portable_path():
    """The same kernel tests with GRAPHOPT_DISABLE_AVX2=1 (portable dot and tile routines)."""
    env = dict(os.environ, GRAPHOPT_DISABLE_AVX2="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
           "kernel_matches or fused_epilogue or in_place"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=os.getcwd())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_measured_sparse_choice_is_cached_per_machine_and_followed_by_auto(tmp_path,
                                                                         monkeypatch):
    """sparse="measure" times each sparse linear both ways and files the result per machine
    (graphopt/native/lower/sparse_measure.py); "auto" then follows the measurement instead of
    the static cost model, in either direction."""
    import json

    from graphopt.native.lower import sparse_measure

    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sparse_measure, "ROUNDS", 3)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 96), torch.nn.ReLU()).eval()
    x = torch.randn(1, 256)
    pruned = graphopt.prune(graphopt.trace(model, (x,)), "magnitude", sparsity=0.9)
    want = graphopt.run(pruned, x)

    def kernels(mode):
        fn = graphopt.compile(pruned, backend="native", sparse=mode)
        torch.testing.assert_close(fn(x), want, rtol=1e-5, atol=1e-5)
        return [s.kernel for s in fn.plan.steps]

    measured = kernels("measure")
    path = tmp_path / "costs.json"
    data = json.loads(path.read_text())
    [entries] = data["machines"].values()
    [(key, entry)] = entries.items()
    assert key == "linear 96x256 density~0.10 rows 1 relu" and entry["sparse_ms"] > 0
    assert ("sparse_linear" in measured) == entry["csr_wins"]
    assert kernels("auto") == measured
    for verdict in (True, False):  # "auto" follows whatever this machine measured
        entry["csr_wins"] = verdict
        path.write_text(json.dumps(data))
        sparse_measure._CACHE = None  # a new process would read the file afresh
        assert ("sparse_linear" in kernels("auto")) == verdict
