"""to_torch: the generated nn.Module equals eager, saves (pickle-free bundle) and pickles
in memory, trains and handles dynamic shapes."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import numpy as np
import pytest
import sympy
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils._pytree as pytree

import graphopt
from graphopt.backends.torch_module import (
    TorchModule,
    attribute_paths,
    load_module,
    save_module,
    to_torch,
)
from graphopt.errors import GraphoptError, InputMismatchError
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph
from graphopt.ir.types import TensorType
from graphopt.ops import registry

RTOL, ATOL = 1e-4, 1e-5
F32 = DType.float32
S0 = sympy.Symbol("s0", integer=True, positive=True)  # as torch.export makes size symbols


# ------------------------------------------------------------------------------------ models
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.head(x.reshape(x.shape[0], -1))


class SplitConcatResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.left = nn.Linear(6, 6)
        self.right = nn.Linear(10, 10)

    def forward(self, x):
        a, b = torch.split(x, [6, 10], dim=-1)
        y = torch.cat([torch.tanh(self.left(a)), F.gelu(self.right(b))], dim=-1)
        return x + y


class TransformerBlock(nn.Module):
    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        x = x + a
        return x + self.ffn(self.ln2(x))


class StructuredOutputs(nn.Module):
    """Dict and tuple outputs, keyword input, an integer buffer (not a parameter)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.register_buffer("order", torch.tensor([3, 1, 2, 0]))

    def forward(self, x, *, scale):
        y = self.proj(x) * scale
        return {"logits": y, "parts": (y.index_select(-1, self.order), y.sum(-1))}


def _model_and_inputs(name: str):
    torch.manual_seed(0)
    if name == "mlp":
        return MLP(), (torch.randn(3, 8),), {}
    if name == "cnn":
        model = SmallCNN()
        for m in model.modules():  # non-trivial running stats
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        return model, (torch.randn(2, 3, 16, 16),), {}
    if name == "split_concat":
        return SplitConcatResidual(), (torch.randn(2, 3, 16),), {}
    if name == "transformer":
        return TransformerBlock(), (torch.randn(2, 5, 16),), {}
    if name == "structured":
        return StructuredOutputs(), (torch.randn(3, 4),), {"scale": torch.tensor(2.0)}
    raise KeyError(name)


@pytest.fixture(scope="module", params=["mlp", "cnn", "split_concat", "transformer", "structured"])
def traced(request):
    model, args, kwargs = _model_and_inputs(request.param)
    model.eval()
    graph = graphopt.trace(model, args, kwargs)
    with torch.no_grad():
        expected = model(*args, **kwargs)
    return request.param, model, args, kwargs, graph, expected


def assert_close_tree(actual, expected):
    a_leaves, a_spec = pytree.tree_flatten(actual)
    e_leaves, e_spec = pytree.tree_flatten(expected)
    assert a_spec == e_spec  # the model's own output structure
    for a, e in zip(a_leaves, e_leaves):
        assert a.shape == e.shape and a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------ equivalence
def test_matches_eager(traced):
    _, _, args, kwargs, graph, expected = traced
    module = to_torch(graph)
    assert isinstance(module, nn.Module) and isinstance(module, TorchModule)
    with torch.no_grad():
        assert_close_tree(module(*args, **kwargs), expected)


def test_save_load_round_trip(traced, tmp_path):
    _, _, args, kwargs, graph, expected = traced
    path = tmp_path / "module.graphopt"
    save_module(to_torch(graph), path)
    loaded = load_module(path)
    # In-memory pickling of your own module keeps working (deepcopy, multiprocessing).
    unpickled = pickle.loads(pickle.dumps(to_torch(graph)))
    with torch.no_grad():
        assert_close_tree(loaded(*args, **kwargs), expected)
        assert_close_tree(copy.deepcopy(loaded)(*args, **kwargs), expected)
        assert_close_tree(unpickled(*args, **kwargs), expected)


def test_state_dict_keys_mirror_the_model(traced):
    name, model, args, kwargs, graph, expected = traced
    module = to_torch(graph)
    keys = set(module.state_dict())
    for key in model.state_dict():
        if key in graph.constants:  # unused ones (num_batches_tracked) are not in the graph
            assert f"graph_module.{key}" in keys
    for key, tensor in module.state_dict().items():
        is_param = key in dict(module.named_parameters())
        is_statistic = key.endswith(("running_mean", "running_var"))
        assert is_param == (tensor.is_floating_point() and not is_statistic), key


def test_accepts_numpy_inputs():
    model, (x,), _ = _model_and_inputs("mlp")
    module = to_torch(graphopt.trace(model.eval(), (x,)))
    with torch.no_grad():
        torch.testing.assert_close(module(x.numpy()), model(x), rtol=RTOL, atol=ATOL)


def test_keyword_inputs_in_any_order():
    class TwoKwargs(nn.Module):
        def forward(self, x, *, a, b):
            return x * a - b

    x, a, b = torch.randn(3), torch.randn(3), torch.randn(3)
    module = to_torch(graphopt.trace(TwoKwargs(), (x,), {"a": a, "b": b}))
    torch.testing.assert_close(module(x, b=b, a=a), x * a - b)
    with pytest.raises(InputMismatchError, match="3 tensor input"):
        module(x, a=a)


# ------------------------------------------------------------------------- generated code
def test_generated_code_reads_like_the_model():
    model, (x,), _ = _model_and_inputs("mlp")
    graph = graphopt.trace(model.eval(), (x,))
    code = to_torch(graph).code
    assert "def forward(self, x):" in code
    assert "self.fc1.weight" in code and "self.fc2.bias" in code
    assert "graphopt_ops_nn_linear(" in code and "graphopt_ops_elementwise_relu(" in code
    assert ".size(" not in code and "eval_size_expr" not in code  # static: no shape code


def test_multi_output_nodes_become_getitems():
    model, (x,), _ = _model_and_inputs("split_concat")
    graph = graphopt.trace(model.eval(), (x,))
    assert graph.op_histogram()["split"] == 1
    code = to_torch(graph).code
    assert "graphopt_ops_shape_split(" in code and "_outputs[0]" in code and "_outputs[1]" in code


def test_weights_are_copied_not_aliased():
    model, (x,), _ = _model_and_inputs("mlp")
    graph = graphopt.trace(model.eval(), (x,))
    before = graph.constants["fc1.weight"].data.copy()
    module = to_torch(graph)
    with torch.no_grad():
        module.graph_module.fc1.weight.add_(1.0)  # writable, and the graph does not see it
    np.testing.assert_array_equal(graph.constants["fc1.weight"].data, before)


# -------------------------------------------------------------------------------- training
def test_training_step_reduces_loss():
    model, (x,), _ = _model_and_inputs("mlp")
    module = to_torch(graphopt.trace(model.eval(), (x,)))
    target = torch.randn(3, 4)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    loss = F.mse_loss(module(x), target)
    optimizer.zero_grad()
    loss.backward()
    params = list(module.parameters())
    assert len(params) == 4 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    optimizer.step()
    with torch.no_grad():
        assert F.mse_loss(module(x), target) < loss


def test_state_dict_transfers_trained_weights():
    model, (x,), _ = _model_and_inputs("mlp")
    graph = graphopt.trace(model.eval(), (x,))
    trained = to_torch(graph)
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(0.5)
    fresh = to_torch(graph)
    fresh.load_state_dict(trained.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x))
        assert not torch.allclose(fresh(x), model(x))


# ------------------------------------------------------------------------- dynamic shapes
@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_dynamic_batch(name, tmp_path):
    model, (x,), _ = _model_and_inputs(name)
    model.eval()
    dynamic = {"x": {0: torch.export.Dim("batch", min=2, max=64)}}
    graph = graphopt.trace(model, (x,), dynamic_shapes=dynamic)
    module = to_torch(graph)
    assert "x.size(0)" in module.code
    path = tmp_path / "dynamic.graphopt"
    save_module(module, path)
    loaded = load_module(path)
    with torch.no_grad():
        for batch in (2, 5, 9):
            xb = torch.randn(batch, *x.shape[1:])
            torch.testing.assert_close(module(xb), model(xb), rtol=RTOL, atol=ATOL)
            torch.testing.assert_close(loaded(xb), model(xb), rtol=RTOL, atol=ATOL)


def test_symbolic_attributes_match_the_interpreter(tmp_path):
    """Every spelling of a size expression: operators, max, and the sympy fallback."""
    from torch.utils._sympy.functions import FloorDiv, Max

    graph = Graph("sizes")
    x = graph.add_input("x", TensorType((S0, 4), F32))
    shapes = {
        "linear": (2 * S0 + 1, 3),
        "floordiv": (FloorDiv(S0, 2), Max(S0, 3)),
        "floor": (sympy.floor(S0 / 3) + 1, sympy.ceiling(2 * S0 / 3)),
        "fallback": (sympy.floor(S0 / sympy.Max(S0 - 2, 1)),),
    }
    outs = [graph.create_node("full", [], {"shape": s, "value": 1.0, "dtype": F32}, name=n).output
            for n, s in shapes.items()]
    outs.append(graph.create_node("relu", [x]).output)
    graph.set_outputs(outs)
    module = to_torch(graph)
    assert "max(" in module.code and "eval_size_expr(" in module.code
    assert "s0 // 3" in module.code  # floor(s0/3) needs no fallback
    path = tmp_path / "sizes.graphopt"
    save_module(module, path)
    loaded = load_module(path)  # parsed back from IR text: FloorDiv(s0, 2) reads as floor(s0/2)
    unpickled = pickle.loads(pickle.dumps(module))
    assert unpickled.code == module.code and loaded.code.count("eval_size_expr(") == 1
    for n in (1, 4, 7):
        xn = torch.randn(n, 4)
        for actual, again, again2, expected in zip(module(xn), loaded(xn), unpickled(xn),
                                                   graphopt.run(graph, xn)):
            torch.testing.assert_close(actual, expected)
            torch.testing.assert_close(again, expected)
            torch.testing.assert_close(again2, expected)


def test_generated_module_traces_back_to_the_same_graph():
    """The generated code is plain PyTorch: graphopt.trace (torch.export) reads it back."""
    model, (x,), _ = _model_and_inputs("transformer")
    graph = graphopt.trace(model.eval(), (x,))
    again = graphopt.trace(to_torch(graph), (x,))
    assert again.op_histogram() == graph.op_histogram()
    torch.testing.assert_close(graphopt.run(again, x), model(x), rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------ attribute names
def test_attribute_paths_are_valid_and_unique():
    names = ["fc1.weight", "fc1_weight", "a", "a.b", "graph", "class.x", "layers.0.weight", "c"]
    paths = attribute_paths(names)
    assert paths["fc1.weight"] == "fc1.weight" and paths["layers.0.weight"] == "layers.0.weight"
    assert paths["graph"] == "graph_" and paths["class.x"] == "class_.x"
    assert paths["a"] == "a_" and paths["a.b"] == "a.b"
    assert len(set(paths.values())) == len(names)


def test_awkward_constant_names_lower():
    graph = Graph("names")
    x = graph.add_input("x", TensorType((3,), F32))
    total = x
    for i, name in enumerate(["graph", "a", "a.b", "layers.0.weight", "code"]):
        c = graph.add_constant(np.full(3, i + 1, np.float32), name)
        total = graph.create_node("add", [total, c]).output
    graph.set_outputs([total])
    module = to_torch(graph)
    assert sorted(module.state_dict()) == [
        "graph_module.a.b", "graph_module.a_", "graph_module.code_", "graph_module.graph_",
        "graph_module.layers.0.weight",
    ]
    torch.testing.assert_close(module(torch.zeros(3)), torch.full((3,), 15.0))


# ---------------------------------------------------------------------------------- errors
def test_op_without_importable_torch_function_names_op_and_node(monkeypatch):
    model, (x,), _ = _model_and_inputs("mlp")
    graph = graphopt.trace(model.eval(), (x,))
    relu = registry.get_op("relu")
    patched = dataclasses.replace(relu, reference=lambda x: torch.relu(x), lowerings={})
    monkeypatch.setitem(registry._REGISTRY, "relu", patched)
    with pytest.raises(GraphoptError, match=r"op 'relu'.*\n?.*") as info:
        to_torch(graph)
    assert "%relu = relu" in str(info.value)
    monkeypatch.setitem(patched.lowerings, "torch", torch.relu)  # a torch lowering fixes it
    module = to_torch(graph)
    assert "torch.relu(" in module.code
    torch.testing.assert_close(module(x), model(x), rtol=RTOL, atol=ATOL)


def test_run_time_failure_names_the_node():
    graph = Graph("bad")
    x = graph.add_input("x", TensorType((4, 4), F32))
    # Wrong output type given on purpose: the reshape cannot run.
    bad = graph.create_node("reshape", [x], {"shape": (3, 5)}, name="bad",
                            output_types=[TensorType((3, 5), F32)])
    graph.set_outputs([bad.output])
    with pytest.raises(GraphoptError, match=r"%bad = reshape .*RuntimeError"):
        to_torch(graph)(torch.randn(4, 4))


def test_batchnorm_statistics_are_buffers_and_training_works():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    x = torch.randn(2, 3, 8, 8)
    module = graphopt.to_torch(graphopt.trace(model, (x,)))
    buffers = {name for name, _ in module.named_buffers()}
    assert any(name.endswith("running_mean") for name in buffers)
    assert not any(n.endswith("running_mean") for n, _ in module.named_parameters())
    module(x).sum().backward()  # gradients flow to conv and bn affine weights only
    assert all(p.grad is not None for p in module.parameters())
