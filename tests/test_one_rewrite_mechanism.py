"""One rewrite mechanism (#16): every built-in pass rewrites through the rewriter, one by one.

For every registered pass, on a small graph where it fires at least twice: the pass report counts
each individual rewrite, and replaying the pass with a budget of ``k`` rewrites (what
``graphopt.bisect`` does) performs exactly ``k`` of them, each one a visible change of the graph,
every intermediate graph valid and (for the exact passes) numerically equal to the input. Then
the shared DCE / layout canonicalizer (graphopt/rewrite/dce.py, layout.py) against eager PyTorch
on real models, with the node counts the separate implementations gave before they were merged.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import graphopt
from graphopt import zoo
from graphopt.ir.graph import Graph
from graphopt.rewrite import Rewriter, eliminate_dead_code, layout_rules, track_rewrites
from graphopt.transform import PassManager, all_passes, create_pass, register_pass
from test_fold_qdq import BEFORE as QDQ  # the fold-qdq tests' graph: Q/DQ conv, pool, linear


def _traced(model: nn.Module, *args: torch.Tensor) -> Graph:
    torch.manual_seed(0)
    return graphopt.trace(model.eval(), args)


# ------------------------------------------------------------------ one small case per pass
CANON = """graph main(%x: f32[2, 3]) {
  const %one: f32[] = 1.0
  %r: f32[2, 3] = reshape(%x) {shape=[2, 3]}
  %m: f32[2, 3] = mul(%r, %one)
  %p: f32[3, 2] = permute(%m) {perm=[1, 0]}
  %t: f32[2, 3] = permute(%p) {perm=[1, 0]}
  %a: f32[6] = reshape(%t) {shape=[6]}
  %b: f32[3, 2] = reshape(%a) {shape=[3, 2]}
  return %b
}"""

CSE = """graph main(%x: f32[4]) {
  const %a: f32[] = 2.0
  const %b: f32[] = 2.0
  %m: f32[4] = mul(%x, %a)
  %n: f32[4] = mul(%x, %b)
  %e1: f32[4] = exp(%m)
  %e2: f32[4] = exp(%n)
  %s: f32[4] = add(%e1, %e2)
  return %s
}"""

DCE = """graph main(%x: f32[4]) {
  const %unused: f32[] = 2.0
  const %c: f32[] = 3.0
  %d1: f32[4] = exp(%x)
  %d2: f32[4] = mul(%d1, %c)
  %y: f32[4] = relu(%x)
  return %y
}"""

FOLD = """graph main(%x: i64[1, 8]) {
  const %arange: i64[8] = [0, 1, 2, 3, 4, 5, 6, 7]
  const %two: i64[] = 2
  %pos: i64[8] = mul(%arange, %two)
  %ids: i64[1, 8] = unsqueeze(%pos) {axis=0}
  %y: i64[1, 8] = add(%x, %ids)
  return %y
}"""


def _qdq_graph() -> Graph:
    rng = np.random.default_rng(0)
    return graphopt.parse(QDQ, {"w_q": rng.integers(-127, 128, (4, 2, 3, 3)).astype(np.int8),
                                "w2_q": rng.integers(-127, 128, (3, 16)).astype(np.int8)})


class _TwoConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        for bn in (self.b1, self.b2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))


class _MatMulAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(8, 6)), nn.Parameter(torch.randn(6))
        self.w2 = nn.Parameter(torch.randn(6, 5))

    def forward(self, x):
        return torch.tanh(x @ self.w1 + self.b1) @ self.w2


class _HandNorms(nn.Module):
    def forward(self, x):
        for _ in range(2):
            d = x - x.mean(-1, keepdim=True)
            x = torch.tanh(d / (d * d).mean(-1, keepdim=True).add(1e-5).sqrt())
        return x


class _HandGelu(nn.Module):
    def forward(self, x):
        for _ in range(2):
            x = 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0))) - 0.1
        return x


class _HandAttention(nn.Module):
    def forward(self, q, k, v):
        for _ in range(2):
            p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
            q = p @ v
        return q


class _TwoSdpa(nn.Module):
    def forward(self, q, k, v):
        for _ in range(2):
            q = nn.functional.scaled_dot_product_attention(q, k, v)
        return q


class _Transposes(nn.Module):
    def forward(self, a, b):
        return a.transpose(-1, -2) @ b + a @ b.transpose(-1, -2).transpose(-1, -2) * 0.5


class _LinearRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        return torch.relu(self.l2(torch.relu(self.l1(x))))


def _x(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


# pass -> (graph factory, inputs, numerically exact per rewrite?)
CASES = {
    "canonicalize": (lambda: graphopt.parse(CANON), lambda: (_x(2, 3),), True),
    "cse": (lambda: graphopt.parse(CSE), lambda: (_x(4),), True),
    "dce": (lambda: graphopt.parse(DCE), lambda: (_x(4),), True),
    "fold-constants": (lambda: graphopt.parse(FOLD), lambda: (torch.arange(8).view(1, 8),), True),
    "fold-qdq": (_qdq_graph, lambda: (_x(1, 2, 4, 4),), False),  # u8 math: within one code
    "fold-batchnorm": (lambda: _traced(_TwoConvBN(), _x(1, 2, 5, 5)),
                       lambda: (_x(1, 2, 5, 5),), True),
    "fuse-matmul-add": (lambda: _traced(_MatMulAdd(), _x(3, 8)), lambda: (_x(3, 8),), True),
    "fuse-layernorm": (lambda: _traced(_HandNorms(), _x(2, 3, 8)), lambda: (_x(2, 3, 8),), True),
    "fuse-gelu": (lambda: _traced(_HandGelu(), _x(2, 8)), lambda: (_x(2, 8),), True),
    "fuse-attention": (lambda: _traced(_HandAttention(), _x(1, 2, 4, 8), _x(1, 2, 4, 8),
                                       _x(1, 2, 4, 8)),
                       lambda: (_x(1, 2, 4, 8), _x(1, 2, 4, 8) + 1, _x(1, 2, 4, 8) - 1), True),
    "fold-transpose-matmul": (lambda: _traced(_Transposes(), _x(3, 3), _x(3, 3)),
                              lambda: (_x(3, 3), _x(3, 3) * 2), True),
    "fuse-activation": (lambda: _traced(_LinearRelu(), _x(2, 8)), lambda: (_x(2, 8),), True),
    "attention-bf16": (lambda: _traced(_TwoSdpa(), _x(1, 2, 4, 8), _x(1, 2, 4, 8),
                                       _x(1, 2, 4, 8)),
                       lambda: (_x(1, 2, 4, 8), _x(1, 2, 4, 8) + 1, _x(1, 2, 4, 8) - 1),
                       False),  # bf16 rounding: not exact
}

# Passes whose rewrites happen inside graphopt.quant / graphopt.prune: those libraries make every
# change through the rewriter's edit API (Rewriter.edit), like dce / cse / fold-constants do
# (one layer quantized, one channel group removed, one weight masked, ...).
LIBRARY_CASES = {
    "prune-channels": {"ratio": 0.5},
    "prune-magnitude": {"sparsity": 0.5},
    "quantize-dynamic": {},
    "quantize-weights": {"bits": 8, "block_size": 16},
    "quantize-static": None,  # needs a calibration file: built in the test
    "share-weights": {"bits": 3},
}


def test_every_registered_pass_has_a_case():
    builtin = {
        n for n, p in all_passes().items() if p.factory.__module__.startswith("graphopt.passes.")
    }
    assert builtin == set(CASES) | set(LIBRARY_CASES)


def _outputs(graph: Graph, args) -> list[torch.Tensor]:
    out = graphopt.run(graph, *args)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _check_rewrite_by_rewrite(name: str, graph: Graph, args, exact: bool, **options):
    full = graph.clone()
    record = PassManager([create_pass(name, **options)], verify=True).run(full).records[0]
    assert record.changed, f"{name} does not fire on its test graph"
    total = sum(record.rewrites.values())
    assert total >= 2, f"{name} reported {total} individual rewrite(s); the case needs >= 2"
    reference = _outputs(graph, args)
    texts = []
    for k in range(total + 1):
        g = graph.clone()
        with track_rewrites(k) as log:
            create_pass(name, **options).run(g)
        assert log.count == k, f"{name} with a budget of {k} did {log.count} rewrites"
        g.verify()
        texts.append(str(g))
        if exact:
            for a, e in zip(_outputs(g, args), reference):
                torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
    assert texts[0] == str(graph)
    assert texts[-1] == str(full)
    for k in range(total):
        assert texts[k] != texts[k + 1], f"{name}: rewrite #{k + 1} changed nothing"
    # the pass report's per-rule counts are the individual events
    with track_rewrites() as log:
        create_pass(name, **options).run(graph.clone())
    assert dict(log.per_rule()) == record.rewrites


@pytest.mark.parametrize("name", sorted(CASES))
def test_pass_is_bisectable_rewrite_by_rewrite(name):
    factory, inputs, exact = CASES[name]
    _check_rewrite_by_rewrite(name, factory(), inputs(), exact)


@pytest.mark.parametrize("name", sorted(LIBRARY_CASES))
def test_library_pass_is_bisectable_rewrite_by_rewrite(name, tmp_path):
    graph = _traced(_LinearRelu(), _x(4, 8))
    if name == "quantize-weights":
        graph = _traced(nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16)), _x(4, 32))
    if name == "prune-channels":  # two hidden layers: two channel groups (one rewrite each)
        graph = _traced(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                                      nn.Linear(8, 4)), _x(4, 8))
    options = LIBRARY_CASES[name]
    if options is None:
        path = tmp_path / "calib.npz"
        np.savez(path, **{graph.inputs[0].name: np.random.default_rng(0).standard_normal(
            (8, 4, 8)).astype(np.float32)})
        options = {"calibration": str(path)}
    args = (_x(4, 32),) if name == "quantize-weights" else (_x(4, 8),)
    _check_rewrite_by_rewrite(name, graph, args, False, **options)


# ------------------------------------------------------------- bisect through the edit API
@register_pass("test-edit-api-bad-scale", replace=True)
class _BadScale:
    """Walks the graph itself and edits through Rewriter.edit; the 2nd rewrite is wrong."""

    def run(self, graph: Graph) -> bool:
        rw = Rewriter(graph)
        for i, node in enumerate([n for n in graph.nodes if n.op == "relu"]):
            if not rw.edit("relu-to-scaled-relu" if i == 1 else "relu-to-relu", node):
                break
            x = node.inputs[0]
            y = rw.op.relu(x)
            if i == 1:
                y = rw.op.mul(y, rw.constant(1.5, dtype=x.dtype))
            rw.replace_value(node.outputs[0], y)
            rw.erase_node(node)
        return rw.stats.changed


def test_bisect_finds_the_bad_edit_of_a_hand_walk_pass():
    graph = graphopt.parse("""graph main(%x: f32[4]) {
  %a: f32[4] = relu(%x)
  %b: f32[4] = relu(%a)
  %c: f32[4] = relu(%b)
  return %c
}""")
    result = graphopt.bisect(graph, "cse,test-edit-api-bad-scale,dce", [_x(4)])
    assert result.pass_name == "test-edit-api-bad-scale"
    assert (result.rewrite_index, result.rewrites_in_pass) == (2, 3)
    assert result.rule == "relu-to-scaled-relu" and result.node == "%b = relu"


# ------------------------------------------------- the shared DCE / layout canonicalizer
def test_one_dce_counts_each_removal_and_keeps_impure_nodes():
    graph = graphopt.parse(DCE)
    stats = eliminate_dead_code(graph)
    assert stats.applied() == {"dead-node": 2, "dead-constant": 2}
    assert graph.op_histogram() == {"relu": 1} and not graph.constants
    assert not eliminate_dead_code(graph).changed


def test_canonicalize_runs_the_shared_layout_rules():
    from graphopt.passes.canonicalize import canonicalize_rules

    shared = {type(r) for r in layout_rules()}
    assert shared <= {type(r) for r in canonicalize_rules()}
    out, report = graphopt.optimize(graphopt.parse(CANON), "canonicalize", report=True)
    assert report.rewrites() == {"identity-reshape": 1, "mul-one": 1, "permute-permute": 1,
                                 "reshape-reshape": 1}
    assert out.op_histogram() == {"reshape": 1}


def test_onnx_import_cleanup_uses_the_shared_rules_on_adapters_only():
    """Contrib attention import adds head split/merge adapters; they cancel against the model's
    own layout ops through the shared layout rules, while the model's other layout ops stay."""
    q, k, v = (_x(1, 4, 16) for _ in range(3))
    graph = graphopt.parse("""graph main(%q: f32[1, 4, 16], %k: f32[1, 4, 16], %v: f32[1, 4, 16]) {
  %q4: f32[1, 4, 2, 8] = reshape(%q) {shape=[1, 4, 2, 8]}
  %qh: f32[1, 2, 4, 8] = permute(%q4) {perm=[0, 2, 1, 3]}
  %k4: f32[1, 4, 2, 8] = reshape(%k) {shape=[1, 4, 2, 8]}
  %kh: f32[1, 2, 4, 8] = permute(%k4) {perm=[0, 2, 1, 3]}
  %v4: f32[1, 4, 2, 8] = reshape(%v) {shape=[1, 4, 2, 8]}
  %vh: f32[1, 2, 4, 8] = permute(%v4) {perm=[0, 2, 1, 3]}
  %o: f32[1, 2, 4, 8] = attention(%qh, %kh, %vh, None) {scale=0.35355339}
  %ot: f32[1, 4, 2, 8] = permute(%o) {perm=[0, 2, 1, 3]}
  %y: f32[1, 4, 16] = reshape(%ot) {shape=[1, 4, 16]}
  %z: f32[1, 16, 4] = permute(%y) {perm=[0, 2, 1]}
  return %z
}""")
    back = graphopt.from_onnx(graphopt.to_onnx(graph, contrib_ops=True))
    torch.testing.assert_close(graphopt.run(back, q, k, v), graphopt.run(graph, q, k, v),
                               rtol=1e-4, atol=1e-5)
    assert back.op_histogram().get("permute", 0) >= 1  # the model's own [0, 2, 1] stays
    assert "attention" in back.op_histogram()


# (model, options, pipeline) -> (nodes, rewrites) measured at the commit before the DCE, the
# layout rules and the folder were unified (the optimized IR text was identical too). GPT-2's
# rewrites went down by one with canonicalize's slice-of-concat rule (one rewrite where the
# constant folder and a layout rule took two), same nodes.
BEFORE_UNIFICATION = {
    ("mlp", (("depth", 3), ("width", 64)), "canonicalize,cse,fold-constants,dce"): (5, 0),
    ("mlp", (("depth", 3), ("width", 64)), "default"): (3, 2),
    ("mobilenetv2", (("size", 32),), "canonicalize,cse,fold-constants,dce"): (203, 0),
    ("mobilenetv2", (("size", 32),), "default"): (59, 404),
    ("gpt2", (("layers", 2), ("seq", 16)), "canonicalize,cse,fold-constants,dce"): (77, 89),
    ("gpt2", (("layers", 2), ("seq", 16)), "default"): (35, 140),
}


@pytest.mark.parametrize("name", ["mlp", "mobilenetv2", "gpt2"])
def test_unified_cleanup_keeps_real_models_equal_to_eager_and_to_before(name):
    cases = {k: v for k, v in BEFORE_UNIFICATION.items() if k[0] == name}
    options = dict(next(iter(cases))[1])
    model, args = zoo.get(name, **options)
    graph = graphopt.trace(model, args)
    with torch.no_grad():
        expected = model(*args)
    expected = expected[0] if isinstance(expected, (tuple, list)) else expected
    expected = getattr(expected, "logits", expected)
    for (_, _, pipeline), (nodes, rewrites) in cases.items():
        out, report = graphopt.optimize(graph, pipeline, report=True)
        torch.testing.assert_close(_outputs(out, args)[0], expected, rtol=1e-4, atol=1e-4)
        assert (len(out.nodes), sum(report.rewrites().values())) == (nodes, rewrites), pipeline
