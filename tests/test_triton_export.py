"""``graphopt export --triton`` (issue #19, graphopt/triton.py): a Triton model repository whose
config.pbtxt agrees with the ONNX model it names, batch dim and all, and whose model runs in
onnxruntime like the graph; model directories as MODEL."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch
from torch.export import Dim

import graphopt
from graphopt.errors import GraphoptError
from graphopt.triton import export_triton


def _mlp(dynamic: bool):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU()).eval()
    x = torch.randn(2, 16)
    shapes = ({0: Dim("batch")},) if dynamic else None
    return graphopt.optimize(graphopt.trace(model, (x,), dynamic_shapes=shapes)), x


def test_a_batchable_model_gets_a_batch_dim_and_dynamic_batching(tmp_path):
    graph, x = _mlp(dynamic=True)
    folder = export_triton(graph, tmp_path / "repo", "mlp", max_batch=16)
    config = (tmp_path / "repo" / "mlp" / "config.pbtxt").read_text()
    session = onnxruntime.InferenceSession(str(tmp_path / "repo" / "mlp" / "1" / "model.onnx"))
    name_in, name_out = session.get_inputs()[0].name, session.get_outputs()[0].name
    assert 'name: "mlp"' in config and 'platform: "onnxruntime_onnx"' in config
    assert "max_batch_size: 16" in config and "max_queue_delay_microseconds: 100" in config
    assert f'name: "{name_in}"\n    data_type: TYPE_FP32\n    dims: [ 16 ]' in config
    assert f'name: "{name_out}"\n    data_type: TYPE_FP32\n    dims: [ 8 ]' in config
    assert "kind: KIND_CPU" in config and folder.endswith("mlp")
    got = session.run(None, {name_in: x.numpy()})[0]
    np.testing.assert_allclose(got, graphopt.run(graph, x).numpy(), rtol=1e-5, atol=1e-6)


def test_a_fixed_shape_model_lists_full_dims_without_batching(tmp_path):
    graph, _ = _mlp(dynamic=False)
    export_triton(graph, tmp_path, "fixed")
    config = (tmp_path / "fixed" / "config.pbtxt").read_text()
    assert "max_batch_size: 0" in config and "dims: [ 2, 16 ]" in config
    assert "dynamic_batching" not in config


def test_names_and_folders_are_checked(tmp_path):
    graph, _ = _mlp(dynamic=True)
    with pytest.raises(GraphoptError, match="letters, digits"):
        export_triton(graph, tmp_path, "../escape")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(GraphoptError, match="not a Triton model folder"):
        export_triton(graph, tmp_path, "mine")
    export_triton(graph, tmp_path, "again")
    export_triton(graph, tmp_path, "again", max_batch=4)  # a previous export is replaced
    assert "max_batch_size: 4" in (tmp_path / "again" / "config.pbtxt").read_text()
    with pytest.raises(GraphoptError, match="max_batch"):
        export_triton(graph, tmp_path, "m", max_batch=0)


def test_cli_exports_a_model_directory(tmp_path, capsys):
    from graphopt.cli import main

    graph, _ = _mlp(dynamic=True)
    graphopt.save(graph, tmp_path / "mlp_dir")
    assert main(["export", str(tmp_path / "mlp_dir"), "--triton", str(tmp_path / "repo"),
                 "-q"]) == 0
    assert "max_batch_size: 8" in capsys.readouterr().out
    assert (tmp_path / "repo" / "mlp_dir" / "1" / "model.onnx").exists()
    assert main(["export", str(tmp_path), "--triton", str(tmp_path / "repo")]) == 2
    assert "without manifest.json" in capsys.readouterr().err


def test_quantized_model_with_u8_weights_for_servers_without_vnni(tmp_path, capsys):
    """--int8-weights u8: the Triton model's int8 weights are u8 (onnxruntime's exact U8U8
    kernels) and it computes the quantized graph's result."""
    import onnx

    from graphopt.cli import main

    graph, x = _mlp(dynamic=True)
    q = graphopt.quantize(graph, "dynamic")
    graphopt.save(q, tmp_path / "q_dir")
    assert main(["export", str(tmp_path / "q_dir"), "--triton", str(tmp_path / "repo"),
                 "--pipeline", "none", "--int8-weights", "u8", "-q"]) == 0
    path = tmp_path / "repo" / "q_dir" / "1" / "model.onnx"
    model = onnx.load(str(path))
    assert not [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    session = onnxruntime.InferenceSession(str(path))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, graphopt.run(q, x).numpy(), rtol=1e-4, atol=1e-5)
