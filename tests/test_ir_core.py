"""IR core: printer golden text, parser round-trip and errors, clone, graph mutation (the
verifier: tests/test_ir_verify.py).

The tests register private ``test.*`` ops so that they do not depend on the built-in op set.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch

from graphopt.errors import GraphoptError, ParseError
from graphopt.ir.attrs import Attrs
from graphopt.ir.clone import clone_graph, clone_graph_with_map
from graphopt.ir.dtypes import DType, torch_to_numpy
from graphopt.ir.graph import Graph
from graphopt.ir.parser import parse_graph
from graphopt.ir.printer import print_graph
from graphopt.ir.types import QuantInfo, TensorType
from graphopt.ops._infer import broadcast_binary, floordiv, same_as_input
from graphopt.ops.registry import REQUIRED, AttrSpec, get_op, register_op

F32, I64 = DType.float32, DType.int64
S0 = sympy.Symbol("s0", integer=True, positive=True)  # as torch.export makes size symbols


def _op(name: str, inputs, infer, attrs=None):
    try:
        register_op(name, inputs=inputs, infer=infer, attrs=attrs)(lambda *a, **k: None)
    except ValueError:  # already registered (module imported twice)
        pass


def _split2(types, attrs):
    x, axis = types[0], attrs["axis"]
    return [x.with_shape(x.shape[:axis] + (s,) + x.shape[axis + 1 :]) for s in attrs["sizes"]]


def _concat(types, attrs):
    axis = attrs["axis"]
    shape = list(types[0].shape)
    shape[axis] = sum(t.shape[axis] for t in types)
    return types[0].with_shape(shape)


def _quantize(types, attrs):
    quant = QuantInfo((attrs["scale"],), (attrs["zp"],))
    return TensorType(types[0].shape, DType.int8, quant)


_op("test.add", ("a", "b"), broadcast_binary)
_op("test.relu", ("x",), same_as_input)
_op("test.split2", ("x",), _split2, {"axis": AttrSpec(int), "sizes": AttrSpec(tuple)})
_op("test.norm", ("x", "weight?", "bias?"), same_as_input, {"eps": 1e-5})
_op("test.concat", ("xs*",), _concat, {"axis": AttrSpec(int, REQUIRED)})
_op("test.cast", ("x",), lambda t, a: t[0].with_dtype(a["dtype"]), {"dtype": AttrSpec(DType)})
_op("test.misc", ("x",), same_as_input, {k: AttrSpec(object, None) for k in "abcdefgh"})
_op("test.quantize", ("x",), _quantize, {"scale": AttrSpec(float), "zp": AttrSpec(int)})
_op("test.sink", ("x",), lambda t, a: [])
_op("test.half", ("x",), lambda t, a: t[0].with_shape((floordiv(t[0].shape[0], 2),)))


def sample_graph() -> Graph:
    """Multi-output, optional None operand, variadic, symbolic dims, constants of many dtypes."""
    g = Graph("main")
    x = g.add_input("x", TensorType((2, 8), F32))
    ids = g.add_input("ids", TensorType((S0, 8), I64))
    w = g.add_constant(np.linspace(-1, 1, 8, dtype=np.float32), "norm.weight")
    g.add_constant(np.array(0.125, np.float32), "scale")
    g.add_constant(np.array([[True, False]]), "mask")
    g.add_constant(np.array([0, 2, 1], np.int64), "idx")
    bits, _ = torch_to_numpy(torch.tensor([1.5, -2.0, 3.0e38], dtype=torch.bfloat16))
    g.add_constant(bits, "bf", dtype=DType.bfloat16)
    g.add_constant(np.array([np.inf, -np.inf, np.nan, -0.0], np.float16), "special")
    big = g.add_constant(np.ones((4, 8), np.float32), "big")
    norm = g.create_node("test.norm", [x, w, None], name="norm")
    split = g.create_node("test.split2", [norm.output], {"axis": 0, "sizes": (1, 1)}, name="split")
    add = g.create_node("test.add", [split.outputs[0], split.outputs[1]], name="out")
    cat = g.create_node("test.concat", [add.output, big], {"axis": 0}, name="cat")
    cast = g.create_node("test.cast", [ids], {"dtype": DType.float32}, name="ids_f")
    g.create_node("test.sink", [cast.output])
    g.set_outputs([cat.output, split.outputs[1], cast.output])
    return g


GOLDEN = """\
graph main(%x: f32[2, 8], %ids: i64[s0, 8]) {
  const %norm.weight: f32[8] = [-1.0, -0.71428573, -0.42857143, -0.14285715, 0.14285715, \
0.42857143, 0.71428573, 1.0]
  const %scale: f32[] = 0.125
  const %mask: bool[1, 2] = [[true, false]]
  const %idx: i64[3] = [0, 2, 1]
  const %bf: bf16[3] = [1.5, -2.0, 3.0040553e+38]
  const %special: f16[4] = [inf, -inf, nan, -0.0]
  const %big: f32[4, 8]
  %norm: f32[2, 8] = test.norm(%x, %norm.weight, None) {eps=1e-05}
  %split: f32[1, 8], %split.1: f32[1, 8] = test.split2(%norm) {axis=0, sizes=[1, 1]}
  %out: f32[1, 8] = test.add(%split, %split.1)
  %cat: f32[5, 8] = test.concat(%out, %big) {axis=0}
  %ids_f: f32[s0, 8] = test.cast(%ids) {dtype=f32}
  test.sink(%ids_f)
  return %cat, %split.1, %ids_f
}"""


def _node(g: Graph, name: str):
    return next(n for n in g.nodes if n.name == name)


def _corrupt_other_graph(g):
    _node(g, "out").set_input(1, sample_graph().inputs[0])


def roundtrip(g: Graph) -> Graph:
    text = print_graph(g)
    back = parse_graph(text, constants={k: v.data for k, v in g.constants.items()})
    assert print_graph(back) == text
    back.verify()
    for name, v in g.constants.items():
        assert back.constants[name].type == v.type
        np.testing.assert_array_equal(back.constants[name].data, v.data)
    return back


# --------------------------------------------------------------------------------- printer
def test_print_golden():
    g = sample_graph()
    g.verify()
    assert print_graph(g) == GOLDEN
    assert str(g) == GOLDEN


def test_print_attr_values_and_quant_type():
    g = Graph("q")
    x = g.add_input("x", TensorType((2, S0), F32))
    attrs = {
        "a": 1,
        "b": 1.0,
        "c": float("-inf"),
        "d": 'say "hi"\n\u00e9',
        "e": None,
        "f": (True, (2, 3.5)),
        "g": 2 * S0 + 1,
        "h": DType.bfloat16,
    }
    misc = g.create_node("test.misc", [x], attrs, name="m")
    q = g.create_node("test.quantize", [misc.output], {"scale": 0.5, "zp": 3}, name="q")
    g.set_outputs([q.output])
    line = print_graph(g).splitlines()[1]
    assert line == (
        '  %m: f32[2, s0] = test.misc(%x) {a=1, b=1.0, c=-inf, d="say \\"hi\\"\\né", e=none, '
        "f=[true, [2, 3.5]], g=sym(2*s0 + 1), h=bf16}"
    )
    assert "%q: i8[2, s0]{scale=[0.5], zp=[3], bits=8} = test.quantize(%m)" in print_graph(g)
    back = roundtrip(g)
    node = next(iter(back.nodes))
    assert node.attrs == Attrs(attrs) and isinstance(node.attrs["b"], float)


# ---------------------------------------------------------------------------- round trips
def test_roundtrip_sample():
    back = roundtrip(sample_graph())
    assert [v.name for v in back.outputs] == ["cat", "split.1", "ids_f"]
    split = back.outputs[1].producer
    assert split.op == "test.split2" and back.outputs[1].index == 1
    assert back.inputs[1].shape[0] == S0 and back.symbol_sources == {S0: (1, 0)}
    assert back.constants["bf"].data.dtype == np.uint16


def test_roundtrip_quantized_inputs_and_constants():
    per_channel = QuantInfo((0.1, 0.25, 1e-3), (0, 1, -2), axis=0, bits=4)
    g = Graph("qgraph")
    x = g.add_input("x", TensorType((3, 4), DType.int8, per_channel))
    c = g.add_constant(np.arange(12, dtype=np.int8).reshape(3, 4), "c")
    c.type = TensorType((3, 4), DType.int8, per_channel)
    g.set_outputs([g.create_node("test.relu", [x], name="r").output, c])
    text = print_graph(g)
    assert "%x: i8[3, 4]{scale=[0.1, 0.25, 0.001], zp=[0, 1, -2], axis=0, bits=4}" in text
    back = roundtrip(g)
    assert back.inputs[0].type == x.type and back.constants["c"].type.quant == per_channel


def test_roundtrip_edge_constants():
    g = Graph()
    g.add_constant(np.array(16256, np.uint16), "b", dtype=DType.bfloat16)  # 0-d bf16 1.0
    g.add_constant(np.zeros((2, 0, 3), np.float32), "z")
    g.add_constant(np.zeros((0,), np.bool_), "e")
    g.add_constant(np.array([-(2**63), 2**63 - 1]), "i")
    assert print_graph(roundtrip(g)).splitlines()[1:5] == [
        "  const %b: bf16[] = 1.0",
        "  const %z: f32[2, 0, 3] = [[], []]",
        "  const %e: bool[0] = []",
        "  const %i: i64[2] = [-9223372036854775808, 9223372036854775807]",
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float16, "bf16", np.float64])
def test_roundtrip_float_bits_exact(dtype):
    rng = np.random.default_rng(0)
    g = Graph()
    for i in range(64):
        if dtype == "bf16":
            bits = rng.integers(0, 2**16, 16, dtype=np.uint64).astype(np.uint16)
            g.add_constant(bits, f"c{i}", dtype=DType.bfloat16)
        else:
            width = np.dtype(dtype).itemsize * 8
            raw = rng.integers(0, 2**width, 16, dtype=np.uint64).astype(f"u{width // 8}")
            g.add_constant(raw.view(dtype), f"c{i}")
    back = parse_graph(print_graph(g))
    for name, v in g.constants.items():
        if v.dtype is DType.bfloat16:
            a = v.data.astype(np.uint32) << 16
            b = back.constants[name].data.astype(np.uint32) << 16
            a, b = a.view(np.float32), b.view(np.float32)
        else:
            a, b = v.data, back.constants[name].data
        finite = ~np.isnan(a)
        assert np.array_equal(np.isnan(a), np.isnan(b))
        assert a[finite].tobytes() == b[finite].tobytes()


def test_parse_keeps_output_names_that_clash_with_generated_ones():
    text = """graph g(%x: f32[4]) {
      %p: f32[2], %p.2: f32[2] = test.split2(%x) {axis=0, sizes=[2, 2]}
      %p.1: f32[2] = test.relu(%p.2)   # create_node would have named the 2nd output p.1
      return %p.1, %p
    }"""
    g = parse_graph(text)
    g.verify()
    assert [v.name for v in g.values()] == ["x", "p", "p.2", "p.1"]
    assert g.unique_name("p.2") != "p.2"
    roundtrip(g)


def test_parse_comments_whitespace_and_external_constants():
    text = """# leading comment
    graph "my graph" (  %x : f32[2]  )   {   # header comment
      const %w: f32[2]
      %y: f32[2] =
          test.add(%x,   %w)
      return %y }"""
    w = np.array([1.0, 2.0], np.float32)
    g = parse_graph(text, constants={"w": w})
    assert g.name == "my graph" and g.constants["w"].data is w
    assert print_graph(g).startswith('graph "my graph"(%x: f32[2]) {')
    roundtrip(g)


def test_parse_size_symbols_match_the_frontend():
    # floor(2*s0 / 2) is s0 only for an integer s0: the parser's symbols must be torch's.
    g = Graph()
    x = g.add_input("x", TensorType((2 * S0,), F32))
    g.set_outputs([g.create_node("test.half", [x], name="h").output])
    assert "%h: f32[s0] = test.half(%x)" in print_graph(g)
    back = roundtrip(g)
    assert back.outputs[0].shape == (S0,) and back.inputs[0].shape == (2 * S0,)
    # names that sympy would read as constants or functions stay size symbols
    odd = parse_graph("graph g(%x: f32[N, E, I]) {\n  return %x\n}")
    assert all(d.is_Symbol for d in odd.inputs[0].shape)


def test_integral_float_dims_fold_to_int():
    # shape rules may divide with '/', e.g. reshape's -1 = numel / known; 12.0 must print as 12
    assert TensorType((12.0, sympy.Float(3.0)), F32).shape == (12, 3)
    with pytest.raises(TypeError, match="not an integer"):
        TensorType((2.5,), F32)


# ---------------------------------------------------------------------------- parse errors
_HEAD = "graph g(%x: f32[2, 4]) {\n"
PARSE_ERRORS = [
    ("  %y: f32[2, 4] = test.nope(%x)\n  return %y\n}", 2, "unknown op 'test.nope'"),
    ("  %y: f32[2, 4] = test.relu(%z)\n  return %y\n}", 2, "undefined value %z"),
    ("  %x: f32[2, 4] = test.relu(%x)\n  return %x\n}", 2, "duplicate definition of %x"),
    ("  %y: f33[2, 4] = test.relu(%x)\n  return %y\n}", 2, "unknown dtype 'f33'"),
    ("  %y: f32[2, 4] = test.norm(%x) {eps=oops}\n  return %y\n}", 2, "'oops'"),
    ("  %y: f32[2, 4] = test.norm(%x) {eps=}\n  return %y\n}", 2, "malformed attribute value"),
    ('  %y: f32[2, 4] = test.norm(%x) {eps="a}\n  return %y\n}', 2, "unterminated string"),
    ("  %y: f32[2, 4] = test.norm(%x) {epsilon=1.0}\n  return %y\n}", 2, "epsilon"),
    ("  %y: f32[2, 4] = test.norm(%x) {eps=1.0, eps=2.0}\n  return %y\n}", 2, "duplicate attr"),
    ("  %y: f32[4, 4] = test.relu(%x)\n  return %y\n}", 2, "infers f32[2, 4]"),
    (
        "  %y: f32[2, 4] = test.split2(%x) {axis=0, sizes=[1, 1]}\n  return %y\n}",
        2,
        "declares 1 output(s)",
    ),
    ("  %y: f32[2, 4] = test.add(%x)\n  return %y\n}", 2, "test.add"),
    ("  %y: f32[2, s0+] = test.relu(%x)\n  return %y\n}", 2, "malformed dim 's0+'"),
    ("  const %c: i8[2] = [1, 300]\n  return %x\n}", 2, "300 is out of range for i8"),
    ("  const %c: bool[2] = [true, 1]\n  return %x\n}", 2, "must be true/false"),
    ("  const %c: i64[2, 2] = [[1, 2], [3]]\n  return %x\n}", 2, "1 items where 2"),
    ("  const %c: i64[2] = [1.5, 2]\n  return %x\n}", 2, "'1.5'"),
    ("  const %big: f32[2, 4]\n  return %x\n}", 2, "constants={'big'"),
    ("  %y: f32[2, 4] = test.relu(%x)\n}", 3, "expected 'return'"),
    ("  return %x\n}\nextra", 4, "unexpected text after the graph: 'extra'"),
    ("  %y: f32[2, 4] test.relu(%x)\n  return %y\n}", 2, "expected ',' or '='"),
]


@pytest.mark.parametrize("body, line, fragment", PARSE_ERRORS)
def test_parse_errors(body, line, fragment):
    with pytest.raises(ParseError) as info:
        parse_graph(_HEAD + body)
    message = str(info.value)
    assert f"line {line}:" in message and fragment in message
    assert info.value.line == line and message.count("^") >= 1


def test_parse_error_points_at_the_token():
    with pytest.raises(ParseError) as info:
        parse_graph(_HEAD + "  %y: f32[2, 4] = test.add(%x, %nope)\n  return %y\n}")
    message = str(info.value)
    assert message.startswith("line 2:32: undefined value %nope")
    source, caret = message.splitlines()[1:3]
    assert source.strip() == "%y: f32[2, 4] = test.add(%x, %nope)"
    assert source[caret.index("^") :].startswith("%nope")


def test_parse_external_constant_mismatch():
    text = _HEAD + "  const %w: f32[2, 4]\n  return %w\n}"
    with pytest.raises(ParseError, match=r"line 2:.*float64\[2, 4\].*float32"):
        parse_graph(text, constants={"w": np.zeros((2, 4))})


def test_parse_rejects_declared_quant_mismatch():
    declared = "%q: i8[2, 4]{scale=[0.5], zp=[1], bits=8}"
    text = _HEAD + f"  {declared} = test.quantize(%x) {{scale=0.5, zp=3}}\n"
    with pytest.raises(ParseError, match="line 2:.*infers i8"):
        parse_graph(text + "  return %q\n}")


# ----------------------------------------------------------------------------------- clone
def test_clone_is_independent():
    g = sample_graph()
    g.input_spec, g.output_spec = ("spec-in",), ("spec-out",)
    _node(g, "norm").source = "model.py:12"
    before = print_graph(g)
    c, mapping = clone_graph_with_map(g)
    assert print_graph(c) == before and c.verify() is None
    assert all(mapping[v] is not v and mapping[v].name == v.name for v in g.values())
    assert c.constants["big"].data is g.constants["big"].data
    assert (c.input_spec, c.output_spec, c.symbol_sources) == (
        ("spec-in",),
        ("spec-out",),
        g.symbol_sources,
    )
    assert _node(c, "norm").source == "model.py:12"
    out = mapping[_node(g, "out").output]
    assert [n.name for n in out.users] == [n.name for n in _node(g, "out").output.users]
    # mutate the clone every which way
    with c.inserting_after(out.producer):
        relu = c.create_node("test.relu", [out], name="r")
    out.replace_all_uses_with(relu.output)
    relu.set_input(0, out)
    c.erase_node(_node(c, "ids_f").output.users[0])
    c.outputs.pop()
    c.erase_node(_node(c, "ids_f"))
    c.constants["scale"].name = "scale"  # no-op rename
    c.verify()
    g.verify()
    assert print_graph(g) == before and print_graph(c) != before
    assert clone_graph(g).unique_name("out") == g.unique_name("out") == "out_1"


def test_clone_refuses_undefined_operand():
    g = sample_graph()
    _corrupt_other_graph(g)
    with pytest.raises(GraphoptError, match="cannot clone %out = test.add"):
        g.clone()


# ----------------------------------------------------------------------------- mutation
def test_iteration_tolerates_erase_and_insert():
    g = sample_graph()
    seen = []
    for node in g.nodes:
        seen.append(node.name)
        if node.op == "test.norm":  # inserted after the current node: visited
            with g.inserting_after(node):
                g.create_node("test.relu", [node.output], name="fresh")
        if node.op == "test.cast":  # erase the node after the current one: skipped
            g.erase_node(node.output.users[0])
        if node.name == "fresh":
            g.erase_node(node)
    assert seen == ["norm", "fresh", "split", "out", "cat", "ids_f"]
    assert [n.name for n in reversed(g.nodes)] == ["ids_f", "cat", "out", "split", "norm"]
    assert len(g.nodes) == 5
    g.verify()


def test_replace_all_uses_with_updates_outputs():
    g = sample_graph()
    split1 = _node(g, "split").outputs[1]
    with g.inserting_after(split1.producer):
        relu = g.create_node("test.relu", [split1], name="r")
    assert split1.replace_all_uses_with(relu.output) == 3  # test.add operand, relu, output
    relu.set_input(0, split1)
    assert g.outputs[1] is relu.output and split1.users == [relu]
    g.verify()
    roundtrip(g)


def test_brief_example_with_builtin_ops():
    text = """\
graph main(%x: f32[1, 3, 8, 8], %ids: i64[s0, 128]) {
  const %conv.weight: f32[16, 3, 3, 3]
  const %scale: f32[] = 0.125
  const %idx: i64[3] = [0, 2, 1]
  %conv: f32[1, 16, 8, 8] = conv(%x, %conv.weight, None) \
{dilation=[1, 1], groups=1, padding=[1, 1], stride=[1, 1]}
  %split: f32[1, 8, 8, 8], %split.1: f32[1, 8, 8, 8] = split(%conv) {axis=1, sizes=[8, 8]}
  %out: f32[1, 8, 8, 8] = add(%split, %split.1)
  return %out, %split.1
}"""
    g = parse_graph(text, constants={"conv.weight": np.zeros((16, 3, 3, 3), np.float32)})
    assert print_graph(g) == text
    roundtrip(g)
