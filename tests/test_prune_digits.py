"""Pruning that keeps accuracy: a CNN and an MLP trained here on scikit-learn's digits (8x8
images, 10 classes, shipped with sklearn), then pruned and recovered with graphopt.finetune.

* structured: >= 1.8x fewer FLOPs (the same ratio in every layer, or one global ranking), then
  knowledge distillation from the unpruned graph (plus the task loss) recovers to within 1
  point of the original test accuracy;
* unstructured: 80% of the weights zeroed, within 1 point after recovery, zeros kept.

Everything is seeded; training is a few seconds on one thread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.export import Dim

import graphopt
from graphopt.prune.sparse import sparse_weight

torch.set_num_threads(1)
TRAIN = 1400  # of 1797; the other 397 images are the test set (1 point = 4 images)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:TRAIN]], y[perm[:TRAIN]], x[perm[TRAIN:]], y[perm[TRAIN:]]


def batches(x, y, seed, size=64):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [(x[order[i: i + size]], y[order[i: i + size]]) for i in range(0, len(x), size)]


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 16, 64), nn.ReLU(), nn.Linear(64, 10))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def train(model: nn.Module, x, y, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for epoch in range(epochs):
        for xb, yb in batches(x, y, seed=epoch):
            optim.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            optim.step()
    return model.eval()


def accuracy(graph, x, y) -> float:
    return float((graphopt.run(graph, x).argmax(-1) == y).float().mean())


@pytest.fixture(scope="module", params=["cnn", "mlp"])
def trained(request, digits):
    """(graph with a symbolic batch, test accuracy, train batches, test x, test y)."""
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(0)
    model = train(cnn() if request.param == "cnn" else mlp(), x_train, y_train,
                  epochs=6 if request.param == "cnn" else 20)
    graph = graphopt.trace(model, (x_test[:4],), dynamic_shapes=({0: Dim("batch")},))
    acc = accuracy(graph, x_test, y_test)
    assert acc > 0.95, f"{request.param} trained to {acc:.3f} only"
    return graph, acc, batches(x_train, y_train, seed=100), x_test, y_test


def _ce(outputs, target):
    return F.cross_entropy(outputs, target)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_structured_pruning_then_distillation_keeps_accuracy(trained, scope):
    graph, base, data, x_test, y_test = trained
    pruned, report = graphopt.prune(graph, flops=0.47, scope=scope, report=True)
    assert report.flops_reduction >= 1.8, report
    assert report.pruned_groups() and report.params_after < report.params_before
    recovered = graphopt.finetune(pruned, data, loss=_ce, teacher=graph, epochs=5, lr=2e-3,
                                  temperature=4.0, seed=0, progress=False)
    acc = accuracy(recovered, x_test, y_test)
    assert acc >= base - 0.01, f"{base:.4f} -> {accuracy(pruned, x_test, y_test):.4f} " \
                               f"-> {acc:.4f} after recovery"
    assert {n: v.type for n, v in recovered.constants.items()} == \
        {n: v.type for n, v in pruned.constants.items()}  # structure kept


def test_unstructured_80_percent_then_recovery_keeps_accuracy_and_zeros(trained):
    graph, base, data, x_test, y_test = trained
    sparse, report = graphopt.prune(graph, "magnitude", sparsity=0.8, scope="global",
                                    report=True)
    assert report.sparsity == pytest.approx(0.8, abs=1e-3)
    recovered = graphopt.finetune(sparse, data, loss=_ce, teacher=graph, epochs=5, lr=2e-3,
                                  seed=0, progress=False)
    acc = accuracy(recovered, x_test, y_test)
    assert acc >= base - 0.01, f"{base:.4f} -> {accuracy(sparse, x_test, y_test):.4f} " \
                               f"-> {acc:.4f} after recovery"
    for name in (w.name for w in report.weights):
        before, after = sparse.constants[name], recovered.constants[name]
        assert np.array_equal(before.data == 0, after.data == 0)  # the mask held
        assert sparse_weight(after) is not None
        np.testing.assert_array_equal(sparse_weight(after).to_dense().ravel(),
                                      after.data.reshape(after.data.shape[0], -1).ravel())


def test_finetune_is_deterministic(trained):
    graph, _, data, x_test, _ = trained
    pruned = graphopt.prune(graph, ratio=0.5)
    runs = [graphopt.finetune(pruned, data[:5], teacher=graph, feature_matching=False, seed=3,
                              progress=False) for _ in range(2)]
    torch.testing.assert_close(graphopt.run(runs[0], x_test), graphopt.run(runs[1], x_test),
                               rtol=0, atol=0)
