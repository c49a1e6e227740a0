"""The coupled-dimension analysis on the hard cases, checked by *exact* pruning.

Each test zeroes the producing weights of some channels in a small torch model (so those channels
are exactly 0 in every tensor that carries them), traces it, prunes exactly those channels
(importance = L1 of the producing rows), and asserts the pruned graph computes the same outputs
as the unpruned model. A missed coupling gives a shape error or a wrong output; an over-eager
one prunes a channel that was not zero. Negative tests check that groups touching graph outputs
or non-prunable consumers are left alone, with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphopt
from graphopt.prune.dependency import DependencyGraph

torch.set_num_threads(1)


def producer_l1(analysis, group):
    """Importance from the producing weights only: channels with zero rows score 0."""
    every = np.sort(np.concatenate([group.channels, group.frozen_channels]))
    total = np.zeros(len(every))
    for m in group.members:
        if m.role != "out":
            continue
        data = np.abs(m.value.data.astype(np.float64))
        per_pos = data.sum(axis=tuple(i for i in range(data.ndim) if i != m.axis))
        local = np.searchsorted(every, analysis.labels_of(m.value, m.axis))
        total += np.bincount(local, weights=per_pos, minlength=len(every))
    return total[np.searchsorted(every, group.channels)]


def prune_exactly(model, args, ratio, expect_removed):
    """Trace, prune with producer_l1 at ``ratio``; pruned outputs must equal eager."""
    model.eval()
    graph = graphopt.trace(model, args)
    pruned, report = graphopt.prune(graph, ratio=ratio, importance=producer_l1, report=True,
                                    optimize=False)  # (checks the pruned structure by name)
    pruned.verify()
    removed = {g.name: g.removed for g in report.groups if g.removed}
    assert removed == expect_removed, report
    with torch.no_grad():
        expected = model(*args)
        lowered = graphopt.to_torch(pruned)(*args)
    torch.testing.assert_close(graphopt.run(pruned, *args), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lowered, expected, rtol=1e-4, atol=1e-5)
    assert report.flops_after < report.flops_before
    return graph, pruned, report


def zero_rows(*layers, rows):
    with torch.no_grad():
        for layer in layers:
            layer.weight[rows] = 0
            if getattr(layer, "bias", None) is not None:
                layer.bias[rows] = 0


# ---------------------------------------------------------------------------------- residuals
class ResidualChain(nn.Module):
    """stem -> (conv, relu, conv) + skip -> (conv, relu, conv) + skip -> head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.a1 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.a2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.b1 = nn.Conv2d(8, 6, 1, bias=False)
        self.b2 = nn.Conv2d(6, 8, 1, bias=False)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.a2(torch.relu(self.a1(h))))
        h = h + self.b2(torch.relu(self.b1(h)))
        return self.head(h).mean(dim=(2, 3))


def test_residual_chain_prunes_the_stream_in_every_block():
    torch.manual_seed(0)
    model = ResidualChain()
    zero_rows(model.stem, model.a2, model.b2, rows=[1, 5])  # stream channels 1 and 5
    zero_rows(model.a1, rows=[0, 3, 4])  # 3 of block a's 6 inner channels
    _, pruned, report = prune_exactly(model, (torch.randn(2, 3, 8, 8),),
                                      {"stem*": 0.25, "a1": 0.5}, {"stem (+2)": 2, "a1": 3})
    shapes = {n: tuple(v.type.shape) for n, v in pruned.constants.items()}
    assert shapes["stem.weight"] == (6, 3, 3, 3)
    assert shapes["a2.weight"] == (6, 3, 3, 3) and shapes["b1.weight"] == (6, 6, 1, 1)
    assert shapes["head.weight"] == (4, 6, 1, 1)


# ------------------------------------------------------------------------- concat and split
class Branches(nn.Module):
    """Two branches concatenated, a GLU (chunk + gate), then a 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.left = nn.Conv2d(3, 4, 3, padding=1)
        self.right = nn.Conv2d(3, 6, 1)
        self.glu_in = nn.Conv2d(10, 16, 1)
        self.out = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        h = torch.relu(torch.cat([self.left(x), self.right(x)], dim=1))
        a, b = self.glu_in(h).chunk(2, dim=1)
        return self.out(a * torch.sigmoid(b)).amax(dim=(2, 3))


def test_concat_of_branches_and_chunk():
    torch.manual_seed(0)
    model = Branches()
    zero_rows(model.left, rows=[2])
    zero_rows(model.right, rows=[0, 5])
    zero_rows(model.glu_in, rows=[1, 9, 6, 14])  # GLU channels 1 and 6: both halves
    graph, pruned, _ = prune_exactly(model, (torch.randn(1, 3, 6, 6),),
                                     {"left*": 0.3, "glu_in": 0.25},
                                     {"left (+1)": 3, "glu_in": 2})
    shapes = {n: tuple(v.type.shape) for n, v in pruned.constants.items()}
    assert shapes["left.weight"][0] == 3 and shapes["right.weight"][0] == 4
    assert shapes["glu_in.weight"] == (12, 7, 1, 1) and shapes["out.weight"] == (5, 6, 1, 1)
    split = next(n for n in pruned.nodes if n.op == "split")
    assert split.attrs["sizes"] == (6, 6)


def test_concat_never_empties_one_operand():
    torch.manual_seed(0)
    model = Branches()
    graph = graphopt.trace(model.eval(), (torch.randn(1, 3, 6, 6),))
    pruned = graphopt.prune(graph, ratio={"left*": 0.9})  # 9 of 10, but each branch keeps one
    pruned.verify()
    shapes = {n: v.type.shape for n, v in pruned.constants.items()}
    assert shapes["left.weight"][0] >= 1 and shapes["right.weight"][0] >= 1


# ------------------------------------------------------------------- depthwise and grouped
class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1 -> BN -> ReLU6 -> depthwise 3x3 -> BN -> ReLU6 -> 1x1."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(4, 12, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.project = nn.Conv2d(12, 4, 1)
        self.grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        h = F.relu6(self.bn1(self.expand(x)))
        h = F.relu6(self.bn2(self.dw(h)))
        h = self.project(h)
        return self.head(torch.relu(self.grouped(h)))


def test_depthwise_and_grouped_convs():
    torch.manual_seed(0)
    model = InvertedResidual()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):  # a zero channel stays zero through these BNs
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean[[2, 7, 8]] = 0
            bn.bias[[2, 7, 8]] = 0
    zero_rows(model.expand, model.dw, rows=[2, 7, 8])
    zero_rows(model.grouped, rows=[4, 5, 6, 7])  # the second conv group (out channels 4..7)
    zero_rows(model.project, rows=[2, 3])  # ... and its input channels (group 2 = in 2..3)
    _, pruned, report = prune_exactly(model, (torch.randn(1, 4, 6, 6),),
                                      {"expand": 0.25, "project": 0.5},
                                      {"expand (+1)": 3, "project (+1)": 1})
    kinds = {g.name: g.kind for g in report.groups}
    assert kinds["expand (+1)"] == "conv groups" and kinds["project (+1)"] == "conv groups"
    convs = {n.inputs[1].name: n for n in pruned.nodes if n.op == "conv"}
    dw, grouped = convs["dw.weight"], convs["grouped.weight"]
    assert dw.attrs["groups"] == 9 and dw.inputs[1].type.shape == (9, 1, 3, 3)
    assert grouped.attrs["groups"] == 1 and grouped.inputs[1].type.shape == (4, 2, 3, 3)


# -------------------------------------------------------------------------- attention heads
class SelfAttention(nn.Module):
    """Multi-head (kv_heads == heads) or grouped-query attention with a residual."""

    def __init__(self, dim=32, heads=4, kv_heads=4, enable_gqa=False):
        super().__init__()
        self.heads, self.kv_heads, self.hd, self.gqa = heads, kv_heads, dim // heads, enable_gqa
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.hd)
        self.o = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.cls = nn.Linear(dim, 3)

    def forward(self, x):
        B, L, D = x.shape
        q = self.q(x).view(B, L, self.heads, self.hd).transpose(1, 2)
        k, v = self.kv(x).chunk(2, dim=-1)
        k = k.view(B, L, self.kv_heads, self.hd).transpose(1, 2)
        v = v.view(B, L, self.kv_heads, self.hd).transpose(1, 2)
        groups = self.heads // self.kv_heads
        if groups > 1 and not self.gqa:  # repeat_kv, as transformers does it
            k = k[:, :, None].expand(B, self.kv_heads, groups, L, self.hd).reshape(
                B, self.heads, L, self.hd)
            v = v[:, :, None].expand(B, self.kv_heads, groups, L, self.hd).reshape(
                B, self.heads, L, self.hd)
        a = F.scaled_dot_product_attention(q, k, v, enable_gqa=self.gqa)
        h = self.norm(x + self.o(a.transpose(1, 2).reshape(B, L, D)))
        return self.cls(h)


def _zero_value_heads(model: SelfAttention, kv_heads: list[int]) -> None:
    half = model.kv_heads * model.hd
    rows = [half + h * model.hd + i for h in kv_heads for i in range(model.hd)]
    zero_rows(model.kv, rows=rows)  # v of those heads is 0, so is their attention output


def test_attention_heads_are_pruned_whole():
    torch.manual_seed(0)
    model = SelfAttention()
    _zero_value_heads(model, [1, 3])
    _, pruned, report = prune_exactly(model, (torch.randn(2, 5, 32),), {"q*": 0.5},
                                      {"q (+1)": 2})
    assert next(g for g in report.groups if g.removed).kind == "heads"
    shapes = {n: tuple(v.type.shape) for n, v in pruned.constants.items()}
    assert shapes["q.weight"] == (16, 32) and shapes["kv.weight"] == (32, 32)
    assert shapes["o.weight"] == (32, 16)
    attention = next(n for n in pruned.nodes if n.op == "attention")
    assert attention.output.type.shape == (2, 2, 5, 8)


@pytest.mark.parametrize("enable_gqa", [False, True], ids=["repeat_kv", "enable_gqa"])
def test_grouped_query_attention_prunes_whole_kv_groups(enable_gqa):
    torch.manual_seed(0)
    model = SelfAttention(heads=4, kv_heads=2, enable_gqa=enable_gqa)
    _zero_value_heads(model, [0])  # kv head 0 serves query heads 0 and 1
    _, pruned, report = prune_exactly(model, (torch.randn(1, 6, 32),), {"q*": 0.5},
                                      {"q (+1)": 1})
    shapes = {n: tuple(v.type.shape) for n, v in pruned.constants.items()}
    assert shapes["q.weight"] == (16, 32)  # 2 query heads left
    assert shapes["kv.weight"] == (16, 32)  # 1 kv head left (k and v: 8 rows each)
    group = next(g for g in report.groups if g.removed)
    assert group.size == 2  # units are kv groups, not single query heads


# ------------------------------------------------------------------------- flatten, norms
class ConvClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 16)
        self.ln = nn.LayerNorm(16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = F.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1)
        return self.out(self.ln(torch.relu(self.fc(h))))


def test_flatten_ties_each_channel_to_its_features_and_layer_norm_shrinks():
    torch.manual_seed(0)
    model = ConvClassifier().eval()
    zero_rows(model.conv, rows=[0, 4])
    graph = graphopt.trace(model, (torch.randn(2, 1, 8, 8),))
    pruned, report = graphopt.prune(graph, ratio={"conv": 2 / 6}, importance=producer_l1,
                                    report=True)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(graphopt.run(pruned, x), model(x), rtol=1e-4, atol=1e-5)
    assert pruned.constants["fc.weight"].type.shape == (16, 64)
    # The layer-norm group (fc out) is prunable too; normalized_shape follows.
    smaller = graphopt.prune(graph, ratio={"fc": 0.25})
    ln = next(n for n in smaller.nodes if n.op == "layer_norm")
    assert ln.attrs["normalized_shape"] == (12,)
    assert smaller.constants["ln.weight"].type.shape == (12,)
    assert graphopt.run(smaller, x).shape == (2, 3)


# ----------------------------------------------------------------------------- negatives
class Blocked(nn.Module):
    """fc1's channels are gathered, fc2's summed, fc3's are a graph output."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 8)
        self.register_buffer("perm", torch.tensor([[3, 1, 2, 0, 4, 5, 6, 7]]))

    def forward(self, x):
        a = torch.gather(self.fc1(x), 1, self.perm.expand(x.shape[0], 8))
        b = self.fc2(a).sum(dim=1, keepdim=True)
        return self.fc3(a * b), b


def test_groups_with_outputs_or_unprunable_consumers_are_left_alone_with_reasons():
    model = Blocked().eval()
    graph = graphopt.trace(model, (torch.randn(2, 8),))
    analysis = DependencyGraph(graph)
    by_name = {g.name: g for g in analysis.groups}
    assert not by_name["fc1"].prunable
    assert any("gather has no pruning rule" in r for r in by_name["fc1"].reasons)
    assert not by_name["fc2"].prunable
    assert any("reduced by" in r and "= sum" in r for r in by_name["fc2"].reasons)
    assert not by_name["fc3"].prunable
    assert any("graph output" in r for r in by_name["fc3"].reasons)
    pruned, report = graphopt.prune(graph, ratio=0.5, report=True)
    assert not report.pruned_groups()
    skipped = {g.name: g.skipped for g in report.skipped_groups()}
    assert "graph output" in skipped["fc3"] and "no pruning rule" in skipped["fc1"]
    assert "left alone" in str(report)


def test_exclude_patterns_protect_weights():
    torch.manual_seed(0)
    graph = graphopt.trace(ResidualChain().eval(), (torch.randn(1, 3, 8, 8),))
    pruned, report = graphopt.prune(graph, ratio=0.5, exclude=["a1.*", "stem"], report=True)
    assert pruned.constants["a1.weight"].type.shape == (6, 8, 3, 3)
    assert pruned.constants["stem.weight"].type.shape == (8, 3, 3, 3)
    assert pruned.constants["b1.weight"].type.shape == (3, 8, 1, 1)
    assert {g.name for g in report.groups if g.skipped == "excluded by pattern"} == {
        "a1", "stem (+2)"}
