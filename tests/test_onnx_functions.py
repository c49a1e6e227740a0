"""ONNX ops defined by a schema function body and imported by expanding it
(graphopt/onnx/import_function.py): results against onnxruntime, natively; two expansions of
one function in a graph; attribute references; ops with neither converter nor body still
listed as unsupported."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from ort_util import matches_onnxruntime

import graphopt
from graphopt.errors import OnnxImportError

F = TensorProto.FLOAT
OPSET = 27  # CausalConvWithState and LinearAttention arrived in opset 27


def _info(name, shape):
    return helper.make_tensor_value_info(name, F, shape)


@pytest.mark.parametrize("activation", [None, "silu"])
def test_two_causal_convs_expand_without_sharing_names(activation):
    attrs = {} if activation is None else {"activation": activation}
    nodes = [helper.make_node("CausalConvWithState", ["x", "w1", "b1"], ["h", "s1"], **attrs),
             helper.make_node("CausalConvWithState", ["h", "w2", "", "past"], ["y", "s2"],
                              **attrs)]
    graph = helper.make_graph(
        nodes, "convs", [_info("x", [2, 4, 8]), _info("w1", [4, 1, 3]), _info("b1", [4]),
                         _info("w2", [4, 1, 4]), _info("past", [2, 4, 3])],
        [_info("y", [2, 4, 8]), _info("s1", [2, 4, 2]), _info("s2", [2, 4, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in
             [("x", (2, 4, 8)), ("w1", (4, 1, 3)), ("b1", (4,)), ("w2", (4, 1, 4)),
              ("past", (2, 4, 3))]}
    g = matches_onnxruntime(model, feeds)
    assert not any(n.op == "CausalConvWithState" for n in g.nodes)


def test_linear_attention_expands():
    node = helper.make_node("LinearAttention", ["q", "k", "v"], ["out", "state"],
                            q_num_heads=2, kv_num_heads=2, update_rule="linear")
    graph = helper.make_graph([node], "la",
                              [_info("q", [1, 5, 8]), _info("k", [1, 5, 8]),
                               _info("v", [1, 5, 8])],
                              [_info("out", [1, 5, 8]), _info("state", [1, 2, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal((1, 5, 8), dtype=np.float32) * 0.5 for n in "qkv"}
    matches_onnxruntime(model, feeds)


def test_op_without_converter_or_body_is_still_listed():
    node = helper.make_node("Unique", ["x"], ["y"])
    graph = helper.make_graph([node], "u", [_info("x", [4])], [_info("y", [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    with pytest.raises(OnnxImportError, match="Unique") as info:
        graphopt.from_onnx(model, check=False)
    assert info.value.unsupported
