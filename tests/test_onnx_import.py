"""from_onnx: typed errors for bad input, safe external data, symbolic shapes, shape arithmetic."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import sympy
import torch
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.errors import GraphoptError, OnnxImportError
from graphopt.onnx import from_onnx, to_onnx

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=21):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _relu_model():
    return _model([helper.make_node("Relu", ["x"], ["y"])],
                  [helper.make_tensor_value_info("x", F, [2, 3])],
                  [helper.make_tensor_value_info("y", F, [2, 3])])


# --------------------------------------------------------------------------- malformed input
def test_corrupt_file_raises_typed_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07this is not a protobuf \xff\xff\xff")
    with pytest.raises(OnnxImportError, match="not a valid ONNX model"):
        from_onnx(path)


def test_truncated_file_raises_typed_error(tmp_path):
    data = _relu_model().SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxImportError):
        from_onnx(path)


def test_missing_file_raises_typed_error(tmp_path):
    with pytest.raises(OnnxImportError, match="cannot read"):
        from_onnx(tmp_path / "nope.onnx")


def test_invalid_graph_fails_checker_with_typed_error():
    model = _model([helper.make_node("Relu", ["undefined"], ["y"])],
                   [helper.make_tensor_value_info("x", F, [2])],
                   [helper.make_tensor_value_info("y", F, [2])])
    with pytest.raises(OnnxImportError, match="not valid ONNX"):
        from_onnx(model)


def test_unsupported_ops_are_all_listed_with_node_names():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("Unique", ["a"], ["b"], name="first_bad"),
             helper.make_node("NonZero", ["b"], ["c"], name="second_bad"),
             helper.make_node("Frobnicate", ["c"], ["y"], name="custom", domain="my.domain")]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, [4])],
                   [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    model.opset_import.append(helper.make_opsetid("my.domain", 1))
    with pytest.raises(OnnxImportError) as info:
        from_onnx(model, check=False)
    message = str(info.value)
    for text in ("Unique", "first_bad", "NonZero", "second_bad", "my.domain.Frobnicate",
                 "custom"):
        assert text in message
    assert [op for op, _ in info.value.unsupported] == ["Unique", "NonZero",
                                                        "my.domain.Frobnicate"]


def test_unsupported_element_type_is_a_typed_error():
    model = _model([helper.make_node("Identity", ["x"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.STRING, [2])],
                   [helper.make_tensor_value_info("y", TensorProto.STRING, [2])])
    with pytest.raises(OnnxImportError, match="STRING"):
        from_onnx(model)


# ------------------------------------------------------------------------------ external data
def _external_model(tmp_path, location: str):
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "24")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])],
                   [helper.make_tensor_value_info("x", F, [2, 3])],
                   [helper.make_tensor_value_info("y", F, [2, 3])], [weight])
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    (tmp_path / "weights.bin").write_bytes(np.arange(6, dtype=np.float32).tobytes())
    graph = from_onnx(_external_model(tmp_path, "weights.bin"))
    out = graphopt.run(graph, torch.ones(2, 3))
    torch.testing.assert_close(out, torch.arange(6.0).reshape(2, 3) + 1)


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "/etc/passwd",
                                      "..\\secret.bin"])
def test_external_data_path_traversal_is_rejected(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 24)
    with pytest.raises(OnnxImportError, match="relative path inside|outside"):
        from_onnx(_external_model(folder, location))


def test_external_data_symlink_escaping_the_folder_is_rejected(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.zeros(6, dtype=np.float32).tobytes())
    os.symlink(secret, folder / "weights.bin")
    with pytest.raises(OnnxImportError, match="outside the model's directory"):
        from_onnx(_external_model(folder, "weights.bin"))


def test_external_data_range_beyond_the_file_is_rejected(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    with pytest.raises(OnnxImportError, match="exceeds"):
        from_onnx(_external_model(tmp_path, "weights.bin"))


def test_external_data_needs_a_base_dir_for_in_memory_models(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    with pytest.raises(OnnxImportError, match="base_dir"):
        from_onnx(onnx.load_model(str(path), load_external_data=False))


def test_export_with_external_data_round_trips(tmp_path):
    graph = from_onnx(_relu_model())
    w = graph.add_constant(np.ones((3, 128), dtype=np.float32), "w")  # over the 1 KiB threshold
    with graph.inserting_before(None):
        y = graph.create_node("matmul", [graph.outputs[0], w]).output
    graph.set_outputs([y])
    path = tmp_path / "out.onnx"
    to_onnx(graph, path, external_data=True)
    assert (tmp_path / "out.onnx.data").stat().st_size == 3 * 128 * 4
    onnx.checker.check_model(str(path), full_check=True)
    back = from_onnx(path)
    x = torch.randn(2, 3)
    torch.testing.assert_close(graphopt.run(back, x), torch.relu(x) @ torch.ones(3, 128))


# --------------------------------------------------------------------- shapes and constants
def _dynamic_reshape_model():
    """y = reshape(x, [batch, -1]) computed with Shape/Gather/Unsqueeze/Concat."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "zero1"], ["b1"]),
        helper.make_node("Concat", ["b1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "zero1"),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus1")]
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["batch", 3, 4])],
                  [helper.make_tensor_value_info("y", F, ["batch", 12])], inits)


def test_symbolic_shape_arithmetic_becomes_static_attributes():
    graph = from_onnx(_dynamic_reshape_model())
    assert [n.op for n in graph.nodes] == ["reshape"]
    batch = graph.inputs[0].shape[0]
    assert isinstance(batch, sympy.Symbol) and str(batch) == "batch"
    assert graph.outputs[0].shape == (batch, 12)
    for n in (1, 5):
        x = torch.randn(n, 3, 4)
        torch.testing.assert_close(graphopt.run(graph, x), x.reshape(n, 12))


def test_symbolic_dims_export_as_dim_param_and_run_in_onnxruntime():
    graph = from_onnx(_dynamic_reshape_model())
    model = to_onnx(graph)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    compiled = graphopt.compile(graph, threads=1)
    x = torch.randn(3, 3, 4)
    torch.testing.assert_close(compiled(x), x.reshape(3, 12))


def test_run_time_shape_input_names_the_input_to_freeze():
    model = _model([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                   [helper.make_tensor_value_info("x", F, [2, 6]),
                    helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                   [helper.make_tensor_value_info("y", F, ["a", "b"])])
    with pytest.raises(OnnxImportError) as info:
        from_onnx(model)
    assert info.value.needs_static == ["shape"]
    graph = from_onnx(model, constant_inputs={"shape": np.array([3, 4])})
    assert len(graph.inputs) == 1
    x = torch.randn(2, 6)
    torch.testing.assert_close(graphopt.run(graph, x), x.reshape(3, 4))


def test_constant_subgraphs_fold_unless_disabled():
    nodes = [helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Mul", ["x", "c"], ["y"])]
    inits = [numpy_helper.from_array(np.ones(3, np.float32), "a"),
             numpy_helper.from_array(np.ones(3, np.float32), "b")]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, [3])],
                   [helper.make_tensor_value_info("y", F, [3])], inits)
    assert [n.op for n in from_onnx(model).nodes] == ["mul"]
    assert [n.op for n in from_onnx(model, fold_constants=False).nodes] == ["add", "mul"]


def test_import_keeps_onnx_value_names():
    graph = from_onnx(_relu_model())
    assert [v.name for v in graph.inputs] == ["x"]
    assert [v.name for v in graph.outputs] == ["y"]


def test_output_dtype_disagreement_would_be_reported():
    # ONNX says the output is int64 but Relu keeps float: graphopt reports, never guesses.
    model = _model([helper.make_node("Relu", ["x"], ["y"])],
                   [helper.make_tensor_value_info("x", F, [2])],
                   [helper.make_tensor_value_info("y", TensorProto.INT64, [2])])
    with pytest.raises(GraphoptError):
        from_onnx(model, check=False)


def test_multi_output_and_optional_outputs():
    nodes = [helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1),
             helper.make_node("TopK", ["a", "k"], ["v", "i"], axis=1)]
    inits = [numpy_helper.from_array(np.array([3, 2], dtype=np.int64), "sizes"),
             numpy_helper.from_array(np.array([2], dtype=np.int64), "k")]
    model = _model(nodes, [helper.make_tensor_value_info("x", F, [2, 5])],
                   [helper.make_tensor_value_info("v", F, [2, 2]),
                    helper.make_tensor_value_info("i", TensorProto.INT64, [2, 2]),
                    helper.make_tensor_value_info("b", F, [2, 2])], inits)
    graph = from_onnx(model)
    x = torch.tensor([[1.0, 5.0, 3.0, 0.0, 9.0], [4.0, 4.0, 2.0, 1.0, 1.0]])
    v, i, b = graphopt.run(graph, x)
    torch.testing.assert_close(v, torch.tensor([[5.0, 3.0], [4.0, 4.0]]))
    torch.testing.assert_close(i, torch.tensor([[1, 2], [0, 1]]))  # ties: lower index first
    torch.testing.assert_close(b, x[:, 3:])


def test_weights_over_the_protobuf_limit_go_to_external_data(tmp_path, monkeypatch):
    import graphopt.onnx.export as export

    monkeypatch.setattr(export, "EXTERNAL_DATA_THRESHOLD", 1000)  # pretend 1 KB is 2 GB
    graph = from_onnx(_relu_model())
    w = graph.add_constant(np.ones((3, 128), dtype=np.float32), "w")
    with graph.inserting_before(None):
        y = graph.create_node("matmul", [graph.outputs[0], w]).output
    graph.set_outputs([y])
    with pytest.raises(GraphoptError, match="external data file"):
        to_onnx(graph)
    to_onnx(graph, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").exists()
    x = torch.randn(2, 3)
    torch.testing.assert_close(graphopt.run(from_onnx(tmp_path / "big.onnx"), x),
                               torch.relu(x) @ torch.ones(3, 128))
