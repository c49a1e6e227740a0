"""ONNX ops imported as compositions of IR ops (no op of their own): Col2Im (a transposed
convolution), LpPool with dilations, ReverseSequence and TensorScatter (index arithmetic +
gather / scatter), ConvTranspose with an output_shape past the full result, BitCast, and the
ai.onnx.ml Binarizer / ArrayFeatureExtractor. Each against onnxruntime, natively."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from ort_util import matches_onnxruntime

import graphopt
from graphopt.errors import OnnxImportError

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes, inputs, outputs, opset=24, inits=(), extra_opsets=()):
    graph = helper.make_graph(nodes, "m", inputs, outputs, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def _randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@pytest.mark.parametrize("image,block,dil,pads,strides", [
    ((5, 5), (2, 2), (1, 1), (0, 0, 0, 0), (1, 1)),
    ((6, 7), (3, 2), (2, 1), (1, 0, 2, 1), (2, 1)),
    ((5, 4), (2, 3), (1, 1), (0, 1, 1, 0), (2, 2))])
def test_col2im(image, block, dil, pads, strides):
    n = len(image)
    k = int(np.prod(block))
    blocks = [(i + pads[a] + pads[a + n] - (d * (b - 1) + 1)) // s + 1
              for a, (i, b, d, s) in enumerate(zip(image, block, dil, strides))]
    x = _randn(2, 3 * k, int(np.prod(blocks)))
    node = helper.make_node("Col2Im", ["x", "image", "block"], ["y"], dilations=list(dil),
                            pads=list(pads), strides=list(strides))
    inits = [helper.make_tensor("image", I64, [n], list(image)),
             helper.make_tensor("block", I64, [n], list(block))]
    model = _model([node], [helper.make_tensor_value_info("x", F, list(x.shape))],
                   [helper.make_tensor_value_info("y", F, [2, 3, *image])], inits=inits)
    g = matches_onnxruntime(model, {"x": x})
    assert any(n.op == "conv_transpose" for n in g.nodes)


def test_lp_pool_with_dilations():
    node = helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 1],
                            pads=[1, 0, 0, 1], p=3)
    model = _model([node], [helper.make_tensor_value_info("x", F, [1, 2, 6, 5])],
                   [helper.make_tensor_value_info("y", F, [1, 2, 5, 5])])
    matches_onnxruntime(model, {"x": _randn(1, 2, 6, 5)}, rtol=1e-4)


@pytest.mark.parametrize("batch_axis,time_axis", [(1, 0), (0, 1)])
def test_reverse_sequence(batch_axis, time_axis):
    shape = [5, 3, 2] if time_axis == 0 else [3, 5, 2]
    node = helper.make_node("ReverseSequence", ["x", "lens"], ["y"], batch_axis=batch_axis,
                            time_axis=time_axis)
    model = _model([node], [helper.make_tensor_value_info("x", F, shape),
                            helper.make_tensor_value_info("lens", I64, [3])],
                   [helper.make_tensor_value_info("y", F, shape)])
    matches_onnxruntime(model, {"x": _randn(*shape), "lens": np.array([5, 1, 3], np.int64)})


@pytest.mark.parametrize("mode", ["linear", "circular"])
def test_tensor_scatter(mode):
    node = helper.make_node("TensorScatter", ["cache", "update", "at"], ["out"], mode=mode,
                            axis=2)
    model = _model([node], [helper.make_tensor_value_info("cache", F, [2, 3, 6, 4]),
                            helper.make_tensor_value_info("update", F, [2, 3, 2, 4]),
                            helper.make_tensor_value_info("at", I64, [2])],
                   [helper.make_tensor_value_info("out", F, [2, 3, 6, 4])])
    at = np.array([1, 5] if mode == "circular" else [0, 4], np.int64)
    matches_onnxruntime(model, {"cache": _randn(2, 3, 6, 4), "update": _randn(2, 3, 2, 4, seed=1),
                    "at": at})


def test_conv_transpose_output_shape_past_the_full_result():
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[3, 2],
                            output_shape=[10, 8])
    inits = [helper.make_tensor("w", F, [1, 2, 3, 3], _randn(1, 2, 3, 3).ravel().tolist()),
             helper.make_tensor("b", F, [2], [0.5, -1.0])]
    model = _model([node], [helper.make_tensor_value_info("x", F, [1, 1, 3, 3])],
                   [helper.make_tensor_value_info("y", F, [1, 2, 10, 8])], inits=inits)
    matches_onnxruntime(model, {"x": _randn(1, 1, 3, 3)})


def test_bitcast_import():
    node = helper.make_node("BitCast", ["x"], ["y"], to=TensorProto.INT32)
    model = _model([node], [helper.make_tensor_value_info("x", F, [3, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.INT32, [3, 4])], opset=26)
    matches_onnxruntime(model, {"x": _randn(3, 4)})


def test_onnx_ml_binarizer_and_array_feature_extractor():
    ml = [helper.make_opsetid("ai.onnx.ml", 3)]
    nodes = [helper.make_node("Binarizer", ["x"], ["b"], domain="ai.onnx.ml", threshold=0.2),
             helper.make_node("ArrayFeatureExtractor", ["x", "idx"], ["f"],
                              domain="ai.onnx.ml")]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, [3, 5]),
                           helper.make_tensor_value_info("idx", I64, [3])],
                   [helper.make_tensor_value_info("b", F, [3, 5]),
                    helper.make_tensor_value_info("f", F, [3, 3])], opset=21, extra_opsets=ml)
    matches_onnxruntime(model, {"x": _randn(3, 5), "idx": np.array([4, 0, 4], np.int64)})


def test_reverse_sequence_rejects_lengths_that_do_not_fit():
    node = helper.make_node("ReverseSequence", ["x", "lens"], ["y"])
    model = _model([node], [helper.make_tensor_value_info("x", F, [5, 3]),
                            helper.make_tensor_value_info("lens", I64, [4])],
                   [helper.make_tensor_value_info("y", F, [5, 3])])
    with pytest.raises(OnnxImportError, match="one length per batch"):
        graphopt.from_onnx(model, check=False)


@pytest.mark.parametrize("kernel,strides,pads,dilations,ceil,order", [
    ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0, 0),
    ((3, 3), (1, 2), (1, 1, 1, 1), (1, 1), 0, 1),
    ((3, 2), (2, 1), (1, 0, 0, 1), (1, 2), 0, 0),
    ((2, 3), (2, 2), (0, 1, 0, 1), (1, 1), 1, 0)])
def test_max_pool_indices(kernel, strides, pads, dilations, ceil, order):
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=list(kernel),
                            strides=list(strides), pads=list(pads), dilations=list(dilations),
                            ceil_mode=ceil, storage_order=order)
    x = _randn(2, 3, 7, 8)
    model = _model([node], [helper.make_tensor_value_info("x", F, [2, 3, 7, 8])],
                   [helper.make_tensor_value_info("y", F, ["n", "c", "ho", "wo"]),
                    helper.make_tensor_value_info("i", I64, ["n", "c", "ho", "wo"])],
                   opset=12)
    g = matches_onnxruntime(model, {"x": x})
    assert any(n.op == "argmax" for n in g.nodes)
