"""fold-qdq: golden IR before/after, numeric equivalence with the QDQ form, and the rules that
must not fire (with the tracer's reason)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graphopt
from graphopt.rewrite import explain
from graphopt.passes.fold_qdq import RULES

RULE = {r.name: r for r in RULES}

BEFORE = """graph main(%x: f32[1, 2, 4, 4]) {
  const %xs: f32[] = 0.05
  const %xz: u8[] = 3
  const %w_q: i8[4, 2, 3, 3]
  const %w_s: f32[4] = [0.01, 0.02, 0.015, 0.01]
  const %b: f32[4] = [0.1, -0.2, 0.3, 0.0]
  const %ys: f32[] = 0.1
  const %yz: u8[] = 0
  const %w2_q: i8[3, 16]
  const %w2_s: f32[3] = [0.01, 0.02, 0.03]
  %xq: u8[1, 2, 4, 4] = quantize_linear(%x, %xs, %xz) {dtype="u8"}
  %xd: f32[1, 2, 4, 4] = dequantize_linear(%xq, %xs, %xz)
  %wd: f32[4, 2, 3, 3] = dequantize_linear(%w_q, %w_s, None) {axis=0}
  %y: f32[1, 4, 4, 4] = fused_conv(%xd, %wd, %b, None) {activation="relu", padding=[1]}
  %yq: u8[1, 4, 4, 4] = quantize_linear(%y, %ys, %yz) {dtype="u8"}
  %yd: f32[1, 4, 4, 4] = dequantize_linear(%yq, %ys, %yz)
  %p: f32[1, 4, 2, 2] = max_pool(%yd) {kernel=[2, 2], stride=[2, 2]}
  %pq: u8[1, 4, 2, 2] = quantize_linear(%p, %ys, %yz) {dtype="u8"}
  %pd: f32[1, 4, 2, 2] = dequantize_linear(%pq, %ys, %yz)
  %f: f32[1, 16] = reshape(%pd) {shape=[1, 16]}
  %fq: u8[1, 16] = quantize_linear(%f, %ys, %yz) {dtype="u8"}
  %fd: f32[1, 16] = dequantize_linear(%fq, %ys, %yz)
  %wd2: f32[3, 16] = dequantize_linear(%w2_q, %w2_s, None) {axis=0}
  %o: f32[1, 3] = linear(%fd, %wd2, None)
  return %o
}"""

AFTER_NODES = """\
  %xq: u8[1, 2, 4, 4] = quantize_linear(%x, %xs, %xz) {axis=none, dtype="u8"}
  %y_int: u8[1, 4, 4, 4] = qconv(%xq, %xs, %xz, %w_q, %w_s, %b, %ys, %yz) {activation="relu", \
activation_params=[], dilation=[1], groups=1, padding=[1], stride=[1]}
  %p_u8: u8[1, 4, 2, 2] = max_pool(%y_int) {ceil_mode=false, dilation=[1], kernel=[2, 2], \
padding=[0], stride=[2, 2]}
  %f_u8: u8[1, 16] = reshape(%p_u8) {shape=[1, 16]}
  %o_int: f32[1, 3] = qlinear(%f_u8, %ys, %yz, %w2_q, %w2_s, None, None, None) \
{activation="none", activation_params=[]}
  return %o_int"""


def _consts(seed=0):
    rng = np.random.default_rng(seed)
    return {"w_q": rng.integers(-127, 128, (4, 2, 3, 3)).astype(np.int8),
            "w2_q": rng.integers(-127, 128, (3, 16)).astype(np.int8)}


def _node_lines(graph) -> str:
    return "\n".join(ln for ln in str(graph).splitlines()[1:-1]
                     if not ln.lstrip().startswith("const"))


def test_golden_fold_and_numerics():
    graph = graphopt.parse(BEFORE, _consts())
    out, report = graphopt.optimize(graph, "fold-qdq,dce", report=True, verify=True)
    assert _node_lines(out) == AFTER_NODES
    assert report.rewrites() == {"qdq-conv": 1, "qdq-through-max-pool": 1,
                                 "qdq-through-reshape": 1, "dq-linear": 1}
    # 10 float/QDQ nodes -> 5: one conv unit (ReLU inside), one linear unit, u8 pool/reshape
    assert len(graph.nodes) == 14 and len(out.nodes) == 5
    # exact integer math vs the float chain: the u8 conv result agrees within one code (the
    # float conv rounds its sum in f32, which can cross a .5 boundary), the rest follows
    both = graphopt.parse(BEFORE.replace("return %o", "return %o, %yq"), _consts())
    folded = graphopt.optimize(both, "fold-qdq,dce")
    assert folded.op_histogram() == out.op_histogram()
    torch.manual_seed(0)
    flips = 0
    for xi in torch.randn(20, 1, 2, 4, 4):
        (o_ref, y_ref), (o_got, y_got) = graphopt.run(both, xi), graphopt.run(folded, xi)
        diff = (y_ref.int() - y_got.int()).abs()
        assert diff.max() <= 1
        flips += int(diff.sum())
        if diff.max() == 0:
            torch.testing.assert_close(o_got, o_ref, rtol=1e-5, atol=1e-5)
    assert flips <= 3, flips
    assert str(graphopt.parse(str(out), _consts())) == str(out)  # round trip


def _conv_graph(extra: str, residual: str = "None", xdtype: str = "u8") -> graphopt.Graph:
    text = f"""graph main(%xq: {xdtype}[1, 2, 4, 4], %r: f32[1, 4, 4, 4]) {{
  const %xs: f32[] = 0.05
  const %xz: {xdtype}[] = 3
  const %w_q: i8[4, 2, 3, 3]
  const %w_s: f32[4] = [0.01, 0.02, 0.015, 0.01]
  const %ys: f32[] = 0.1
  const %yz: u8[] = 0
  %xd: f32[1, 2, 4, 4] = dequantize_linear(%xq, %xs, %xz)
  %wd: f32[4, 2, 3, 3] = dequantize_linear(%w_q, %w_s, None) {{axis=0}}
  %y: f32[1, 4, 4, 4] = fused_conv(%xd, %wd, None, {residual}) {{activation="relu", padding=[1]}}
  %yq: u8[1, 4, 4, 4] = quantize_linear(%y, %ys, %yz) {{dtype="u8"}}
{extra}  return %yq
}}"""
    return graphopt.parse(text, _consts())


def test_residual_does_not_fold():
    """qconv has no residual operand: a fused conv with a skip input must stay float (the
    static quantizer moves residual adds out of the unit before writing the QDQ form)."""
    graph = _conv_graph("", residual="%r")
    why = explain(graph, RULE["qdq-conv"])[0]
    assert not why.fired and "residual" in str(why), str(why)
    assert graphopt.optimize(graph, "fold-qdq").op_histogram()["fused_conv"] == 1


def test_shared_float_result_folds_to_float_output_only():
    """The conv's float result also feeds a graph output: a u8-output qconv would leave the
    float conv alive (computed twice), so qdq-conv refuses; dq-conv makes one f32-output qconv
    and the quantize_linear stays."""
    text = str(_conv_graph("")).replace("return %yq", "return %yq, %y")
    graph = graphopt.parse(text, _consts())
    why = explain(graph, RULE["qdq-conv"])[0]
    assert not why.fired and "other users" in why.reason
    out = graphopt.optimize(graph, "fold-qdq")
    assert out.op_histogram() == {"qconv": 1, "quantize_linear": 1}
    assert [n for n in out.nodes if n.op == "qconv"][0].outputs[0].dtype.value == "f32"


def test_int8_activation_does_not_fold():
    graph = _conv_graph("", xdtype="i8")
    why = explain(graph, RULE["qdq-conv"])[0]
    assert not why.fired and "qconv/qlinear take u8 activations" in why.reason


def test_float_rule_leaves_quantized_output_to_the_q_rule():
    graph = _conv_graph("")
    why = explain(graph, RULE["dq-conv"])[0]
    assert not why.fired and "qdq-conv folds it" in why.reason
    assert graphopt.optimize(graph, "fold-qdq").op_histogram() == {"qconv": 1}


PAIR = """graph main(%q: u8[2, 3]) {{
  const %s1: f32[] = 0.05
  const %z1: u8[] = 10
  const %s2: f32[] = {s2}
  const %z2: u8[] = {z2}
  %d: f32[2, 3] = dequantize_linear(%q, %s1, %z1)
  %r: u8[2, 3] = quantize_linear(%d, %s2, %z2) {{dtype="u8"}}
  return %r
}}"""


def test_qdq_pair_and_requantize():
    same = graphopt.parse(PAIR.format(s2=0.05, z2=10))
    out = graphopt.optimize(same, "fold-qdq,dce")
    assert len(out.nodes) == 0 and out.outputs[0] is out.inputs[0]
    other = graphopt.parse(PAIR.format(s2=0.1, z2=0))
    why = explain(other, RULE["qdq-pair"])[0]
    assert not why.fired and "parameters differ" in why.reason
    req = graphopt.optimize(other, "fold-qdq,dce")
    assert req.op_histogram() == {"requantize_linear": 1}
    q = torch.arange(0, 256, dtype=torch.uint8)[:6].reshape(2, 3) * 40
    assert torch.equal(graphopt.run(req, q), graphopt.run(other, q))
    got = graphopt.compile(req, backend="onnxruntime")(q)
    assert np.array_equal(np.asarray(got), graphopt.run(other, q).numpy())


def test_max_pool_with_other_parameters_does_not_move_to_u8():
    text = BEFORE.replace('%pq: u8[1, 4, 2, 2] = quantize_linear(%p, %ys, %yz)',
                          '%pq: u8[1, 4, 2, 2] = quantize_linear(%p, %xs, %yz)')
    graph = graphopt.parse(text, _consts())
    why = [e for e in explain(graph, RULE["qdq-through-max-pool"])][0]
    assert not why.fired and "different parameters" in why.reason
    assert "max_pool" in graphopt.optimize(graph, "fold-qdq,dce").op_histogram()


@pytest.mark.parametrize("weight_zp", ["[1, 0, 0, 0]"])
def test_asymmetric_weights_do_not_fold(weight_zp):
    text = str(_conv_graph("")).replace(
        "dequantize_linear(%w_q, %w_s, None) {axis=0}",
        "dequantize_linear(%w_q, %w_s, %w_z) {axis=0}").replace(
        "  const %ys:", f"  const %w_z: i8[4] = {weight_zp}\n  const %ys:")
    graph = graphopt.parse(text, _consts())
    why = explain(graph, RULE["qdq-conv"])[0]
    assert not why.fired and "is not 0" in why.reason
