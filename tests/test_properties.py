"""Property tests (hypothesis) on generated graphs: text round trip, pass soundness, parser safety.

The graphs come from ``tests/strategies.py``: small DAGs drawn from an op table checked against
the op registry, with static and symbolic shapes and constants at edge values in every dtype.

* parse(print(g)) gives back the same text and bitwise-identical constants;
* the default pipeline and each cleanup pass (dce, cse, fold-constants, canonicalize) keep the
  verifier clean and the outputs equal to the unoptimized graph's (within a per-dtype
  tolerance), and leave their input graph alone; the property itself is checked to catch an
  unsound pass. Known bugs it found are pinned as xfail(strict=True) tests below;
* the generated graphs use the op registry's own shape rules (``strategies.OP_TABLE``), which
  ``test_op_table_matches_the_registry`` keeps in sync;
* the IR parser, fed arbitrary text or damaged printed graphs, raises nothing but
  ``GraphoptError`` subclasses.

Example counts are bounded and derandomized so the file runs deterministically in well under a
minute (``make test``). To search harder locally, scale the counts and draw fresh examples::

    GRAPHOPT_PROPERTY_SCALE=20 GRAPHOPT_PROPERTY_RANDOM=1 pytest tests/test_properties.py
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, find, given, note, settings
from hypothesis import strategies as st
from strategies import OP_TABLE, graphs, random_inputs

import graphopt
from graphopt.errors import GraphoptError
from graphopt.interpreter import run_flat, value_env
from graphopt.ir.parser import parse_graph
from graphopt.ir.printer import print_graph
from graphopt.ops.registry import all_ops, get_op
from graphopt.transform import PIPELINES as NAMED_PIPELINES
from graphopt.transform import parse_pipeline
from graphopt.transform.numeric import compare_outputs

EXAMPLES = {"roundtrip": 200, "soundness": 100, "text": 1000, "damaged": 300}
SCALE = float(os.environ.get("GRAPHOPT_PROPERTY_SCALE", "1"))
RANDOM = os.environ.get("GRAPHOPT_PROPERTY_RANDOM", "") == "1"


def bounded(kind: str):
    return settings(
        max_examples=max(1, int(EXAMPLES[kind] * SCALE)),
        derandomize=not RANDOM,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def test_op_table_matches_the_registry():
    """Every generated op exists, with the operand count the table draws."""
    registered = all_ops()
    for spec in OP_TABLE:
        assert spec.op in registered, spec.op
        opdef = get_op(spec.op)
        if spec.arity is None:
            assert opdef.variadic, spec.op
        else:
            assert not opdef.variadic and len(opdef.inputs) == spec.arity, spec.op


# ------------------------------------------------------------------------------ round trip
def assert_bitwise_equal(a: np.ndarray, b: np.ndarray, name: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, name
    assert a.tobytes() == b.tobytes(), f"constant %{name} changed: {a!r} -> {b!r}"


@bounded("roundtrip")
@given(graphs(extra_constants=True))
def test_parse_print_round_trip(graph):
    text = print_graph(graph)
    note(text)
    back = parse_graph(text, constants={k: v.data for k, v in graph.constants.items()})
    assert print_graph(back) == text
    back.verify()
    assert back.name == graph.name
    assert [v.name for v in back.outputs] == [v.name for v in graph.outputs]
    assert list(back.constants) == list(graph.constants)
    for name, v in graph.constants.items():
        assert back.constants[name].type == v.type, name
        assert_bitwise_equal(v.data, back.constants[name].data, name)


def test_negative_nan_keeps_its_sign_bit():
    """A negative NaN (x86's 0 * inf, e.g. in a folded constant) prints as -nan."""
    g = graphopt.Graph()
    g.add_constant(np.array([-np.nan], np.float32), "c")
    back = parse_graph(print_graph(g))
    assert_bitwise_equal(g.constants["c"].data, back.constants["c"].data, "c")


# ------------------------------------------------------------------------------ soundness
TOLERANCE = {  # (rtol, atol) per output dtype; ints and bools compare exactly
    torch.float64: (1e-6, 1e-9),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}
# fuse-gelu turns +inf into nan (test_fuse_gelu_erf_form_keeps_infinity, xfail), and +inf is
# common in these graphs (edge constants, x / 0): until it is fixed, "default" runs without
# fuse-gelu here and test_fuse_gelu_soundness checks fuse-gelu where no value is +inf. When the
# xfail passes, use PIPELINES["default"] again and drop that test.
DEFAULT_WITHOUT_FUSE_GELU = NAMED_PIPELINES["default"].replace(
    "fusions", NAMED_PIPELINES["fusions"].replace("fuse-gelu,", "")
)
PIPELINES = {
    "default": DEFAULT_WITHOUT_FUSE_GELU,
    "dce": "dce",
    "cse": "cse",
    "fold-constants": "fold-constants",
    "canonicalize": "canonicalize",
}


def soundness_violation(graph, pipeline, sizes, seed, specials) -> str | None:
    """Why ``pipeline`` is unsound on ``graph`` (None if it is not, on these inputs)."""
    before = print_graph(graph)
    inputs = random_inputs(graph, sizes, seed, specials)
    expected = run_flat(graph, inputs)
    optimized = graphopt.optimize(graph, pipeline, verify=True)
    optimized.verify()
    if print_graph(graph) != before:
        return f"{pipeline} mutated its input graph"
    actual = run_flat(optimized, inputs)
    if len(actual) != len(expected):
        return f"{len(actual)} outputs instead of {len(expected)}"
    for i, (e, a) in enumerate(zip(expected, actual)):
        rtol, atol = TOLERANCE.get(e.dtype, (0.0, 0.0))
        drift = compare_outputs([e], [a], rtol, atol)
        if not drift.ok:
            return (
                f"changed output {i}: {drift}\nbefore:\n{before}\n"
                f"after:\n{print_graph(optimized)}\ninputs: {inputs}"
            )
    return None


SOUNDNESS_ARGS = dict(
    graph=graphs(),
    sizes=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    seed=st.integers(0, 2**16),
    specials=st.booleans(),
)


@pytest.mark.parametrize("name", list(PIPELINES))
@bounded("soundness")
@given(**SOUNDNESS_ARGS)
def test_pass_soundness(name, graph, sizes, seed, specials):
    note(print_graph(graph))
    problem = soundness_violation(graph, PIPELINES[name], sizes, seed, specials)
    assert problem is None, f"{name}: {problem}"


def test_default_without_fuse_gelu_differs_only_by_fuse_gelu():
    assert "fuse-gelu" in str(parse_pipeline("default"))
    assert "fuse-gelu" not in str(parse_pipeline(DEFAULT_WITHOUT_FUSE_GELU))
    assert str(parse_pipeline(DEFAULT_WITHOUT_FUSE_GELU)) == str(
        parse_pipeline("default")
    ).replace("fuse-gelu,", "")


@bounded("soundness")
@given(graph=graphs(edges=False), sizes=SOUNDNESS_ARGS["sizes"], seed=SOUNDNESS_ARGS["seed"])
def test_fuse_gelu_soundness(graph, sizes, seed):
    """fuse-gelu on the examples where no value is +inf (see DEFAULT_WITHOUT_FUSE_GELU)."""
    note(print_graph(graph))
    env = value_env(graph, *random_inputs(graph, sizes, seed))
    assume(not any(t.is_floating_point() and bool(torch.isposinf(t).any()) for t in env.values()))
    problem = soundness_violation(graph, "cleanup,fuse-gelu,cleanup", sizes, seed, False)
    assert problem is None, f"fuse-gelu: {problem}"


def drop_mul_by_constant(graph) -> bool:
    """An unsound 'peephole': x * c -> x for any constant c (not only c == 1)."""
    changed = False
    for node in list(graph.nodes):
        if node.op == "mul" and node.inputs[1].is_constant:
            x = node.inputs[0]
            if x.type == node.output.type:
                node.output.replace_all_uses_with(x)
                graph.erase_node(node)
                changed = True
    return changed


def test_soundness_property_catches_an_unsound_pass():
    """The property is tested too: it finds a counterexample for a wrong rewrite, shrunk."""
    found = find(
        st.fixed_dictionaries(SOUNDNESS_ARGS),
        lambda ex: soundness_violation(pipeline=[drop_mul_by_constant], **ex) is not None,
        settings=settings(
            max_examples=EXAMPLES["soundness"], derandomize=True, database=None, deadline=None
        ),
    )
    assert found["graph"].op_histogram()["mul"] >= 1


@pytest.mark.xfail(
    # torch's gelu(+inf) is nan on its AVX-512 path and inf on its AVX2 path
    bool(torch.isnan(torch.nn.functional.gelu(torch.tensor([float("inf")] * 16))).any()),
    strict=True,
    reason="fuse-gelu is not exact at x = +inf: the erf formula gives inf, torch's gelu "
    "(approximate='none') gives nan on this CPU. Found by test_pass_soundness[default]; when "
    "fixed, also drop DEFAULT_WITHOUT_FUSE_GELU",
)
def test_fuse_gelu_erf_form_keeps_infinity():
    graph = graphopt.parse(
        """graph main(%x: f32[3]) {
  const %sqrt2: f32[] = 1.4142135
  const %half: f32[] = 0.5
  const %one: f32[] = 1.0
  %d: f32[3] = div(%x, %sqrt2) {rounding_mode=none}
  %e: f32[3] = erf(%d)
  %h: f32[3] = mul(%x, %half)
  %a: f32[3] = add(%e, %one)
  %y: f32[3] = mul(%h, %a)
  return %y
}"""
    )
    x = torch.tensor([float("inf"), -1.0, 2.0])
    optimized = graphopt.optimize(graph, "fuse-gelu")
    assert optimized.op_histogram() == {"gelu": 1}
    torch.testing.assert_close(graphopt.run(optimized, x), graphopt.run(graph, x))


def test_cse_merges_empty_constants():
    """Found by test_pass_soundness[default]: fold-constants folds a slice to an empty constant,
    and cse's digest (memoryview.cast) raised TypeError on a zero in the shape."""
    graph = graphopt.parse(
        """graph main(%x: f32[2]) {
  const %a: f32[0, 1] = []
  const %b: f32[0, 1] = []
  return %a, %b
}"""
    )
    optimized = graphopt.optimize(graph, "cse")
    assert len(optimized.constants) == 1


# ------------------------------------------------------------------------------ parser
VOCABULARY = [
    "[", "]", "{", "}", "(", ")", ",", "=", ":", "%", "%x0", "%c", "\"", "#", "\n", " ",
    "-1", "0", "99999999999999999999999", "1e309", "-0.0", "nan", "inf", "-inf", "true",
    "None", "none", "s0", "sym(", "2*s0", "s0//0", "s0**99", "Max(", "f32", "bf16", "i8",
    "bool", "graph", "const", "return", "sparse(nnz=1)", "{scale=[0.0], zp=[0]}",
    "[[[[[[[[", "]]]]]]]]", "((((((((", "\\u0000", "\u00e9", "\x00", "add(", "reshape(",
]


@st.composite
def damaged_texts(draw):
    """A printed graph with a few random edits: deletions, duplications, token insertions."""
    graph = draw(graphs(extra_constants=True, max_ops=4))
    text = print_graph(graph)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        edit = draw(st.sampled_from(["delete", "duplicate", "insert", "replace"]))
        if edit == "delete":
            text = text[:i] + text[j:]
        elif edit == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            token = draw(st.sampled_from(VOCABULARY) | st.text(max_size=3))
            text = text[:i] + token + (text[j:] if edit == "replace" else text[i:])
    return text, {k: v.data for k, v in graph.constants.items()}


def parse_or_graphopt_error(text: str, constants=None) -> None:
    try:
        parse_graph(text, constants)
    except GraphoptError:
        pass


@bounded("text")
@given(st.text(max_size=200))
def test_parser_never_raises_raw_errors_on_arbitrary_text(text):
    parse_or_graphopt_error(text)
    parse_or_graphopt_error("graph g(%x: f32[4]) {\n" + text + "\n  return %x\n}")


@bounded("damaged")
@given(damaged_texts())
def test_parser_never_raises_raw_errors_on_damaged_graphs(damaged):
    text, constants = damaged
    parse_or_graphopt_error(text, constants)
