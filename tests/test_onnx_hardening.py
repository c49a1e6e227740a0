"""from_onnx on hostile input: one test per class of malformed model, plus a bounded fuzz run.

Each test asserts the error type and that the message names what is wrong (the node and op,
the tensor, the attribute or the file), so a user can act on it. Most models here would be
refused by ``onnx.checker`` already; they are imported with ``check=False`` to show that
graphopt's own validation holds when the checker is off (or misses the problem).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import random

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.errors import GraphoptError, OnnxImportError, ResourceLimitError
from graphopt.limits import memory_budget_scope
from graphopt.model_loader import ModelSpecError, random_inputs
from graphopt.onnx import from_onnx
from graphopt.onnx.importer import CONVERTERS, OnnxInternalError

F = TensorProto.FLOAT
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _model(nodes, inputs, outputs, initializers=(), opset=21):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, shape=(), dtype=F):
    """A value info; shape None leaves the rank unknown (outputs only, and check=False)."""
    return helper.make_tensor_value_info(name, dtype, shape)


def _conv_model(**attrs):
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), dtype=np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv1", **attrs)
    return _model([node], [_vi("x", [1, 3, 8, 8])], [_vi("y", None)], [w])


def _import_error(model, **kwargs) -> str:
    with pytest.raises(OnnxImportError) as info:
        from_onnx(model, **kwargs)
    assert not isinstance(info.value, OnnxInternalError), str(info.value)
    return str(info.value)


# ------------------------------------------------------------------------ node attributes
def test_conv_stride_zero_names_the_node_and_attribute():
    message = _import_error(_conv_model(strides=[0, 1]), check=False)
    assert "Conv node 'conv1'" in message and "strides" in message


def test_conv_negative_pads_and_kernel_shape_mismatch_are_rejected():
    assert "pads" in _import_error(_conv_model(pads=[-1, 0, 0, 0]), check=False)
    message = _import_error(_conv_model(kernel_shape=[5, 5]), check=False)
    assert "kernel_shape" in message and "conv1" in message


def test_conv_group_that_does_not_match_the_channels_is_rejected():
    message = _import_error(_conv_model(group=2), check=False)
    assert "conv1" in message and "group=2" in message


def test_out_of_range_axis_is_rejected_not_wrapped():
    model = _model([helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=2)],
                   [_vi("x", [2, 3])], [_vi("y", [2, 3])])
    message = _import_error(model, check=False)
    assert "Softmax node 'sm'" in message and "axis" in message and "[-2, 1]" in message


def test_negative_axis_in_range_is_normalized():
    model = _model([helper.make_node("Concat", ["x", "x"], ["y"], axis=-1)],
                   [_vi("x", [2, 3])], [_vi("y", [2, 6])])
    graph = from_onnx(model)
    (concat,) = [n for n in graph.nodes if n.op == "concat"]
    assert concat.attrs["axis"] == 1


def test_slice_step_zero_and_transpose_bad_perm_are_rejected():
    inits = [numpy_helper.from_array(np.array(v, dtype=np.int64), n)
             for n, v in (("s", [0]), ("e", [2]), ("a", [0]), ("st", [0]))]
    model = _model([helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"], name="sl")],
                   [_vi("x", [4])], [_vi("y", None)], inits)
    message = _import_error(model, check=False)
    assert "Slice node 'sl'" in message and "steps" in message
    model = _model([helper.make_node("Transpose", ["x"], ["y"], name="tr", perm=[0, 0])],
                   [_vi("x", [2, 3])], [_vi("y", [2, 2])])
    assert "perm" in _import_error(model)


def test_split_with_a_huge_num_outputs_fails_fast():
    node = helper.make_node("Split", ["x"], ["a", "b"], name="sp", axis=0, num_outputs=2**40)
    model = _model([node], [_vi("x", [6])], [_vi("a", None), _vi("b", None)])
    message = _import_error(model, check=False)
    assert "Split node 'sp'" in message and "num_outputs" in message


def test_attribute_of_the_wrong_type_and_unknown_attribute_are_rejected():
    node = helper.make_node("Softmax", ["x"], ["y"], name="sm")
    node.attribute.append(helper.make_attribute("axis", 1.5))
    model = _model([node], [_vi("x", [2, 3])], [_vi("y", None)])
    message = _import_error(model, check=False)
    assert "sm" in message and "'axis'" in message and "float" in message
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="r", alpha=1.0)],
                   [_vi("x", [2])], [_vi("y", None)])
    assert "'alpha' is not an attribute of Relu" in _import_error(model, check=False)


def test_missing_required_input_and_op_outside_its_opset_are_rejected():
    model = _model([helper.make_node("Conv", ["x", "", "x"], ["y"], name="c")],
                   [_vi("x", [1, 3, 8, 8])], [_vi("y", None)])
    message = _import_error(model, check=False)
    assert "Conv node 'c'" in message and "required input 1" in message
    model = _model([helper.make_node("LayerNormalization", ["x", "x"], ["y"], name="ln")],
                   [_vi("x", [2])], [_vi("y", None)], opset=13)
    assert "does not exist at opset 13" in _import_error(model, check=False)


# -------------------------------------------------------------------- dims, dtypes, tensors
def test_negative_dim_in_an_input_is_rejected():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2, -3])],
                   [_vi("y", None)])
    message = _import_error(model, check=False)
    assert "input 'x'" in message and "-3" in message


def test_initializer_dims_and_data_must_agree():
    w = numpy_helper.from_array(np.ones(3, dtype=np.float32), "w")
    w.dims[0] = -3
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x", [3])],
                   [_vi("y", None)], [w])
    assert "initializer 'w'" in _import_error(model, check=False)
    w = TensorProto(name="w", data_type=F, dims=[3], float_data=[1.0, 2.0])  # 2 for 3
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x", [3])],
                   [_vi("y", None)], [w])
    message = _import_error(model, check=False)
    assert "initializer 'w'" in message and "2 values" in message


def test_narrow_int_values_out_of_range_are_not_wrapped():
    w = TensorProto(name="w", data_type=TensorProto.INT8, dims=[2])
    w.int32_data.extend([1, 300])
    model = _model([helper.make_node("Identity", ["w"], ["y"])], [], [_vi("y", None,
                   TensorProto.INT8)], [w])
    message = _import_error(model, check=False)
    assert "initializer 'w'" in message and "[-128, 127]" in message


def test_unknown_dtype_is_rejected_with_the_tensor_named():
    w = TensorProto(name="w", data_type=999, dims=[1], raw_data=b"\0")
    model = _model([helper.make_node("Identity", ["w"], ["y"])], [], [_vi("y", None)], [w])
    message = _import_error(model, check=False)
    assert "initializer 'w'" in message and "<dtype 999>" in message


def test_dims_whose_product_overflows_are_rejected():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [0, 2**40, 2**40])],
                   [_vi("y", None)])
    assert "overflows int64" in _import_error(model, check=False)


def test_corrupt_protobuf_names_the_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(_conv_model().SerializeToString()[:-7] + b"\xff\xff")
    message = _import_error(path)
    assert str(path) in message


def test_checker_failures_carry_the_file_and_the_checkers_message(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(_conv_model(strides=[0, 1]).SerializeToString())
    message = _import_error(path)
    assert str(path) in message and ("not valid ONNX" in message or "strides" in message)


def test_dim_param_text_is_a_plain_symbol_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [payload, 3])],
                   [_vi("y", [payload, 3])])
    graph = from_onnx(model)
    assert not marker.exists()
    (symbol,) = graph.inputs[0].shape[0].free_symbols
    assert str(symbol).isidentifier() and "(" not in str(symbol)


# -------------------------------------------------------------------------- quantization
def _dq_model(scale, zero_point, zp_dtype=np.uint8):
    inits = [numpy_helper.from_array(np.array(scale, dtype=np.float32), "s"),
             numpy_helper.from_array(np.array(zero_point, dtype=zp_dtype), "z")]
    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], name="dq")
    return _model([node], [_vi("x", [2, 3], TensorProto.UINT8)], [_vi("y", [2, 3])], inits)


@pytest.mark.parametrize("scale", [0.0, -0.5, float("nan"), float("inf")])
def test_quantization_scale_must_be_finite_and_positive(scale):
    message = _import_error(_dq_model(scale, 128), check=False)
    assert "DequantizeLinear node 'dq'" in message and "scale" in message


def test_zero_point_of_another_type_or_shape_is_rejected():
    message = _import_error(_dq_model(0.1, 3, np.int8), check=False)
    assert "dq" in message and "zero point" in message
    message = _import_error(_dq_model([0.1, 0.2, 0.3], [1, 2]), check=False)
    assert "dq" in message and "zero point" in message


def test_valid_per_channel_dequantize_still_imports():
    graph = from_onnx(_dq_model([0.1, 0.2, 0.3], [1, 2, 3]))
    x = torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.uint8)
    expected = (x.float() - torch.tensor([1.0, 2, 3])) * torch.tensor([0.1, 0.2, 0.3])
    torch.testing.assert_close(graphopt.run(graph, x), expected)


# -------------------------------------------------------------------------- external data
def _external_model(folder, location, dims=(2, 3), length=None):
    weight = TensorProto(name="w", data_type=F, dims=list(dims))
    weight.data_location = TensorProto.EXTERNAL
    entries = [("location", location), ("offset", "0")]
    if length is not None:
        entries.append(("length", str(length)))
    for key, value in entries:
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x", list(dims))],
                   [_vi("y", list(dims))], [weight])
    path = pathlib.Path(folder) / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_length_must_match_the_tensor(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.zeros(8, dtype=np.float32).tobytes())
    message = _import_error(_external_model(tmp_path, "w.bin"))  # 32 bytes for 24
    assert "tensor 'w'" in message and "'w.bin'" in message and "need 24" in message
    message = _import_error(_external_model(tmp_path, "w.bin", length=16))
    assert "tensor 'w'" in message and "16 bytes" in message


def test_external_data_over_the_budget_is_refused_before_reading(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\0" * 4096)
    path = _external_model(tmp_path, "w.bin", dims=(32, 32), length=4096)
    with memory_budget_scope(1024), pytest.raises(ResourceLimitError) as info:
        from_onnx(path)
    assert "tensor 'w'" in str(info.value) and info.value.requested == 4096
    from_onnx(path)  # fine under the default budget


def test_external_data_total_is_budgeted_too(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\0" * 4096)
    tensors = []
    for i in range(4):  # four tensors reading the same 4 KiB
        t = TensorProto(name=f"w{i}", data_type=F, dims=[1024])
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "w.bin"), ("offset", "0"), ("length", "4096")):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        tensors.append(t)
    nodes = [helper.make_node("Sum", [t.name for t in tensors], ["y"])]
    path = tmp_path / "model.onnx"
    path.write_bytes(_model(nodes, [], [_vi("y", [1024])], tensors).SerializeToString())
    with memory_budget_scope(10000), pytest.raises(ResourceLimitError) as info:
        from_onnx(path)
    assert "external data of the model" in str(info.value)


def test_external_data_through_a_symlinked_folder_out_of_the_model_dir(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(np.zeros(6, dtype=np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    os.symlink(outside, folder / "sub")
    message = _import_error(_external_model(folder, "sub/w.bin"))
    assert "tensor 'w'" in message and "outside the model's directory" in message


def test_external_data_that_is_not_a_regular_file_is_refused(tmp_path):
    (tmp_path / "w.bin").mkdir()
    message = _import_error(_external_model(tmp_path, "w.bin"))
    assert "tensor 'w'" in message and "not a regular file" in message


# ------------------------------------------------------------------------- resource limits
def test_import_time_constants_are_budgeted():
    model = _model([helper.make_node("EyeLike", ["x"], ["y"], name="eye")],
                   [_vi("x", [4096, 4096])], [_vi("y", [4096, 4096])])
    with memory_budget_scope(1 << 20), pytest.raises(ResourceLimitError) as info:
        from_onnx(model)
    assert "EyeLike" in str(info.value)


def test_random_inputs_checks_each_input_against_the_budget():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", ["n", 1024])],
                   [_vi("y", ["n", 1024])])
    graph = from_onnx(model)
    (symbol,) = graph.inputs[0].shape[0].free_symbols
    with memory_budget_scope(1 << 20), pytest.raises(ResourceLimitError) as info:
        random_inputs(graph, {str(symbol): 100_000})
    assert "random input 'x'" in str(info.value)
    with pytest.raises(ModelSpecError, match="non-negative"):
        random_inputs(graph, {str(symbol): -1})
    assert random_inputs(graph, {str(symbol): 2})[0].shape == (2, 1024)


def test_a_graph_in_reverse_order_imports_without_quadratic_sorting():
    n = 3000
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(n)]
    model = _model(list(reversed(nodes)), [_vi("t0", [2])], [_vi(f"t{n}", [2])])
    graph = from_onnx(model, check=False)
    assert len([node for node in graph.nodes if node.op == "relu"]) == n


# ------------------------------------------------------------------- last line of defence
def test_unexpected_exceptions_become_internal_errors_naming_the_node(monkeypatch):
    def broken(ctx, node):
        return 1 // 0

    monkeypatch.setitem(CONVERTERS, ("", "Relu"), broken)
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="boom")], [_vi("x", [2])],
                   [_vi("y", [2])])
    with pytest.raises(OnnxInternalError) as info:
        from_onnx(model)
    message = str(info.value)
    assert "Relu node 'boom'" in message and "ZeroDivisionError" in message
    assert "please report" in message and isinstance(info.value, GraphoptError)


# -------------------------------------------------------------------------------- fuzzing
def _harness():
    spec = importlib.util.spec_from_file_location("fuzz_onnx", ROOT / "fuzz" / "fuzz_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bounded_fuzz_run_over_mutated_seeds_raises_only_graphopt_errors():
    harness = _harness()
    corpus = ROOT / harness.SEED_DIR
    seeds = [p.read_bytes() for p in sorted(corpus.iterdir())
             if p.is_file() and p.stat().st_size < 40_000]
    assert len(seeds) >= 20, "the seed corpus fuzz/corpus/onnx is missing"
    rng = random.Random(14)
    for i in range(300):
        data = harness.mutate(seeds[i % len(seeds)], rng)
        harness.test_one_input(data)  # anything but GraphoptError fails the test


def test_zoo_seed_models_import_cleanly():
    """The zoo exports in the corpus (the large seeds; node test models are < 2 KB) are valid
    models: the hardening must not reject them."""
    harness = _harness()
    zoo_seeds = [p for p in sorted((ROOT / harness.SEED_DIR).iterdir())
                 if p.is_file() and p.stat().st_size > 5000]
    assert len(zoo_seeds) >= 5
    for path in zoo_seeds:
        from_onnx(path.read_bytes())


def test_runaway_shape_arithmetic_stays_unknown_instead_of_hanging():
    """Shape -> (s * (s + 1)) twelve times: the expression doubles at each step; past a size
    it is not tracked, so the Reshape asks for a static shape instead of simplifying for
    hours."""
    one = numpy_helper.from_array(np.array([1], dtype=np.int64), "one")
    nodes = [helper.make_node("Shape", ["x"], ["s0"])]
    for i in range(12):
        nodes.append(helper.make_node("Add", [f"s{i}", "one"], [f"a{i}"]))
        nodes.append(helper.make_node("Mul", [f"s{i}", f"a{i}"], [f"s{i + 1}"]))
    nodes.append(helper.make_node("Reshape", ["x", "s12"], ["y"], name="rs"))
    model = _model(nodes, [_vi("x", ["n"])], [_vi("y", None)], [one])
    message = _import_error(model, check=False)
    assert "Reshape node 'rs'" in message and "must be a constant" in message


def test_deeply_nested_symbolic_sizes_are_refused(monkeypatch):
    monkeypatch.setattr("graphopt.onnx.importer.MAX_SYMBOLIC_DEPTH", 6)
    nodes = [helper.make_node("MaxPool", [f"t{i}"], [f"t{i + 1}"], name=f"pool{i}",
                              kernel_shape=[3], strides=[2]) for i in range(4)]
    model = _model(nodes, [_vi("t0", [1, 1, "n"])], [_vi("t4", None)])
    message = _import_error(model, check=False)
    assert "MaxPool node 'pool" in message and "static sizes" in message


def test_one_element_scale_is_per_tensor_whatever_the_axis():
    inits = [numpy_helper.from_array(np.array([0.5], dtype=np.float32), "s"),
             numpy_helper.from_array(np.array([2], dtype=np.uint8), "z")]
    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"])
    model = _model([node], [_vi("x", [4], TensorProto.UINT8)], [_vi("y", [4])], inits)
    graph = from_onnx(model)
    x = torch.tensor([2, 4, 6, 8], dtype=torch.uint8)
    torch.testing.assert_close(graphopt.run(graph, x), torch.tensor([0.0, 1.0, 2.0, 3.0]))


def test_upsample_of_a_symbolic_size():
    def model(factor):
        scales = numpy_helper.from_array(np.array([1, 1, factor, 2], dtype=np.float32), "s")
        node = helper.make_node("Upsample", ["x", "s"], ["y"], name="up", mode="nearest")
        return _model([node], [_vi("x", [1, 1, "h", 4])], [_vi("y", None)], [scales],
                      opset=9)

    graph = from_onnx(model(2.0), check=False)
    assert graph.outputs[0].shape[3] == 8 and str(graph.outputs[0].shape[2]).startswith("2*")
    message = _import_error(model(1.5), check=False)
    assert "Upsample node 'up'" in message and "fractional" in message
