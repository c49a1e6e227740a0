"""Sparse (CSR) records in the IR text: the printer marks ``sparse(nnz=N[, transposed])`` and the
parser rebuilds the record from the array, identical to the original; exactly the marked set
round-trips (also below mark_sparse's threshold); a native artifact keeps its sparse kernels;
bad markers are ParseErrors with a position."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphopt
from graphopt.compile import BACKENDS
from graphopt.errors import ParseError
from graphopt.prune.sparse import mark_sparse, sparse_weight

torch.set_num_threads(1)

MATMUL = """graph main(%x: f32[2, 6]) {
  const %k: f32[6, 4] sparse(nnz=3, transposed)
  const %w: f32[2, 4] sparse(nnz=2) = [[0.0, 1.5, 0.0, 0.0], [0.0, 0.0, 0.0, -2.0]]
  %y: f32[2, 4] = matmul(%x, %k)
  %z: f32[2, 2] = linear(%y, %w, None)
  return %z
}"""


def _mlp(width=32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, 4)).eval()
    return graphopt.trace(model, (torch.randn(2, 16),))


def _roundtrip(graph):
    text = str(graph)
    arrays = {name: v.data for name, v in graph.constants.items()}
    return text, graphopt.parse(text, arrays)


def _same_record(a, b):
    assert (a is None) == (b is None)
    if a is not None:
        assert a.shape == b.shape and a.transposed == b.transposed
        for field in ("indptr", "indices", "values"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_roundtrip_keeps_exactly_the_marked_records():
    pruned = graphopt.prune(_mlp(), "magnitude", sparsity=0.3, exclude=["4"])
    text, parsed = _roundtrip(pruned)
    assert "const %0.weight: f32[32, 16] sparse(nnz=358)" in text
    assert "%4.weight: f32[4, 32]\n" in text  # excluded: no record, no marker
    assert str(parsed) == text
    for name, value in pruned.constants.items():
        _same_record(sparse_weight(value), sparse_weight(parsed.constants[name]))
    # mark_sparse on parse would not round-trip: 30% is below its default threshold of 50%
    fresh = graphopt.parse(text.replace(" sparse(nnz=358)", "").replace(" sparse(nnz=717)", ""),
                           {n: v.data.copy() for n, v in pruned.constants.items()})
    assert mark_sparse(fresh) == {}


def test_transposed_and_inline_markers_parse_to_records():
    rng = np.random.default_rng(0)
    k = np.zeros((6, 4), np.float32)
    k[[0, 2, 5], [1, 3, 0]] = rng.standard_normal(3)
    graph = graphopt.parse(MATMUL, {"k": k})
    rk, rw = sparse_weight(graph.constants["k"]), sparse_weight(graph.constants["w"])
    assert rk.transposed and rk.shape == (4, 6) and rk.nnz == 3
    np.testing.assert_array_equal(rk.to_dense(), k.T)
    assert not rw.transposed and rw.nnz == 2
    assert str(graph) == MATMUL
    assert str(graphopt.parse(str(graph), {"k": k})) == MATMUL


@pytest.mark.parametrize("line,message", [
    ("const %k: f32[6, 4] sparse(nnz=4, transposed)", "marked sparse\\(nnz=4\\) but its data "
     "has 3 non-zeros"),
    ("const %k: f32[6, 4] sparse(count=3)", "expected 'nnz=' in sparse"),
    ("const %k: f32[6, 4] sparse(nnz=3, sorted)", "expected 'transposed'"),
    ("const %k: f32[6, 4] sparse(nnz=1.5)", "nnz must be a non-negative integer"),
])
def test_bad_markers_are_parse_errors(line, message):
    k = np.zeros((6, 4), np.float32)
    k[[0, 2, 5], [1, 3, 0]] = 1.0
    text = MATMUL.replace("const %k: f32[6, 4] sparse(nnz=3, transposed)", line)
    with pytest.raises(ParseError, match=message) as info:
        graphopt.parse(text, {"k": k})
    assert info.value.line == 2
    with pytest.raises(ParseError, match="needs a floating constant of rank >= 2"):
        graphopt.parse("graph g(%x: f32[3]) {\n  const %b: f32[3] sparse(nnz=1) = [0.0, 1.0, 0.0]"
                       "\n  %y: f32[3] = add(%x, %b)\n  return %y\n}")


@pytest.mark.skipif("native" not in BACKENDS, reason="native backend not built")
def test_native_artifact_keeps_sparse_kernels(tmp_path):
    pruned = graphopt.prune(_mlp(64), "magnitude", sparsity=0.9)
    fn = graphopt.compile(pruned, backend="native", threads=1)
    chosen = [s.kernel for s in fn.plan.steps if s.kernel in ("gemm", "sparse_linear")]
    assert chosen == ["sparse_linear"] * 3
    path = tmp_path / "mlp.native"
    fn.save(path)
    loaded = graphopt.native.load(path)
    assert [s.kernel for s in loaded.plan.steps] == [s.kernel for s in fn.plan.steps]
    x = torch.randn(2, 16)
    out = loaded(x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    torch.testing.assert_close(out, fn(x), rtol=0, atol=0)
