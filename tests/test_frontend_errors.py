"""Frontend error paths and dynamic shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphopt
from graphopt.errors import InputMismatchError, UnsupportedOpError


class TwoUnknownOps(nn.Module):
    def forward(self, x):
        y = torch.special.bessel_j0(x) + 1  # no converter for bessel_j0
        z = torch.special.i0(y)  # nor for i0
        return torch.special.i0(z * 2) + torch.relu(x)


def test_unsupported_ops_are_all_listed_with_source_lines():
    with pytest.raises(UnsupportedOpError) as info:
        graphopt.trace(TwoUnknownOps(), (torch.randn(3),))
    err = info.value
    names = [name for name, _ in err.ops]
    assert names.count("aten.special_i0.default") == 2
    assert "aten.special_bessel_j0.default" in names
    text = str(err)
    assert "3 unsupported op call(s)" in text
    assert "test_frontend_errors.py" in text and "torch.special.i0(y)" in text


def test_training_mode_batchnorm_is_rejected():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    with pytest.raises(graphopt.GraphoptError, match="eval"):
        graphopt.trace(model, (torch.randn(2, 3, 8, 8),))


def test_wrong_input_count_and_shape():
    model = nn.Linear(4, 2).eval()
    graph = graphopt.trace(model, (torch.randn(3, 4),))
    with pytest.raises(InputMismatchError, match="1 tensor input"):
        graphopt.run(graph, torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(InputMismatchError, match="dim 1"):
        graphopt.run(graph, torch.randn(3, 5))
    with pytest.raises(InputMismatchError, match="dtype"):
        graphopt.run(graph, torch.randn(3, 4, dtype=torch.float64))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = h.mean(dim=(2, 3))
        return self.fc(h).view(x.shape[0], -1).softmax(-1)


def test_dynamic_batch_is_symbolic_and_runs_any_batch():
    model = Block().eval()
    batch = torch.export.Dim("batch", min=2, max=64)
    graph = graphopt.trace(model, (torch.randn(4, 3, 16, 16),), dynamic_shapes=({0: batch},))
    graph.verify()
    assert not graph.inputs[0].type.is_static
    assert "s" in str(graph.inputs[0].type)
    for n in (2, 7, 33):
        x = torch.randn(n, 3, 16, 16)
        torch.testing.assert_close(graphopt.run(graph, x), model(x), rtol=1e-4, atol=1e-5)


class KeywordModel(nn.Module):
    def forward(self, a, b):
        return a - 2 * b


def test_keyword_inputs_are_matched_by_name_not_position():
    a, b = torch.randn(3), torch.randn(3)
    graph = graphopt.trace(KeywordModel(), (), {"a": a, "b": b})
    torch.testing.assert_close(graphopt.run(graph, b=b, a=a), a - 2 * b)


def test_dynamic_batch_with_shape_dependent_creation_ops():
    from graphopt import zoo

    model, (ids, mask) = zoo.get("tensorops", batch=3)
    batch = torch.export.Dim("batch", min=2, max=16)
    graph = graphopt.trace(model, (ids, mask), dynamic_shapes=({0: batch}, {0: batch}))
    graph.verify()
    assert "full" in graph.op_histogram()  # zeros(mask.shape) stays an op: its shape is symbolic
    for n in (2, 5):
        ids_n, mask_n = torch.randint(0, 50, (n, 12)), torch.ones(n, 12, dtype=torch.long)
        mask_n[0, -2:] = 0
        expected = model(ids_n, mask_n)
        actual = graphopt.run(graph, ids_n, mask_n)
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5)


def test_trailing_optional_operands_may_be_omitted():
    graph = graphopt.Graph()
    x = graph.add_input("x", graphopt.TensorType((2, 4), graphopt.DType.float32))
    import numpy as np

    w = graph.add_constant(np.ones((3, 4), np.float32), "w")
    node = graph.create_node("linear", [x, w])
    assert node.inputs[2] is None and node.output.shape == (2, 3)
