"""``to_onnx(..., int8_weights="u8")``: int8 weights stored as u8 codes + 128 with zero point
128, so onnxruntime runs its exact U8U8 kernels instead of U8S8, which saturate pairs of
products on x86 CPUs without VNNI (graphopt/onnx/int8_weights.py). Every integer form the
lowering emits (QGemm, QLinearConv, their QDQ groups, DynamicQuantizeMatMul, MatMulInteger,
MatMulIntegerToFloat, imported DequantizeLinear weights) is checked against the exact reference
on inputs built to saturate: large positive activations times large same-sign weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import graphopt
from graphopt.backends.onnxruntime_backend import int8_saturates
from graphopt.errors import GraphoptError
from graphopt.onnx.lower_quant_int import quant_format


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 8, 1)
        self.fc1 = torch.nn.Linear(8 * 6 * 6, 64)
        self.fc2 = torch.nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _saturating_net() -> torch.nn.Module:
    """Positive weights: quantized, neighbouring codes near 127 share a sign, and with u8
    activations near 255 a pair of products (up to 2 * 255 * 127) passes int16's 32767."""
    torch.manual_seed(0)
    net = _Net().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p.abs() * 3)
    return net


@pytest.fixture(scope="module")
def net_graph():
    net = _saturating_net()
    x = torch.rand(1, 8, 6, 6)
    return graphopt.trace(net, (x,)), x


def _ort(graph, x, encoding: str, contrib: bool = True) -> torch.Tensor:
    compiled = graphopt.compile(graph, backend="onnxruntime", int8_weights=encoding,
                                contrib_ops=contrib)
    return torch.as_tensor(np.asarray(compiled(x)))


def _relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


def _int8_initializers(model: onnx.ModelProto) -> list[str]:
    return [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]


QUANTIZED = [  # (id, quantize options, quant_format of the static ops)
    ("static-qlinear", dict(mode="static"), "qlinear"),
    ("static-qdq", dict(mode="static"), "qdq"),
    ("dynamic", dict(mode="dynamic"), "qlinear"),
    ("dynamic-per-token", dict(mode="dynamic", per_token=True), "qlinear"),
]


@pytest.mark.filterwarnings("ignore::graphopt.backends.onnxruntime_backend."
                            "SaturatingInt8Warning")  # s8 is forced on purpose
@pytest.mark.parametrize("contrib", [True, False], ids=["contrib", "standard"])
@pytest.mark.parametrize("name, options, fmt", QUANTIZED, ids=[q[0] for q in QUANTIZED])
def test_u8_weights_make_onnxruntime_exact(net_graph, name, options, fmt, contrib):
    graph, x = net_graph
    calib = [(torch.rand(1, 8, 6, 6),) for _ in range(4)] + [(x,)]
    q = graphopt.quantize(graph, calibration=calib, **options)
    ref = graphopt.run(q, x)
    assert float(ref.abs().max()) > 1.0  # not a degenerate output
    with quant_format(fmt):
        model = graphopt.to_onnx(q, contrib_ops=contrib, int8_weights="u8")
        got_u8 = _ort(q, x, "u8", contrib)
        got_s8 = _ort(q, x, "s8", contrib)
    onnx.checker.check_model(model, full_check=True)
    assert not _int8_initializers(model)
    # integer accumulation is exact; one u8 output step (static) or f32 rounding (dynamic)
    assert _relative_error(got_u8, ref) < 0.02
    err_s8 = _relative_error(got_s8, ref)
    if int8_saturates():  # the test can fail: s8 weights really are wrong on this CPU
        assert err_s8 > 5 * _relative_error(got_u8, ref)
    else:
        assert err_s8 < 0.02


def test_u8_encoding_moves_every_integer_kernel_weight_to_u8(net_graph):
    graph, x = net_graph
    q = graphopt.quantize(graph, "static", calibration=[(x,)])
    s8 = graphopt.to_onnx(q, int8_weights="s8")
    u8 = graphopt.to_onnx(q, int8_weights="u8")
    assert _int8_initializers(s8) and not _int8_initializers(u8)
    ops = {n.op_type for n in u8.graph.node}
    assert {"QLinearConv", "QGemm"} <= ops
    # the same codes: u8 - 128 == s8, zero points 128
    s8_weights = {t.name: onnx.numpy_helper.to_array(t) for t in s8.graph.initializer
                  if t.data_type == onnx.TensorProto.INT8 and t.dims and t.dims[-1] > 1}
    for t in u8.graph.initializer:
        if t.name.endswith("_u8") and t.name[:-3] in s8_weights:
            codes = onnx.numpy_helper.to_array(t).astype(np.int16) - 128
            np.testing.assert_array_equal(codes, s8_weights[t.name[:-3]])


@pytest.mark.filterwarnings("ignore::graphopt.backends.onnxruntime_backend."
                            "SaturatingInt8Warning")
def test_qdq_dequantize_linear_weights_are_reencoded():
    """``dequantize_linear`` of an int8 constant (a QDQ weight: onnxruntime fuses the group
    into its integer MatMul) takes the encoding too, zero point shifted by 128."""
    rng = np.random.default_rng(0)
    text = """graph main(%x: f32[4, 64]) {
  const %xs: f32[] = 0.004
  const %xz: u8[] = 0
  const %w: i8[64, 32]
  const %ws: f32[32]
  const %wz: i8[32]
  %xq: u8[4, 64] = quantize_linear(%x, %xs, %xz)
  %xd: f32[4, 64] = dequantize_linear(%xq, %xs, %xz)
  %wd: f32[64, 32] = dequantize_linear(%w, %ws, %wz) {axis=1}
  %y: f32[4, 32] = matmul(%xd, %wd)
  return %y
}"""
    consts = {"w": rng.integers(100, 128, (64, 32)).astype(np.int8),
              "ws": np.full(32, 0.01, np.float32), "wz": np.full(32, -3, np.int8)}
    graph = graphopt.parse(text, consts)
    x = torch.from_numpy(rng.uniform(0.8, 1.0, (4, 64)).astype(np.float32))
    ref = graphopt.run(graph, x)
    model = graphopt.to_onnx(graph, int8_weights="u8")
    assert not _int8_initializers(model)
    zero_points = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer
                   if t.name.startswith("w_zp")]
    assert zero_points and (zero_points[0] == 125).all()
    assert _relative_error(_ort(graph, x, "u8"), ref) < 1e-5
    if int8_saturates():
        assert _relative_error(_ort(graph, x, "s8"), ref) > 1e-2


def test_unknown_encoding_is_a_typed_error(net_graph):
    graph, _ = net_graph
    with pytest.raises(GraphoptError, match="int8_weights='i8'.*'u8'"):
        graphopt.to_onnx(graph, int8_weights="i8")


@pytest.mark.filterwarnings("ignore::graphopt.backends.onnxruntime_backend."
                            "SaturatingInt8Warning")
def test_model_directory_onnx_keeps_the_encoding(net_graph, tmp_path):
    """graphopt.save of an onnxruntime module writes the encoding it was compiled with; of a
    graph, s8 unless int8_weights says otherwise."""
    graph, x = net_graph
    q = graphopt.quantize(graph, "static", calibration=[(x,)])

    def int8_weights_in(directory) -> list[str]:
        return _int8_initializers(onnx.load(str(directory / "model.onnx")))

    graphopt.save(graphopt.compile(q, backend="onnxruntime", int8_weights="u8"), tmp_path / "c")
    graphopt.save(q, tmp_path / "s", onnx=True)
    graphopt.save(q, tmp_path / "u", onnx=True, int8_weights="u8")
    assert not int8_weights_in(tmp_path / "c") and not int8_weights_in(tmp_path / "u")
    assert int8_weights_in(tmp_path / "s")
    loaded = graphopt.load(tmp_path / "c")
    assert _relative_error(_ort(loaded, x, "u8"), graphopt.run(q, x)) < 0.02
