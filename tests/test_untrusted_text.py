"""Text read from files never runs code: size expressions, IR text, native artifacts.

The payloads below would run under ``sympy.sympify`` (which calls ``eval``); each must come back as
a ``ParseError`` (or another ``GraphoptError``) naming the text, with the marker file not created.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import sympy
import torch

import graphopt
import graphopt.native
from graphopt.errors import GraphoptError, ParseError, TypeInferenceError
from graphopt.ir.parser import MAX_NESTING, parse_graph
from graphopt.ir.symexpr import MAX_DEPTH, SizeExprError, parse_size_expr, size_symbol
from graphopt.ir.types import QuantInfo, TensorType, dim_str, normalize_dim, parse_dim
from graphopt.ir.dtypes import DType

S0, S1 = size_symbol("s0"), size_symbol("s1")


def _payloads(marker: str) -> list[str]:
    quoted = json.dumps(marker)[1:-1]
    return [
        f"__import__('os').system('touch {quoted}')",
        f"s0+__import__('os').system('touch {quoted}')",
        f"(lambda: open('{quoted}', 'w'))()",
        f"Symbol('x').__class__.__mro__[-1].__subclasses__()",
        f"open('{quoted}','w').write('x')",
        f"exec(\"open('{quoted}','w')\")",
        f"s0 if open('{quoted}','w') else s0",
        f"[s0 for _ in open('{quoted}','w')]",
        "s0.__class__",
        "s0; import os",
    ]


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "pwned"
    yield str(path)
    assert not path.exists(), "a payload in a dim ran code"


def test_size_expr_payloads_raise_and_run_nothing(marker):
    for payload in _payloads(marker):
        with pytest.raises(SizeExprError, match="malformed size expression"):
            parse_size_expr(payload)
        with pytest.raises(ParseError):
            parse_dim(payload)


def test_ir_text_with_payload_in_a_dim_is_a_parse_error(marker):
    for payload in _payloads(marker):
        text = f"graph main(%x: f32[2, {payload}]) {{\n  %y: f32[2, s0] = relu(%x)\n  return %y\n}}"
        with pytest.raises(ParseError) as info:
            parse_graph(text)
        assert "line 1:" in str(info.value) and "dim" in str(info.value)


def test_ir_text_with_payload_in_a_sym_attribute_is_a_parse_error(marker):
    for payload in _payloads(marker):
        if ")" in payload:  # a ')' ends sym(...) early: still an error, just another one
            continue
        text = ("graph main(%x: i64[s0]) {\n"
                f"  %r: i64[s0] = arange() {{dtype=i64, end=sym({payload}), start=0, step=1}}\n"
                "  return %r\n}")
        with pytest.raises(ParseError, match="line 2:"):
            parse_graph(text)


def test_native_artifact_with_payload_in_a_dim_is_rejected(tmp_path, marker):
    for payload in _payloads(marker):
        text = f"graph main(%x: f32[{payload}]) {{\n  %y: f32[s0] = relu(%x)\n  return %y\n}}"
        meta = {"format": "graphopt-native/1", "threads": 1, "fallback": None,
                "sparse": "auto", "bf16": []}
        path = tmp_path / "crafted.npz"
        with open(path, "wb") as f:
            np.savez(f, __graph__=np.array(text), __meta__=np.array(json.dumps(meta)))
        with pytest.raises(GraphoptError) as info:
            graphopt.native.load(str(path))
        assert "dim" in str(info.value)


@pytest.mark.parametrize("text, expected", [
    ("s0", S0), ("2*s0 + 1", 2 * S0 + 1), ("(s0//2)", sympy.floor(S0 / 2)),
    ("Max(3,s0)", sympy.Max(3, S0)), ("Min(s0,s1)", sympy.Min(S0, S1)),
    ("Mod(s0,3)", sympy.Mod(S0, 3)), ("PythonMod(s0,3)", sympy.Mod(S0, 3)),
    ("s0 % 3", sympy.Mod(S0, 3)), ("floor(s0/3)+1", sympy.floor(S0 / 3) + 1),
    ("ceiling(s0/3)", sympy.ceiling(S0 / 3)), ("CeilDiv(s0, 4)", sympy.ceiling(S0 / 4)),
    ("s0**2", S0**2), ("5-s0", 5 - S0), ("--s0", S0), ("max(s0, s1, 2)", sympy.Max(S0, S1, 2)),
    # names sympify would have read as constants or functions are plain size symbols here
    ("E", size_symbol("E")), ("N + I", size_symbol("N") + size_symbol("I")),
])
def test_grammar_reads_every_printed_form(text, expected):
    assert sympy.simplify(parse_size_expr(text) - expected) == 0


def test_printed_symbolic_dims_of_torch_round_trip():
    """Every dim the frontend can produce prints to text that parses back to an equal dim."""
    from torch.utils._sympy.functions import CeilDiv, FloorDiv, Max, Min, PythonMod

    for expr in [FloorDiv(S0, 2), FloorDiv(S0 - 1, 2) + 1, PythonMod(S0, 3), Max(S0, 3),
                 Min(S0, S1), CeilDiv(S0, 4), S0**2, sympy.floor(S0 / 3) + 1, 2 * S0 * S1 + 1]:
        dim = normalize_dim(expr)
        again = parse_dim(dim_str(dim))
        for n in (1, 2, 5, 17):
            subs = {S0: n, S1: n + 3}
            assert int(sympy.sympify(dim).subs(subs)) == int(sympy.sympify(again).subs(subs))


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("1/0", "division by zero"), ("s0 // 0", "division by zero"),
    ("Mod(s0, 0)", "division by zero"), ("9" * 25, "digits"), ("(2**8)**8", "int64"),
    ("s0**100", "exponent"), ("Max(s0)", "argument"), ("floor(s0, 2)", "argument"),
    ("(" * (MAX_DEPTH + 2) + "s0" + ")" * (MAX_DEPTH + 2), "nested deeper"),
    ("s0+" * 220 + "s0", "tokens"), ("x" * 2000, "characters long"), ("s0 s1", "unexpected"),
    ("Max = 3", "unexpected"), ("min", r"expected '\('"),
])
def test_grammar_rejects_with_a_reason(text, message):
    with pytest.raises(SizeExprError, match=message):
        parse_size_expr(text)


def test_constant_dims_must_be_non_negative_integers():
    assert parse_dim("12") == 12 and parse_dim("3*4") == 12
    with pytest.raises(ParseError, match="negative"):
        parse_dim("2-5")
    with pytest.raises(ParseError, match="not an integer"):
        parse_dim("3/2")
    with pytest.raises(ParseError, match="int64"):
        parse_dim("99999999999999999999")


def test_normalize_dim_refuses_text():
    with pytest.raises(TypeError, match="parse_dim"):
        normalize_dim("s0 + 1")


def test_dim_comparisons_never_parse_text(marker):
    """dims_equal / dim_expr (shape rules, reshape inference) take numbers and expressions only:
    text that reached them would have gone through sympify's eval before."""
    from graphopt.ir.types import dim_expr, dims_equal

    payload = f"__import__('pathlib').Path({marker!r}).touch()"
    with pytest.raises(TypeError, match="parse_dim"):
        dims_equal(payload, parse_dim("s0"))
    with pytest.raises(TypeError, match="not a number"):
        dim_expr(object())
    assert dim_expr(np.int64(3)) == 3 and dims_equal(parse_dim("2*s0"), parse_dim("s0 + s0"))


def test_tensor_types_reject_negative_and_astronomical_shapes():
    with pytest.raises(TypeInferenceError, match="negative dim"):
        TensorType((2, -1), DType.float32)
    with pytest.raises(TypeInferenceError, match="elements"):
        TensorType((1 << 40, 1 << 40), DType.float32)


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": (0.0,), "zero_point": (0,)}, "finite and > 0"),
    ({"scale": (float("nan"),), "zero_point": (0,)}, "finite and > 0"),
    ({"scale": (-1.0,), "zero_point": (0,)}, "finite and > 0"),
    ({"scale": (1.0,), "zero_point": (0, 1)}, "as many zero points"),
    ({"scale": (1.0, 2.0), "zero_point": (0, 1)}, "one scale"),
    ({"scale": (1.0,), "zero_point": (0,), "bits": 0}, "bits"),
    ({"scale": (1.0,), "zero_point": (0,), "axis": -1}, "axis"),
])
def test_quantization_parameters_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantInfo(**kwargs)


@pytest.mark.parametrize("quant, message", [
    ("{scale=[0.5], zp=[300], bits=8}", "out of range"),
    ("{scale=[0.5], zp=[-1], bits=8}", None),  # i8: -1 is fine
    ("{scale=[0.5, 0.5, 0.5], zp=[0, 0, 0], axis=0, bits=8}", "per-channel scales"),
    ("{scale=[0.5, 0.5], zp=[0, 0], axis=3, bits=8}", "axis 3 is out of range"),
    ("{scale=[inf], zp=[0], bits=8}", "finite"),
    ("{scale=[0.5], zp=[9], bits=4}", "out of range"),
])
def test_quantized_types_in_ir_text_are_validated(quant, message):
    text = f"graph main() {{\n  const %q: i8[2, 2]{quant} = [[1, 2], [3, 4]]\n  return %q\n}}"
    if message is None:
        assert parse_graph(text).outputs[0].type.quant.zero_point == (-1,)
        return
    with pytest.raises(ParseError, match=message):
        parse_graph(text)


def test_deep_nesting_is_a_parse_error_not_a_recursion_error():
    deep = "[" * 100_000 + "]" * 100_000
    text = f"graph main(%x: f32[2]) {{\n  %y: f32[2] = relu(%x) {{a={deep}}}\n  return %y\n}}"
    with pytest.raises(ParseError, match=f"deeper than {MAX_NESTING}"):
        parse_graph(text)
    text = f"graph main() {{\n  const %c: f32[1] = {deep}\n  return %c\n}}"
    with pytest.raises(ParseError, match=f"deeper than {MAX_NESTING}"):
        parse_graph(text)


def test_nested_attribute_lists_still_parse():
    text = ("graph main(%x: f32[2, 3]) {\n"
            "  %y: f32[3, 2] = permute(%x) {perm=[1, 0]}\n  return %y\n}")
    graph = parse_graph(text)
    assert list(graph.nodes)[0].attrs["perm"] == (1, 0)
    assert str(parse_graph(str(graph))) == str(graph)


@pytest.mark.parametrize("node, message", [
    ("%r: i64[0] = arange() {dtype=i64, end=4, start=0, step=0}", "arange"),
    ("%y: f32[1, 4, 2, 2] = conv(%x, %w, None) {stride=[0, 0]}", "conv"),
    ("%y: f32[1, 4, 2, 2] = max_pool(%x) {kernel=[2, 2], stride=[0, 0]}", "max_pool"),
    ("%y: f32[1, 4, 4, 4] = softmax(%x) {axis=7}", "softmax"),
])
def test_zero_steps_and_bad_axes_are_parse_errors(node, message):
    text = ("graph main(%x: f32[1, 4, 4, 4]) {\n  const %w: f32[4, 4, 1, 1]\n"
            f"  {node}\n  return %x\n}}")
    with pytest.raises(ParseError, match=message):
        parse_graph(text, {"w": np.zeros((4, 4, 1, 1), np.float32)})


def test_symbolic_graphs_still_round_trip_and_run():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    graph = graphopt.trace(model.eval(), (torch.randn(3, 4),),
                           dynamic_shapes=({0: torch.export.Dim("batch")},))
    again = parse_graph(str(graph), {n: v.data for n, v in graph.constants.items()})
    assert str(again) == str(graph)
    x = torch.randn(5, 4)
    torch.testing.assert_close(graphopt.run(again, x), model(x))


def test_artifact_round_trip_with_symbolic_dims(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    graph = graphopt.trace(model.eval(), (torch.randn(3, 4),),
                           dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = os.path.join(tmp_path, "m.npz")
    graphopt.compile(graph, backend="native").save(path)
    loaded = graphopt.native.load(path)
    x = torch.randn(6, 4)
    torch.testing.assert_close(loaded(x)[0] if isinstance(loaded(x), tuple) else loaded(x),
                               model(x))
