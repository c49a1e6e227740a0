"""ONNX Scan imported by unrolling (graphopt/onnx/import_control.py): each model against
onnxruntime, natively and through the reference interpreter, and the
refusals (ragged Scan-8, dynamic lengths, zero-trip scan outputs, unroll budget, unsupported
body ops listed up front)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from ort_util import matches_onnxruntime

import graphopt
from graphopt.errors import GraphoptError, OnnxImportError, ResourceLimitError
from graphopt.onnx import importer

F = TensorProto.FLOAT


def _info(name, shape):
    return helper.make_tensor_value_info(name, F, shape)


def _body_cumsum(extra_nodes=(), extra_outputs=()):
    """state s, scan x: s' = s + x, scan output y = s' * 2 (plus extras)."""
    nodes = [helper.make_node("Add", ["s", "x"], ["s_out"]),
             helper.make_node("Mul", ["s_out", "two"], ["y"]), *extra_nodes]
    two = helper.make_tensor("two", F, [], [2.0])
    return helper.make_graph(nodes, "body", [_info("s", [3]), _info("x", [3])],
                             [_info("s_out", [3]), _info("y", [3]), *extra_outputs],
                             initializer=[two])


def _model(scan_node, inputs, outputs, opset=17, initializers=()):
    graph = helper.make_graph([scan_node], "scan", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _check(model, feeds: dict):
    return matches_onnxruntime(model, feeds, rtol=1e-6, atol=1e-6, reference=True)


@pytest.mark.parametrize("in_dir,out_dir,in_axis,out_axis", [
    (0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 1), (1, 1, 1, 1), (0, 0, 1, 0)])
def test_scan_state_and_outputs(in_dir, out_dir, in_axis, out_axis):
    x_shape = [5, 3] if in_axis == 0 else [3, 5]
    y_shape = [5, 3] if out_axis == 0 else [3, 5]
    node = helper.make_node("Scan", ["init", "xs"], ["final", "ys"], body=_body_cumsum(),
                            num_scan_inputs=1, scan_input_directions=[in_dir],
                            scan_output_directions=[out_dir], scan_input_axes=[in_axis],
                            scan_output_axes=[out_axis])
    model = _model(node, [_info("init", [3]), _info("xs", x_shape)],
                   [_info("final", [3]), _info("ys", y_shape)])
    rng = np.random.default_rng(0)
    g = _check(model, {"init": rng.standard_normal(3, dtype=np.float32),
                       "xs": rng.standard_normal(x_shape, dtype=np.float32)})
    assert sum(n.op == "add" for n in g.nodes) == 5  # one body per iteration


def test_scan_body_reads_the_enclosing_graph():
    # "w" is defined outside the body (outer-scope capture, as ONNX scoping allows).
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]),
         helper.make_node("Add", ["s", "xw"], ["s_out"]),
         helper.make_node("Tanh", ["s_out"], ["y"])],
        "rnn_body", [_info("s", [1, 4]), _info("x", [1, 3])], [_info("s_out", [1, 4]),
                                                              _info("y", [1, 4])])
    node = helper.make_node("Scan", ["h0", "xs"], ["h", "ys"], body=body, num_scan_inputs=1)
    w = helper.make_tensor("w", F, [3, 4], np.linspace(-1, 1, 12, dtype=np.float32).tolist())
    model = _model(node, [_info("h0", [1, 4]), _info("xs", [6, 1, 3])],
                   [_info("h", [1, 4]), _info("ys", [6, 1, 4])], initializers=[w])
    rng = np.random.default_rng(1)
    _check(model, {"h0": rng.standard_normal((1, 4), dtype=np.float32),
                   "xs": rng.standard_normal((6, 1, 3), dtype=np.float32)})


def test_scan8_batched():
    node = helper.make_node("Scan", ["", "init", "xs"], ["final", "ys"], body=_body_cumsum(),
                            num_scan_inputs=1, directions=[1])
    model = _model(node, [_info("init", [2, 3]), _info("xs", [2, 4, 3])],
                   [_info("final", [2, 3]), _info("ys", [2, 4, 3])], opset=8)
    rng = np.random.default_rng(2)
    _check(model, {"init": rng.standard_normal((2, 3), dtype=np.float32),
                   "xs": rng.standard_normal((2, 4, 3), dtype=np.float32)})


def test_scan8_with_sequence_lens_is_refused():
    node = helper.make_node("Scan", ["lens", "init", "xs"], ["final", "ys"],
                            body=_body_cumsum(), num_scan_inputs=1)
    model = _model(node, [helper.make_tensor_value_info("lens", TensorProto.INT32, [2]),
                          _info("init", [2, 3]), _info("xs", [2, 4, 3])],
                   [_info("final", [2, 3]), _info("ys", [2, 4, 3])], opset=8)
    with pytest.raises(OnnxImportError, match="sequence_lens"):
        graphopt.from_onnx(model)


def test_dynamic_scan_length_is_refused_by_name():
    node = helper.make_node("Scan", ["init", "xs"], ["final", "ys"], body=_body_cumsum(),
                            num_scan_inputs=1)
    model = _model(node, [_info("init", [3]), _info("xs", ["T", 3])],
                   [_info("final", [3]), _info("ys", ["T", 3])])
    with pytest.raises(OnnxImportError, match="Scan node.*static size"):
        graphopt.from_onnx(model)


def test_unroll_budget(monkeypatch):
    monkeypatch.setattr(importer, "MAX_UNROLLED_NODES", 50)
    node = helper.make_node("Scan", ["init", "xs"], ["final", "ys"], body=_body_cumsum(),
                            num_scan_inputs=1)
    model = _model(node, [_info("init", [3]), _info("xs", [40, 3])],
                   [_info("final", [3]), _info("ys", [40, 3])])
    with pytest.raises(ResourceLimitError, match="unrolled loop bodies"):
        graphopt.from_onnx(model)


def test_unsupported_body_op_is_listed_up_front():
    extra = helper.make_node("StringNormalizer", ["x"], ["z"])
    body = _body_cumsum([extra], [_info("z", [3])])
    node = helper.make_node("Scan", ["init", "xs"], ["final", "ys", "zs"], body=body,
                            num_scan_inputs=1)
    model = _model(node, [_info("init", [3]), _info("xs", [4, 3])],
                   [_info("final", [3]), _info("ys", [4, 3]), _info("zs", [4, 3])])
    with pytest.raises(OnnxImportError, match="StringNormalizer") as info:
        graphopt.from_onnx(model, check=False)
    assert info.value.unsupported


def test_zero_trip_scan_with_outputs_is_refused():
    node = helper.make_node("Scan", ["init", "xs"], ["final", "ys"], body=_body_cumsum(),
                            num_scan_inputs=1)
    model = _model(node, [_info("init", [3]), _info("xs", [0, 3])],
                   [_info("final", [3]), _info("ys", [0, 3])])
    with pytest.raises(GraphoptError, match="zero iterations"):
        graphopt.from_onnx(model)


def test_malformed_scan_attributes():
    node = helper.make_node("Scan", ["init", "xs"], ["final", "ys"], body=_body_cumsum(),
                            num_scan_inputs=1, scan_input_directions=[2])
    model = _model(node, [_info("init", [3]), _info("xs", [4, 3])],
                   [_info("final", [3]), _info("ys", [4, 3])])
    with pytest.raises(OnnxImportError, match="scan_input_directions"):
        graphopt.from_onnx(model, check=False)


def _if_model(cond_input: bool, then_value, else_value, shape=(3,)):
    def branch(name, value):
        t = helper.make_tensor(f"{name}_v", F, list(np.shape(value)),
                               np.asarray(value, np.float32).ravel().tolist())
        return helper.make_graph([helper.make_node("Constant", [], [f"{name}_out"], value=t),
                                  helper.make_node("Add", [f"{name}_out", "x"], [f"{name}_y"])],
                                 name, [], [_info(f"{name}_y", list(np.shape(value)))])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", then_value),
                              else_branch=branch("else", else_value))]
    inputs = [_info("x", list(shape))]
    inits = []
    if cond_input:
        inputs.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    else:
        inits.append(helper.make_tensor("cond", TensorProto.BOOL, [], [False]))
    graph = helper.make_graph(nodes, "if", inputs, [_info("y", list(np.shape(then_value)))],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_if_with_a_known_condition_imports_the_taken_branch_only():
    model = _if_model(False, [1.0, 2.0, 3.0], [10.0, 20.0, 30.0])
    g = _check(model, {"x": np.arange(3, dtype=np.float32)})
    assert not any(n.op == "where" for n in g.nodes)
    assert sum(n.op == "add" for n in g.nodes) == 1


@pytest.mark.parametrize("cond", [True, False])
def test_if_with_a_run_time_condition_selects(cond):
    model = _if_model(True, [1.0, 2.0, 3.0], [10.0, 20.0, 30.0])
    g = _check(model, {"x": np.arange(3, dtype=np.float32), "cond": np.array(cond)})
    assert sum(n.op == "where" for n in g.nodes) == 1


def test_if_with_a_run_time_condition_and_different_branch_types_is_refused():
    model = _if_model(True, [1.0, 2.0, 3.0], [[10.0, 20.0, 30.0]] * 2)
    with pytest.raises(OnnxImportError, match="same types.*constant_inputs"):
        graphopt.from_onnx(model)
