"""Pruning that keeps accuracy: a CNN and an MLP trained here on scikit-learn's digits (8x8
images, 10 classes, shipped with sklearn), then pruned and recovered with graphopt.finetune.

* structured: >= 1.8x fewer FLOPs (the same ratio in every layer, or one global ranking), then
  knowledge distillation from the unpruned graph (plus the task loss) recovers to within 1
  point of the original test accuracy;
* unstructured: 80% of the weights zeroed, within 1 point after recovery, zeros kept.

Everything is seeded; training is a few seconds on one thread.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.export import Dim

import graphopt
from graphopt.models_digits import batches, mlp, train
from graphopt.prune.sparse import sparse_weight

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits(digits_data):
    return digits_data


def accuracy(graph, x, y) -> float:
    return float((graphopt.run(graph, x).argmax(-1) == y).float().mean())


@pytest.fixture(scope="module", params=["cnn", "mlp"])
def trained(request, digits, digits_cnn):
    """(graph with a symbolic batch, test accuracy, train batches, test x, test y)."""
    x_train, y_train, x_test, y_test = digits
    if request.param == "cnn":  # conftest trains it once per session, with this recipe
        model = copy.deepcopy(digits_cnn)
    else:
        torch.manual_seed(0)
        model = train(mlp(), x_train, y_train, epochs=20)
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
