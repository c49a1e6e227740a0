"""trace -> run equals eager on real architectures; verify holds; the IR covers their ops."""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree

import graphopt
from graphopt import zoo

RTOL, ATOL = 1e-4, 1e-5

# Full-size architectures of issue 2 (tracing is a few seconds each) and our own coverage models.
MODELS = {
    "bert": {},
    "gpt2": {},
    "resnet50": {},
    "mobilenetv2": {},
    "mlp": {},
    "convzoo": {},
    "tensorops": {},
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def traced(request):
    model, args = zoo.get(request.param, **MODELS[request.param])
    graph = graphopt.trace(model, args)
    with torch.no_grad():
        expected = model(*args)
    return request.param, model, args, graph, expected


def assert_close_tree(actual, expected):
    actual_leaves = pytree.tree_leaves(actual)
    expected_leaves = pytree.tree_leaves(expected)
    assert len(actual_leaves) == len(expected_leaves)
    for a, e in zip(actual_leaves, expected_leaves):
        assert a.shape == e.shape and a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)


def test_outputs_are_not_degenerate(traced):
    name, _, _, _, expected = traced
    for leaf in pytree.tree_leaves(expected):
        if leaf.is_floating_point():
            assert leaf.abs().max() > 1e-3, f"{name}: degenerate outputs make comparisons vacuous"
            assert torch.isfinite(leaf).all()


def test_run_matches_eager(traced):
    _, _, args, graph, expected = traced
    actual = graphopt.run(graph, *args)
    assert type(actual) is type(expected)  # the model's own output structure
    assert_close_tree(actual, expected)


def test_run_accepts_numpy(traced):
    _, _, args, graph, expected = traced
    actual = graphopt.run(graph, *[a.numpy() for a in args])
    assert_close_tree(actual, expected)


def test_verify_and_types(traced):
    _, _, _, graph, _ = traced
    graph.verify()
    assert len(graph.nodes) == len(list(graph.nodes)) > 0
    assert all(v.type is not None for v in graph.values())


def test_weights_are_constants(traced):
    _, model, _, graph, _ = traced
    n_params = sum(p.numel() for p in model.parameters())
    n_const = sum(v.data.size for v in graph.constants.values())
    assert n_const >= 0.99 * n_params


def test_printer_parser_round_trip(traced):
    _, _, args, graph, expected = traced
    text = str(graph)
    constants = {name: v.data for name, v in graph.constants.items()}
    parsed = graphopt.parse(text, constants=constants)
    assert str(parsed) == text
    parsed.verify()
    flat = graphopt.run(parsed, *args)
    flat = flat if isinstance(flat, tuple) else (flat,)
    for a, e in zip(flat, pytree.tree_leaves(expected)):
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)


def test_to_torch_matches_eager(traced):
    _, _, args, graph, expected = traced
    module = graphopt.to_torch(graph)
    with torch.no_grad():
        assert_close_tree(module(*args), expected)


def test_expected_ops_present(traced):
    name, _, _, graph, _ = traced
    hist = graph.op_histogram()
    expected = {
        "bert": {"attention": 12, "layer_norm": 25, "gelu": 12, "embedding": 3},
        "gpt2": {"attention": 12, "layer_norm": 25, "tanh": 12},
        "resnet50": {"conv": 53, "batch_norm": 53, "max_pool": 1, "adaptive_avg_pool": 1},
        "mobilenetv2": {"conv": 52, "batch_norm": 52, "clamp": 35},
        "mlp": {"linear": 4, "relu": 3},
    }.get(name, {})
    for op, count in expected.items():
        assert hist[op] == count, f"{name}: expected {count} x {op}, got {hist[op]}"
