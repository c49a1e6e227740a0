"""The onnxruntime backend on real architectures: equal to eager, checker-clean, round-trip stable.

For each model: ``graphopt.compile(trace(m, x), backend="onnxruntime")(x)`` equals eager within
rtol 1e-4 / atol 1e-5; the exported model passes ``onnx.checker.check_model(full_check=True)``;
and IR -> ONNX -> IR -> ONNX is stable (same node count and op histogram, same outputs).

Deep CNNs are the exception to the fixed tolerance: eager float32 MobileNetV2 is itself
1.1e-4 away from a float64 evaluation of the same model (outputs up to 6.0; summation order over
52 convolutions), and onnxruntime 0.9e-4, so no float32 backend can meet atol 1e-5 there. For
MobileNetV2 and ResNet-50 the absolute tolerance is 2e-4 of the output's scale instead.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
import torch.utils._pytree as pytree

import graphopt
from graphopt import zoo
from graphopt.onnx import from_onnx, to_onnx

RTOL, ATOL = 1e-4, 1e-5


def leaves(tree) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


@pytest.fixture(scope="module")
def traced_mlp():
    from conftest import Traced

    model, args = zoo.get("mlp")
    return Traced(model, args, graphopt.trace(model, args))


@pytest.fixture(scope="module")
def traced_mobilenetv2():
    from conftest import Traced

    model, args = zoo.get("mobilenetv2")
    return Traced(model, args, graphopt.trace(model, args))


@pytest.fixture(scope="module")
def traced_resnet50():
    from conftest import Traced

    model, args = zoo.get("resnet50")
    return Traced(model, args, graphopt.trace(model, args))


EXACT_MODELS = ["traced_mlp", "traced_convzoo", "traced_tensorops", "traced_bert_small",
                "traced_gpt2_small"]
CNN_MODELS = ["traced_mobilenetv2", "traced_resnet50"]


def _eager(traced) -> list[torch.Tensor]:
    with torch.no_grad():
        return leaves(traced.model(*traced.args))


@pytest.mark.parametrize("fixture", EXACT_MODELS)
def test_onnxruntime_equals_eager(fixture, request):
    traced = request.getfixturevalue(fixture)
    compiled = graphopt.compile(traced.graph, backend="onnxruntime", threads=2)
    actual = compiled(*traced.args)
    expected = traced.model(*traced.args)
    # Same output structure as graphopt.run (dicts/ModelOutputs, not flat lists).
    assert pytree.tree_structure(actual) == pytree.tree_structure(
        graphopt.run(traced.graph, *traced.args))
    with torch.no_grad():
        expected = leaves(expected)
    for i, (a, e) in enumerate(zip(leaves(actual), expected, strict=True)):
        assert a.shape == e.shape and a.dtype == e.dtype, f"output {i}"
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL, msg=f"output {i}")


@pytest.mark.parametrize("fixture", CNN_MODELS)
def test_onnxruntime_cnn_matches_eager_at_float32_noise(fixture, request):
    traced = request.getfixturevalue(fixture)
    actual = leaves(graphopt.compile(traced.graph, threads=2)(*traced.args))
    for a, e in zip(actual, _eager(traced), strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        # 2e-4 of the output's scale: twice eager's own distance to float64 (module docstring)
        torch.testing.assert_close(a, e, rtol=RTOL, atol=2e-4 * e.abs().max().item())


@pytest.mark.parametrize("fixture", EXACT_MODELS + CNN_MODELS)
def test_export_passes_full_checker_and_keeps_types(fixture, request):
    traced = request.getfixturevalue(fixture)
    graph = traced.graph
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    declared = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)
                + list(model.graph.input)}
    # Every live IR value keeps its name and shape.
    for node in graph.nodes:
        for value in node.outputs:
            if value.name in declared:
                dims = declared[value.name].type.tensor_type.shape.dim
                assert [d.dim_value for d in dims] == [int(s) for s in value.shape]
    names = {n for node in model.graph.node for n in node.output}
    assert {v.name for v in graph.outputs} <= names | {o.name for o in model.graph.output}
    # Initializers are deduplicated by content.
    blobs = [(t.data_type, tuple(t.dims), t.raw_data) for t in model.graph.initializer]
    assert len(blobs) == len(set(blobs))


def _histogram(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter((n.domain, n.op_type) for n in model.graph.node)


# Contrib ops only change how attention lowers, so the standard form is checked on the models
# that have attention.
STABILITY_CASES = [(f, True) for f in EXACT_MODELS + CNN_MODELS] + [
    ("traced_bert_small", False), ("traced_tensorops", False)]


@pytest.mark.parametrize("fixture, contrib_ops", STABILITY_CASES)
def test_ir_onnx_ir_onnx_is_stable(fixture, contrib_ops, request):
    traced = request.getfixturevalue(fixture)
    first = to_onnx(traced.graph, contrib_ops=contrib_ops)
    imported = from_onnx(first, fold_constants=False)
    second = to_onnx(imported, contrib_ops=contrib_ops)
    assert len(second.graph.node) == len(first.graph.node)
    assert _histogram(second) == _histogram(first)
    flat_args = leaves(traced.args)
    expected = leaves(graphopt.run(traced.graph, *traced.args))
    actual = leaves(graphopt.run(imported, *flat_args))
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)
    # both exported models compute the same thing in onnxruntime
    import onnxruntime as ort

    feeds = {i.name: a.numpy() for i, a in zip(first.graph.input, flat_args)}
    out1 = ort.InferenceSession(first.SerializeToString()).run(None, feeds)
    feeds = {i.name: a.numpy() for i, a in zip(second.graph.input, flat_args)}
    out2 = ort.InferenceSession(second.SerializeToString()).run(None, feeds)
    for a, b in zip(out1, out2, strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def test_default_import_folds_constants_and_still_matches(traced_gpt2_small):
    traced = traced_gpt2_small
    imported = from_onnx(to_onnx(traced.graph))
    assert len(imported.nodes) <= len(traced.graph.nodes)
    expected = leaves(graphopt.run(traced.graph, *traced.args))
    actual = leaves(graphopt.run(imported, *leaves(traced.args)))
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)


def test_optimized_graph_compiles_and_matches(traced_bert_small):
    traced = traced_bert_small
    optimized = graphopt.optimize(traced.graph)
    actual = leaves(graphopt.compile(optimized, threads=2)(*traced.args))
    for a, e in zip(actual, _eager(traced), strict=True):
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)


class _DynamicBatch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(16)
        self.proj = torch.nn.Linear(16, 32)

    def forward(self, x):
        y = torch.relu(self.proj(self.norm(x)))
        heads = y.reshape(x.shape[0], -1, 4, 8).transpose(1, 2)  # (batch, 4, seq, 8)
        att = torch.nn.functional.scaled_dot_product_attention(heads, heads, heads)
        return att.transpose(1, 2).reshape(x.shape[0], x.shape[1], 32).mean(1) + x.sum()


def test_dynamic_batch_traced_model_compiles_and_round_trips():
    torch.manual_seed(0)
    model = _DynamicBatch().eval()
    x = torch.randn(2, 5, 16)
    batch = torch.export.Dim("batch", min=1, max=8)
    graph = graphopt.trace(model, (x,), dynamic_shapes=({0: batch},))
    assert not graph.inputs[0].type.is_static
    compiled = graphopt.compile(graph, threads=1)
    assert compiled.onnx_model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    imported = from_onnx(compiled.onnx_model)
    for n in (1, 3):
        x_n = torch.randn(n, 5, 16)
        with torch.no_grad():
            expected = model(x_n)
        torch.testing.assert_close(compiled(x_n), expected, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(graphopt.run(imported, x_n), expected, rtol=RTOL, atol=ATOL)
