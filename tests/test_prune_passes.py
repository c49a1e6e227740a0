"""prune-channels / prune-magnitude passes (golden IR), masks, CSR records, FLOPs counter,
importance criteria, errors, and the ``graphopt prune`` CLI."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import graphopt
from graphopt.cli import main
from graphopt.errors import PassError
from graphopt.prune import count_flops
from graphopt.prune.masks import magnitude_masks
from graphopt.prune.sparse import mark_sparse, sparse_linear, sparse_weight
from graphopt.prune.structured import PruneError

torch.set_num_threads(1)

RESIDUAL = """graph main(%x: f32[1, 3, 8, 8]) {
  const %w1: f32[4, 3, 3, 3]
  const %w2: f32[4, 4, 3, 3]
  const %w3: f32[10, 4, 1, 1]
  %a: f32[1, 4, 8, 8] = conv(%x, %w1, None) {padding=[1, 1]}
  %b: f32[1, 4, 8, 8] = conv(%a, %w2, None) {padding=[1, 1]}
  %c: f32[1, 4, 8, 8] = add(%a, %b)
  %y: f32[1, 10, 8, 8] = conv(%c, %w3, None)
  return %y
}"""


def residual_graph() -> graphopt.Graph:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w1[[0, 2]] *= 0.01  # the two weakest stream channels
    constants = {"w1": w1, "w2": rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.1,
                 "w3": rng.standard_normal((10, 4, 1, 1)).astype(np.float32)}
    return graphopt.parse(RESIDUAL, constants)


def test_prune_channels_golden_ir():
    graph = residual_graph()
    pruned = graphopt.optimize(graph, "prune-channels{ratio=0.5}")
    assert str(pruned) == """graph main(%x: f32[1, 3, 8, 8]) {
  const %w1: f32[2, 3, 3, 3]
  const %w2: f32[2, 2, 3, 3]
  const %w3: f32[10, 2, 1, 1]
  %a: f32[1, 2, 8, 8] = conv(%x, %w1, None) {dilation=[1], groups=1, padding=[1, 1], stride=[1]}
  %b: f32[1, 2, 8, 8] = conv(%a, %w2, None) {dilation=[1], groups=1, padding=[1, 1], stride=[1]}
  %c: f32[1, 2, 8, 8] = add(%a, %b)
  %y: f32[1, 10, 8, 8] = conv(%c, %w3, None) {dilation=[1], groups=1, padding=[0], stride=[1]}
  return %y
}"""
    np.testing.assert_array_equal(pruned.constants["w1"].data, graph.constants["w1"].data[[1, 3]])
    np.testing.assert_array_equal(pruned.constants["w3"].data,
                                  graph.constants["w3"].data[:, [1, 3]])


def test_prune_magnitude_pass_changes_data_and_marks_sparse_weights():
    graph = residual_graph()
    pruned = graphopt.optimize(graph, "prune-magnitude{sparsity=0.5}")
    assert str(pruned) == str(graph).replace(
        "const %w1: f32[4, 3, 3, 3]", "const %w1: f32[4, 3, 3, 3] sparse(nnz=54)").replace(
        "const %w2: f32[4, 4, 3, 3]", "const %w2: f32[4, 4, 3, 3] sparse(nnz=72)").replace(
        "const %w3: f32[10, 4, 1, 1]", "const %w3: f32[10, 4, 1, 1] sparse(nnz=20)")
    for name in ("w1", "w2", "w3"):
        data = pruned.constants[name].data
        assert (data == 0).sum() == round(0.5 * data.size)
        assert sparse_weight(pruned.constants[name]).sparsity == pytest.approx(0.5, abs=0.1)
    assert sparse_weight(graph.constants["w1"]) is None  # the input graph is untouched


def test_pass_errors_are_explained():
    with pytest.raises(PassError, match="needs training batches"):
        graphopt.optimize(residual_graph(), "prune-channels{flops=0.3,importance=taylor}")
    with pytest.raises(PruneError, match="cannot remove 95% of the FLOPs"):
        graphopt.prune(residual_graph(), flops=0.95)


# ------------------------------------------------------------------------------------ masks
def _mlp_graph(width=32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, 4)).eval()
    return graphopt.trace(model, (torch.randn(2, 16),))


def test_layer_and_global_sparsity_and_user_scores():
    graph = _mlp_graph()
    layer = magnitude_masks(graph, 0.75, "layer")
    assert all((~m).sum() == round(0.75 * m.size) for m in layer.values())
    glob = magnitude_masks(graph, 0.75, "global")
    total = sum(m.size for m in glob.values())
    assert sum((~m).sum() for m in glob.values()) == round(0.75 * total)
    # global: one threshold, so per-layer sparsity differs
    assert len({round(float((~m).mean()), 3) for m in glob.values()}) > 1
    w = graph.constants["2.weight"].data
    scores = {"2.weight": np.arange(w.size, dtype=np.float64).reshape(w.shape)}
    pruned, report = graphopt.prune(graph, "magnitude", sparsity=0.5, scores=scores,
                                    exclude=["0.*", "4"], report=True)
    data = pruned.constants["2.weight"].data.ravel()
    assert not data[: w.size // 2].any() and data[w.size // 2:].all()  # lowest scores dropped
    assert pruned.constants["0.weight"].data.all()  # excluded
    assert [r.name for r in report.weights] == ["2.weight"]


def test_csr_record_follows_the_array():
    graph = _mlp_graph()
    pruned = graphopt.prune(graph, "magnitude", sparsity=0.9)
    value = pruned.constants["2.weight"]
    sw = sparse_weight(value)
    np.testing.assert_array_equal(sw.to_dense(), value.data)
    assert sw.nnz == np.count_nonzero(value.data) and sw.density == pytest.approx(0.1, abs=0.01)
    clone = pruned.clone()
    assert sparse_weight(clone.constants["2.weight"]) is sw  # clones share the array
    more = graphopt.prune(pruned, ratio=0.5)  # structured pruning replaces the arrays
    assert sparse_weight(more.constants["2.weight"]) is None
    assert set(mark_sparse(more, 0.5)) == {"0.weight", "2.weight", "4.weight"}
    x = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
    bias = pruned.constants["2.bias"].data
    np.testing.assert_allclose(sparse_linear(x, sw, bias), x @ value.data.T + bias,
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ flops
def test_flops_counter():
    text = """graph main(%x: f32[2, 16], %img: f32[1, 8, 10, 10], %q: f32[1, 4, 6, 8]) {
  const %w: f32[32, 16]
  const %k: f32[16, 2, 3, 3]
  %y: f32[2, 32] = linear(%x, %w, None)
  %r: f32[2, 32] = relu(%y)
  %c: f32[1, 16, 8, 8] = conv(%img, %k, None) {groups=4}
  %a: f32[1, 4, 6, 8] = attention(%q, %q, %q, None)
  %t: f32[1, 6, 4, 8] = permute(%a) {perm=[0, 2, 1, 3]}
  return %r, %c, %t
}"""
    rng = np.random.default_rng(0)
    graph = graphopt.parse(text, {"w": rng.random((32, 16), np.float32),
                                  "k": rng.random((16, 2, 3, 3), np.float32)})
    count = count_flops(graph)
    assert count.by_node["y"] == 2 * 2 * 16 * 32
    assert count.by_node["r"] == 64
    assert count.by_node["c"] == 2 * (16 * 8 * 8) * (2 * 3 * 3)
    assert count.by_node["a"] == 2 * 2 * (4 * 6 * 6) * 8 + 5 * 4 * 6 * 6
    assert "t" not in count.by_node and count.total == sum(count.by_node.values())


def test_flops_with_a_symbolic_batch_are_per_sample_unless_bound():
    model = nn.Sequential(nn.Linear(8, 4)).eval()
    graph = graphopt.trace(model, (torch.randn(3, 8),),
                           dynamic_shapes=({0: torch.export.Dim("batch")},))
    batch = str(graph.inputs[0].type.shape[0])
    assert count_flops(graph).total == 2 * 8 * 4 + 4
    assert count_flops(graph, bindings={batch: 5}).total == 5 * (2 * 8 * 4 + 4)


# ------------------------------------------------------------------------------ importance
class BnNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_bn_and_taylor_importance():
    torch.manual_seed(0)
    model = BnNet().eval()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([1.0, 0.01, 1.0, 0.02, 1.0, 1.0, 0.03, 1.0]))
    graph = graphopt.trace(model, (torch.randn(2, 3, 8, 8),))
    pruned, report = graphopt.prune(graph, ratio=3 / 8, importance="bn", report=True,
                                    optimize=False)
    kept = pruned.constants["bn.weight"].data
    np.testing.assert_array_equal(kept, np.ones(5, np.float32))
    assert report.pruned_groups()[0].importance == "bn"
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    pruned, report = graphopt.prune(graph, ratio=0.5, importance="taylor", data=data,
                                    report=True)
    # returned optimized: the batch norm folded into the pruned conv
    [conv] = [n for n in pruned.nodes if n.op in ("conv", "fused_conv")]
    assert conv.inputs[1].type.shape == (4, 3, 3, 3)
    assert not any(n.op == "batch_norm" for n in pruned.nodes)
    assert report.pruned_groups()[0].importance == "taylor"


# ------------------------------------------------------------------------------------- CLI
def test_cli_prune(tmp_path, capsys):
    out = tmp_path / "mlp.onnx"
    code = main(["prune", "zoo:mlp?width=32&depth=3", "-o", str(out), "--flops", "0.4"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "pruned 2 groups" in text and "graph output" in text
    onnx.checker.check_model(str(out))
    code = main(["prune", "zoo:mlp?width=32&depth=3", "-o", str(tmp_path / "m.graphopt"),
                 "--sparsity", "0.8", "--scope", "global", "-q"])
    assert code == 0
    code = main(["prune", "zoo:mlp?width=32&depth=3", "-o", str(out), "--flops", "0.99"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot remove 99% of the FLOPs" in err


def test_round_to_keeps_vector_friendly_widths():
    graph = _mlp_graph(width=64)
    pruned = graphopt.optimize(graph, "prune-channels{ratio=0.3,round_to=8}")
    assert pruned.constants["0.weight"].type.shape == (48, 16)  # 64 - 19 = 45 -> 48
    assert graphopt.prune(graph, ratio=0.3).constants["0.weight"].type.shape == (45, 16)


def test_finetune_feature_matching_on_shared_values():
    from graphopt.prune.finetune import _auto_features
    from tests.test_prune_dependency import SelfAttention

    torch.manual_seed(0)
    teacher = graphopt.trace(SelfAttention().eval(), (torch.randn(4, 5, 32),))
    student = graphopt.prune(teacher, ratio=0.5)
    shared = _auto_features(student, teacher)
    assert shared and all(teacher.constants.get(n) is None for n in shared)
    data = [torch.randn(4, 5, 32) for _ in range(3)]
    tuned = graphopt.finetune(student, data, teacher=teacher, feature_matching=True, epochs=2,
                              lr=1e-3, progress=False)
    assert {n: v.type for n, v in tuned.constants.items()} == \
        {n: v.type for n, v in student.constants.items()}  # structure kept, weights trained
    assert [(n.op, [o.type for o in n.outputs]) for n in tuned.nodes] == \
        [(n.op, [o.type for o in n.outputs]) for n in student.nodes]
    assert not np.array_equal(tuned.constants["o.weight"].data, student.constants["o.weight"].data)


def test_prune_and_finetune_return_optimized_graphs():
    """Issue #24: compression entry points hand back the graph as it will run (batch norms
    folded, activations fused), so the next step (quantize, compile, benchmark) starts from
    it; magnitude pruning zeroes the folded arrays, so their CSR records survive."""
    from graphopt.prune.sparse import sparse_weight

    torch.manual_seed(0)
    graph = graphopt.trace(BnNet().eval(), (torch.randn(2, 3, 8, 8),))
    assert any(n.op == "batch_norm" for n in graph.nodes)
    for pruned in (graphopt.prune(graph, ratio=0.25),
                   graphopt.prune(graph, "magnitude", sparsity=0.5)):
        assert not any(n.op == "batch_norm" for n in pruned.nodes)
        assert str(graphopt.optimize(pruned, "default")) == str(pruned)  # nothing left to do
    sparse = graphopt.prune(graph, "magnitude", sparsity=0.5)
    [conv] = [n for n in sparse.nodes if n.op in ("conv", "fused_conv")]
    assert sparse_weight(conv.inputs[1]) is not None
    raw = graphopt.prune(graph, ratio=0.25, optimize=False)
    assert any(n.op == "batch_norm" for n in raw.nodes)
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    tuned = graphopt.finetune(raw, data, loss=torch.nn.functional.cross_entropy, epochs=1,
                              progress=False)
    assert not any(n.op == "batch_norm" for n in tuned.nodes)
