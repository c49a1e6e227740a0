"""torch.compile(model, backend="graphopt") (graphopt/dynamo.py, issue #19): registered through
the torch_dynamo_backends entry point; Dynamo's subgraphs are traced, optimized and compiled by
graphopt (native by default), once per input signature; what graphopt cannot take runs as
captured, with one warning. Outputs equal eager within 1e-4 on an MLP, a small CNN and a
2-layer BERT."""

from __future__ import annotations

import warnings

import pytest
import torch

import graphopt.dynamo as gd
from graphopt import zoo


def _compiled_delta(fn):
    before = gd.compiled_subgraphs()
    fn()
    after = gd.compiled_subgraphs()
    return {k: after[k] - before[k] for k in after}


def _assert_close(got, want):
    got_leaves = [t for t in torch.utils._pytree.tree_leaves(got) if torch.is_tensor(t)]
    want_leaves = [t for t in torch.utils._pytree.tree_leaves(want) if torch.is_tensor(t)]
    assert len(got_leaves) == len(want_leaves)
    for g, w in zip(got_leaves, want_leaves):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_the_backend_is_registered_by_name():
    from torch._dynamo.backends.registry import list_backends, lookup_backend

    assert "graphopt" in list_backends(None)
    assert lookup_backend("graphopt") is gd.graphopt_backend


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_small_models_match_eager_and_are_compiled_by_graphopt(name):
    torch._dynamo.reset()
    torch.manual_seed(0)
    if name == "mlp":
        model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(),
                                    torch.nn.Linear(64, 8)).eval()
        inputs = [torch.randn(n, 16) for n in (2, 5, 9)]  # a new batch size plans again
    else:
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                    torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                    torch.nn.Linear(8 * 4 * 4, 5)).eval()
        inputs = [torch.randn(n, 3, 8, 8) for n in (1, 3)]
    compiled = torch.compile(model, backend="graphopt")

    def run():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error", gd.GraphoptFallbackWarning)
            for x in inputs:
                _assert_close(compiled(x), model(x))

    delta = _compiled_delta(run)
    assert delta["compiled"] >= len(inputs) - 1 and delta["fallback"] == 0


def test_bert_two_layers_matches_eager():
    pytest.importorskip("transformers")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, args = zoo.get("bert", layers=2, seq=16)
    model.eval()
    compiled = torch.compile(model, backend="graphopt", options={"pipeline": "default"})
    with torch.no_grad():
        delta = _compiled_delta(lambda: _assert_close(compiled(*args), model(*args)))
    assert delta["compiled"] >= 1


def test_an_unsupported_subgraph_falls_back_with_a_warning():
    torch._dynamo.reset()

    def f(x):
        return torch.fft.rfft(x).abs() + 1

    compiled = torch.compile(f, backend="graphopt")
    x = torch.randn(4, 16)
    with pytest.warns(gd.GraphoptFallbackWarning, match="not compiled"):
        delta = _compiled_delta(lambda: _assert_close(compiled(x), f(x)))
    assert delta["fallback"] == 1


def test_unknown_options_are_refused():
    torch._dynamo.reset()
    compiled = torch.compile(torch.nn.Linear(4, 4), backend="graphopt",
                             options={"precision": "int3"})
    with pytest.raises(Exception, match="unknown options"):
        compiled(torch.randn(2, 4))


def test_weights_updated_in_place_are_seen():
    """Parameters are fixed into the compiled graph; an in-place update (a training step, a
    weight load) changes their version, and the next call compiles again."""
    torch._dynamo.reset()
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    compiled = torch.compile(model, backend="graphopt")
    x = torch.randn(2, 8)
    with torch.no_grad():
        _assert_close(compiled(x), model(x))
        model[0].weight.mul_(-2.0)
        _assert_close(compiled(x), model(x))
