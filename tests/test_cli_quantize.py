"""``graphopt quantize``: every mode writes a runnable model; bad input is one line, exit 2."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from test_cli import MLP, assert_one_line_error, run_cli

CNN_FACTORY = """
import torch

def make():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10)).eval()
    return model, torch.randn(1, 3, 8, 8)
"""


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cnn") / "tiny_cnn.py"
    path.write_text(CNN_FACTORY)
    return f"{path}:make"


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, np.random.default_rng(0).standard_normal((6, 1, 3, 8, 8)).astype(np.float32))
    return str(path)


def test_static_to_onnx_with_error_budget(capsys, tmp_path, cnn_file, calib_file):
    out = tmp_path / "q.onnx"
    code, stdout, _ = run_cli(capsys, "quantize", cnn_file, "-o", str(out), "--mode", "static",
                              "--observer", "percentile", "--percentile", "99.9",
                              "--calibration", calib_file, "--error-budget", "0.05")
    assert code == 0, stdout
    assert "quantize mode=static percentile percentile=99.9" in stdout and "wrote" in stdout
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert "QLinearConv" in ops and "MatMulIntegerToFloat" in ops


def test_int8_weights_u8_writes_no_int8_weights(capsys, tmp_path, cnn_file, calib_file):
    """--int8-weights u8: weights as u8 + 128 (onnxruntime's exact U8U8 kernels on AVX2)."""
    out = tmp_path / "q.onnx"
    code, stdout, _ = run_cli(capsys, "quantize", cnn_file, "-o", str(out), "--mode", "static",
                              "--calibration", calib_file, "--int8-weights", "u8")
    assert code == 0, stdout
    model = onnx.load(str(out))
    assert {"QLinearConv", "MatMulIntegerToFloat"} <= {n.op_type for n in model.graph.node}
    assert not [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]


@pytest.mark.parametrize("mode, extra", [("dynamic", []), ("weight-only", ["--bits", "8"]),
                                         ("fp16", []), ("bf16", [])])
def test_other_modes(capsys, tmp_path, mode, extra):
    out = tmp_path / "m.onnx"
    code, stdout, _ = run_cli(capsys, "quantize", MLP, "-o", str(out), "--mode", mode, *extra)
    assert code == 0 and "wrote" in stdout
    onnx.checker.check_model(onnx.load(str(out)))


def test_weight_only_gptq_with_int8_activations(capsys, tmp_path):
    """--rounding gptq calibrates on the .npz; --act-bits 8 lowers to MatMulNBits level 4."""
    calib = tmp_path / "calib.npz"
    np.savez(calib, np.random.default_rng(0).standard_normal((8, 32, 16)).astype(np.float32))
    out = tmp_path / "m.onnx"
    code, stdout, _ = run_cli(capsys, "quantize", "zoo:mlp?width=16&depth=2&batch=32", "-o",
                              str(out), "--mode", "weight-only", "--block-size", "16",
                              "--rounding", "gptq", "--act-bits", "8", "--calibration",
                              str(calib))
    assert code == 0 and "gptq" in stdout, stdout
    levels = {a.i for n in onnx.load(str(out)).graph.node if n.op_type == "MatMulNBits"
              for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {4}


def test_static_to_torch_module(capsys, tmp_path, cnn_file, calib_file):
    from graphopt.backends.torch_module import load_module

    out = tmp_path / "q.graphopt"
    code, _, _ = run_cli(capsys, "quantize", cnn_file, "-o", str(out), "--mode", "static",
                         "--calibration", calib_file, "-q")
    assert code == 0
    module = load_module(out)  # a pickle-free bundle
    assert module(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def test_bad_inputs_are_one_line(capsys, tmp_path, cnn_file, calib_file):
    out = str(tmp_path / "q.onnx")
    bad_npz = tmp_path / "bad.npz"
    np.savez(bad_npz, images=np.zeros((2, 1, 3, 8, 8), np.float32))
    wrong_shape = tmp_path / "shape.npz"
    np.savez(wrong_shape, np.zeros((2, 1, 3, 9, 9), np.float32))
    not_npz = tmp_path / "text.npz"
    not_npz.write_text("hello")
    cases = [
        (["--mode", "static"], "needs --calibration"),
        (["--mode", "static", "--calibration", str(tmp_path / "nope.npz")],
         "calibration file not found"),
        (["--mode", "static", "--calibration", str(bad_npz)], "has arrays ['images']"),
        (["--mode", "static", "--calibration", str(wrong_shape)],
         "calibration item 0 does not fit the graph"),
        (["--mode", "static", "--calibration", str(not_npz)], "is not a numpy .npz"),
        (["--mode", "dynamic", "--error-budget", "0.1"], "--error-budget needs --calibration"),
        (["--mode", "dynamic", "--observer", "entropy"], "--observer applies to --mode static"),
        (["--mode", "static", "--observer", "kl", "--calibration", calib_file],
         "invalid choice: 'kl'"),
        (["--mode", "int3"], "invalid choice: 'int3'"),
        (["--mode", "weight-only", "--rounding", "gptq"], "--rounding gptq needs --calibration"),
        (["--mode", "dynamic", "--act-bits", "8"], "--act-bits applies to --mode weight-only"),
    ]
    for flags, message in cases:
        code, _, err = run_cli(capsys, "quantize", cnn_file, "-o", out, "-q", *flags)
        assert code == 2, (flags, err)
        assert_one_line_error(code, err, message)
    code, _, err = run_cli(capsys, "quantize", cnn_file, "-o", str(tmp_path / "q.txt"))
    assert_one_line_error(code, err, "--backend onnx|native|torch", "name it .onnx / .graphopt")
    code, _, err = run_cli(capsys, "quantize", cnn_file, "-o", str(tmp_path / "q.pt"))
    assert code == 2
    assert_one_line_error(code, err, "pickle-free .graphopt", "q.graphopt")


def test_debug_shows_the_traceback(capsys, tmp_path, cnn_file, calib_file):
    wrong_shape = tmp_path / "shape.npz"
    np.savez(wrong_shape, np.zeros((2, 1, 3, 9, 9), np.float32))
    from graphopt.errors import QuantizationError

    with pytest.raises(QuantizationError):
        run_cli(capsys, "--debug", "quantize", cnn_file, "-o", str(tmp_path / "q.onnx"),
                "--mode", "static", "--calibration", str(wrong_shape))
