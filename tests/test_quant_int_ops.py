"""qconv / qlinear / qconv_dynamic / requantize_linear: reference semantics (exact integer
accumulation), agreement with onnxruntime within 1 LSB of the u8 output on edge shapes, both
ONNX forms (QDQ and QLinearConv/QGemm), IR round trip, typed shape errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

import graphopt
from graphopt.errors import ParseError, TypeInferenceError
from graphopt.onnx.lower_quant_int import quant_format
from graphopt.ops.quant_int import qconv, qlinear

RNG = np.random.default_rng(0)


def _ort(graph, *args, contrib=True):
    return torch.as_tensor(np.asarray(
        graphopt.compile(graph, backend="onnxruntime", contrib_ops=contrib)(*args)))


def _conv_graph(b, c, m, hw, k, groups, stride, pad, act, quantized, x_zp=7, y_zp=0):
    cg = c // groups
    o = (hw + 2 * pad - k) // stride + 1
    out = f"u8[{b}, {m}, {o}, {o}]" if quantized else f"f32[{b}, {m}, {o}, {o}]"
    ys = "%ys, %yz" if quantized else "None, None"
    text = f"""graph main(%x: u8[{b}, {c}, {hw}, {hw}]) {{
  const %xs: f32[] = 0.05
  const %xz: u8[] = {x_zp}
  const %w: i8[{m}, {cg}, {k}, {k}]
  const %ws: f32[{m}]
  const %b: f32[{m}]
  const %ys: f32[] = 0.1
  const %yz: u8[] = {y_zp}
  %y: {out} = qconv(%x, %xs, %xz, %w, %ws, %b, {ys}) {{stride=[{stride}], padding=[{pad}], \
groups={groups}, activation="{act}"}}
  return %y
}}"""
    consts = {"w": RNG.integers(-127, 128, (m, cg, k, k)).astype(np.int8),
              "ws": (RNG.random(m) * 0.01 + 0.001).astype(np.float32),
              "b": RNG.standard_normal(m).astype(np.float32)}
    x = torch.from_numpy(RNG.integers(0, 256, (b, c, hw, hw)).astype(np.uint8))
    return graphopt.parse(text, consts), x, consts


CONV_CASES = [  # (batch, C, M, HW, k, groups, stride, pad, activation)
    (1, 32, 64, 9, 1, 1, 1, 0, "none"),      # 1x1 (pointwise)
    (1, 32, 32, 9, 3, 32, 1, 1, "relu"),     # depthwise
    (1, 32, 32, 9, 3, 32, 2, 1, "none"),     # depthwise, stride 2
    (2, 6, 4, 7, 3, 2, 2, 1, "relu"),        # grouped, odd size, batch 2
    (1, 3, 5, 1, 1, 1, 1, 0, "none"),        # 1x1 spatial
    (1, 64, 16, 5, 3, 1, 1, 1, "relu6"),     # K = 576
]


@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c)))
def test_qconv_u8_output_within_one_lsb_of_onnxruntime(case, fmt):
    graph, x, _ = _conv_graph(*case, quantized=True)
    ref = graphopt.run(graph, x)
    with quant_format(fmt):
        got = _ort(graph, x)
        onnx.checker.check_model(graphopt.to_onnx(graph), full_check=True)
    diff = (got.int() - ref.int()).abs()
    assert diff.max() <= 1, f"max {diff.max()} LSB"  # onnxruntime rounds acc * scale in f32
    assert (diff > 0).float().mean() < 0.01


@pytest.mark.parametrize("case", CONV_CASES[:4], ids=lambda c: "-".join(map(str, c)))
def test_qconv_reference_is_the_exact_integer_formula(case):
    graph, x, c = _conv_graph(*case, quantized=False)
    b, ch, m, hw, k, groups, stride, pad, act = case
    acc = F.conv2d(x.double() - 7, torch.from_numpy(c["w"]).double(), None, stride, pad, 1,
                   groups)  # float64: exact for these sizes
    y = acc.float() * (torch.tensor(0.05) * torch.from_numpy(c["ws"])).reshape(1, -1, 1, 1)
    y = y + torch.from_numpy(c["b"]).reshape(1, -1, 1, 1)
    y = {"none": y, "relu": torch.relu(y)}[act]
    torch.testing.assert_close(graphopt.run(graph, x), y, rtol=0, atol=0)
    # f32-output lowering (DequantizeLinear + float Conv): equal up to f32 rounding
    torch.testing.assert_close(_ort(graph, x), y, rtol=1e-4, atol=1e-4)


def test_qconv_pads_with_the_zero_point():
    """Padding is real zero, i.e. the code x_zp: a constant input equal to x_zp gives bias."""
    graph, _, c = _conv_graph(1, 2, 3, 4, 3, 1, 1, 1, "none", quantized=False)
    x = torch.full((1, 2, 4, 4), 7, dtype=torch.uint8)
    expected = torch.from_numpy(c["b"]).reshape(1, 3, 1, 1).expand(1, 3, 4, 4)
    torch.testing.assert_close(graphopt.run(graph, x), expected, rtol=0, atol=0)


def _linear_graph(shape, n, act, quantized, bias=True):
    k = shape[-1]
    out_shape = ", ".join(map(str, list(shape[:-1]) + [n]))
    out = f"u8[{out_shape}]" if quantized else f"f32[{out_shape}]"
    tail = "%ys, %yz" if quantized else "None, None"
    text = f"""graph main(%x: u8[{', '.join(map(str, shape))}]) {{
  const %xs: f32[] = 0.02
  const %xz: u8[] = 128
  const %w: i8[{n}, {k}]
  const %ws: f32[{n}]
  const %b: f32[{n}]
  const %ys: f32[] = 0.05
  const %yz: u8[] = 0
  %y: {out} = qlinear(%x, %xs, %xz, %w, %ws, {'%b' if bias else 'None'}, {tail}) \
{{activation="{act}"}}
  return %y
}}"""
    consts = {"w": RNG.integers(-127, 128, (n, k)).astype(np.int8),
              "ws": (RNG.random(n) * 0.01 + 0.001).astype(np.float32),
              "b": RNG.standard_normal(n).astype(np.float32)}
    x = torch.from_numpy(RNG.integers(0, 256, shape).astype(np.uint8))
    return graphopt.parse(text, consts), x, consts


@pytest.mark.parametrize("fmt", ["qdq", "qlinear"])
@pytest.mark.parametrize("shape, n, act", [((1, 1), 1, "none"), ((5, 64), 31, "relu"),
                                           ((2, 7, 33), 17, "none"), ((3, 300), 8, "relu")])
def test_qlinear_u8_output_within_one_lsb_of_onnxruntime(shape, n, act, fmt):
    graph, x, _ = _linear_graph(shape, n, act, quantized=True)
    ref = graphopt.run(graph, x)
    with quant_format(fmt):
        got = _ort(graph, x)
    assert (got.int() - ref.int()).abs().max() <= 1


@pytest.mark.parametrize("contrib", [True, False])
@pytest.mark.parametrize("shape, n, act, bias", [((4, 16), 8, "none", True),
                                                 ((2, 3, 16), 5, "gelu", False)])
def test_qlinear_float_output_matches_formula_and_onnxruntime(shape, n, act, bias, contrib):
    graph, x, c = _linear_graph(shape, n, act, quantized=False, bias=bias)
    acc = (x.double() - 128) @ torch.from_numpy(c["w"]).double().T
    y = acc.float() * (torch.tensor(0.02) * torch.from_numpy(c["ws"]))
    y = y + torch.from_numpy(c["b"]) if bias else y
    y = F.gelu(y) if act == "gelu" else y
    ref = graphopt.run(graph, x)
    torch.testing.assert_close(ref, y, rtol=0, atol=0)
    torch.testing.assert_close(_ort(graph, x, contrib=contrib), ref, rtol=1e-5, atol=1e-4)
    assert qlinear is graphopt.ops.get_op("qlinear").reference and qconv is not None


def test_qconv_dynamic_matches_onnxruntime():
    w = RNG.standard_normal((8, 4, 3, 3)).astype(np.float32)
    from graphopt.quant.dynamic import quantize_conv_per_channel

    w_q, s = quantize_conv_per_channel(w)
    graph = graphopt.parse("""graph main(%x: f32[2, 4, 6, 6], %r: f32[2, 8, 3, 3]) {
  const %w: i8[8, 4, 3, 3]
  const %s: f32[8]
  const %b: f32[8]
  %y: f32[2, 8, 3, 3] = qconv_dynamic(%x, %w, %s, %b, %r) {stride=[2], padding=[1], \
activation="relu"}
  return %y
}""", {"w": w_q, "s": s, "b": RNG.standard_normal(8).astype(np.float32)})
    x, r = torch.randn(2, 4, 6, 6), torch.randn(2, 8, 3, 3)
    ref = graphopt.run(graph, x, r)
    float_conv = torch.relu(F.conv2d(x, torch.from_numpy(w), torch.from_numpy(
        graph.constants["b"].data), 2, 1) + r)
    torch.testing.assert_close(ref, float_conv, rtol=0.05, atol=0.2)  # int8 rounding only
    torch.testing.assert_close(_ort(graph, x, r), ref, rtol=1e-4, atol=1e-4)


def test_round_trip_and_typed_errors():
    graph, _, c = _conv_graph(1, 4, 4, 5, 3, 1, 1, 1, "relu", quantized=True)
    assert str(graphopt.parse(str(graph), c)) == str(graph)
    bad = str(graph).replace("%x: u8[1, 4, 5, 5]", "%x: i8[1, 4, 5, 5]")
    with pytest.raises(ParseError, match="qconv input x_q must be u8"):
        graphopt.parse(bad, c)


def test_shape_rule_rejects_bad_operands_directly():
    from graphopt.ir.dtypes import DType
    from graphopt.ir.types import TensorType
    from graphopt.ops import get_op

    op = get_op("qlinear")
    t = TensorType
    types = [t((2, 8), DType.uint8), t((), DType.float32), t((), DType.uint8),
             t((4, 8), DType.int8), t((4,), DType.float32), None, None, t((), DType.uint8)]
    with pytest.raises(TypeInferenceError, match="y_zp but no y_scale"):
        op.infer_types(types, op.check_attrs({}, "test"))
    types[4], types[7] = t((3,), DType.float32), None
    with pytest.raises(TypeInferenceError, match="w_scale must be f32\\[4\\]"):
        op.infer_types(types, op.check_attrs({}, "test"))


@pytest.mark.parametrize("value, absorbed", [(7.0, True), (0.0, False)])
def test_u8_pad_with_the_zero_point_is_absorbed_into_the_conv(value, absorbed):
    """TF-style asymmetric padding in front of a qconv: padding the codes with x_zp (real zero)
    becomes the conv's own begin/end pads in ONNX; any other value stays a Pad."""
    graph, _, c = _conv_graph(1, 4, 4, 6, 3, 1, 2, 0, "relu", quantized=True)
    text = str(graph).replace("main(%x: u8[1, 4, 6, 6])", "main(%x: u8[1, 4, 5, 5])")
    pad = f"  %p: u8[1, 4, 6, 6] = pad(%x) {{pads=[0, 1, 0, 1], value={value}}}\n"
    text = text.replace("  %y:", pad + "  %y:")
    text = text.replace("qconv(%x,", "qconv(%p,")
    graph = graphopt.parse(text, c)
    x = torch.from_numpy(RNG.integers(0, 256, (1, 4, 5, 5)).astype(np.uint8))
    ops = [n.op_type for n in graphopt.to_onnx(graph).graph.node]
    assert ("Pad" not in ops) == absorbed, ops
    assert (_ort(graph, x).int() - graphopt.run(graph, x).int()).abs().max() <= 1
