"""Core passes: dce, cse, fold-constants, canonicalize.

Per pass: golden IR before -> after (parse, optimize, print), numeric equivalence with eager
PyTorch on real architectures, and negative tests saying why a rewrite did not happen.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from graphopt.passes.canonicalize import canonicalize_rules

import graphopt
from graphopt.ops._infer import same_as_input
from graphopt.ops.registry import register_op
from graphopt.rewrite import explain

try:  # an op without the PURE trait, to check that dce/cse/folding leave it alone
    register_op("test.effect", inputs=("x",), traits=frozenset(), infer=same_as_input)(
        lambda x: x.clone()
    )
except ValueError:
    pass


def optimized(text: str, pipeline: str, constants=None) -> str:
    return str(graphopt.optimize(graphopt.parse(text, constants), pipeline))


def golden(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def rule_named(name: str, signed_zeros: bool = True):
    return next(r for r in canonicalize_rules(signed_zeros) if r.name == name)


# ------------------------------------------------------------------------------------ dce
def test_dce_golden():
    before = """graph main(%x: f32[4]) {
  const %unused: f32[] = 2.0
  const %k: f32[] = 3.0
  %dead1: f32[4] = exp(%x)
  %dead2: f32[4] = mul(%dead1, %k)
  %kept: f32[4] = test.effect(%x)
  %y: f32[4] = relu(%x)
  return %y
}"""
    assert optimized(before, "dce") == golden("""
graph main(%x: f32[4]) {
  %kept: f32[4] = test.effect(%x)
  %y: f32[4] = relu(%x)
  return %y
}""")


def test_dce_keeps_constants_returned_as_outputs():
    text = """graph main(%x: f32[2]) {
  const %c: f32[2] = [1.0, 2.0]
  return %x, %c
}"""
    assert optimized(text, "dce") == golden(text)


# ------------------------------------------------------------------------------------ cse
def test_cse_golden_merges_nodes_and_constants_but_not_signed_zeros_or_other_attrs():
    before = """graph main(%x: f32[4]) {
  const %a: f32[] = 2.0
  const %b: f32[] = 2.0
  const %nz: f32[] = -0.0
  const %pz: f32[] = 0.0
  %m: f32[4] = mul(%x, %a)
  %n: f32[4] = mul(%x, %b)
  %s: f32[4] = add(%m, %n)
  %p: f32[4] = add(%s, %nz)
  %q: f32[4] = add(%s, %pz)
  %l1: f32[4] = leaky_relu(%q) {negative_slope=0.1}
  %l2: f32[4] = leaky_relu(%q) {negative_slope=0.2}
  %l3: f32[4] = leaky_relu(%q) {negative_slope=0.1}
  %e1: f32[4] = test.effect(%q)
  %e2: f32[4] = test.effect(%q)
  return %p, %l1, %l2, %l3, %e1, %e2
}"""
    assert optimized(before, "cse") == golden("""
graph main(%x: f32[4]) {
  const %a: f32[] = 2.0
  const %nz: f32[] = -0.0
  const %pz: f32[] = 0.0
  %m: f32[4] = mul(%x, %a)
  %s: f32[4] = add(%m, %m)
  %p: f32[4] = add(%s, %nz)
  %q: f32[4] = add(%s, %pz)
  %l1: f32[4] = leaky_relu(%q) {negative_slope=0.1}
  %l2: f32[4] = leaky_relu(%q) {negative_slope=0.2}
  %e1: f32[4] = test.effect(%q)
  %e2: f32[4] = test.effect(%q)
  return %p, %l1, %l2, %l1, %e1, %e2
}""")


def test_cse_does_not_merge_constants_of_different_dtype_or_shape():
    text = """graph main(%x: f32[2]) {
  const %a: f32[2] = [1.0, 1.0]
  const %b: f64[2] = [1.0, 1.0]
  const %c: f32[2, 1] = [[1.0], [1.0]]
  return %a, %b, %c
}"""
    assert optimized(text, "cse") == golden(text)


def test_cse_large_constants_compare_all_bytes_not_the_hashed_sample():
    """cse hashes a sample of a large constant's elements to find candidates: constants that
    differ only between sampled elements must stay apart; equal ones (and a third equal to
    the second of two that differ) merge."""
    from graphopt.ir.dtypes import DType
    from graphopt.ir.graph import Graph
    from graphopt.ir.types import TensorType
    from graphopt.ir.array_identity import SAMPLE

    base = np.arange(SAMPLE * 8, dtype=np.float32)
    differ = base.copy()
    differ[1] += 0.5  # between two sampled elements (the stride is 8)
    g = Graph("main")
    x = g.add_input("x", TensorType((SAMPLE * 8,), DType.float32))
    consts = [g.add_constant(a.copy(), n) for a, n in
              ((base, "a"), (differ, "b"), (differ, "c"), (base, "d"))]
    g.set_outputs([g.create_node("add", [x, c]).outputs[0] for c in consts])
    out = graphopt.optimize(g, "cse")
    assert sorted(out.constants) == ["a", "b"]
    adds = [o.producer for o in out.outputs]
    assert [n.inputs[1].name for n in adds] == ["a", "b", "b", "a"]


# ------------------------------------------------------------------------- fold-constants
def test_fold_constants_golden_shape_arithmetic_chain():
    before = """graph main(%x: i64[1, 8]) {
  const %arange: i64[8] = [0, 1, 2, 3, 4, 5, 6, 7]
  const %zero: i64[] = 0
  %pos: i64[8] = add(%arange, %zero)
  %ids: i64[1, 8] = unsqueeze(%pos) {axis=0}
  %y: i64[1, 8] = add(%x, %ids)
  return %y
}"""
    assert optimized(before, "fold-constants,dce") == golden("""
graph main(%x: i64[1, 8]) {
  const %ids: i64[1, 8] = [[0, 1, 2, 3, 4, 5, 6, 7]]
  %y: i64[1, 8] = add(%x, %ids)
  return %y
}""")


def test_fold_constants_size_guard_keeps_big_expands():
    text = """graph main(%x: f32[64, 64, 4]) {
  const %s: f32[] = 0.5
  %big: f32[64, 64, 4] = expand(%s) {shape=[64, 64, 4]}
  %small: f32[64, 4] = expand(%s) {shape=[64, 4]}
  %y: f32[64, 64, 4] = mul(%x, %big)
  %z: f32[64, 64, 4] = add(%y, %small)
  return %z
}"""
    hist = graphopt.optimize(graphopt.parse(text), "fold-constants,dce").op_histogram()
    assert hist == {"expand": 1, "mul": 1, "add": 1}  # the 16384-element expand is kept
    hist = graphopt.optimize(
        graphopt.parse(text), "fold-constants{small_elements=100000},dce"
    ).op_histogram()
    assert hist == {"mul": 1, "add": 1}
    hist = graphopt.optimize(
        graphopt.parse(text), "fold-constants{small_elements=1},dce"
    ).op_histogram()
    assert hist == {"expand": 2, "mul": 1, "add": 1}


def test_fold_constants_skips_symbolic_and_impure_nodes():
    text = """graph main(%x: i64[s0]) {
  const %c: f32[3] = [1.0, 2.0, 3.0]
  %r: i64[s0] = arange() {dtype=i64, end=sym(s0), start=0, step=1}
  %e: f32[3] = test.effect(%c)
  %y: i64[s0] = add(%x, %r)
  return %y, %e
}"""
    assert optimized(text, "fold-constants") == golden(text)


# --------------------------------------------------------------------------- canonicalize
CANON_BEFORE = """graph main(%x: f32[2, 3], %i: i32[2, 3], %y: f32[3, 1], %z: f32[2, 2]) {
  const %one: f32[] = 1.0
  const %ones: f32[2, 3]
  const %nzero: f32[3] = [-0.0, -0.0, -0.0]
  const %pzero: f32[] = 0.0
  const %izero: i32[] = 0
  %xz: f32[2, 5] = concat(%x, %z) {axis=1}
  %xs: f32[2, 3] = slice(%xz) {axis=-1, end=3, start=0, step=1}
  %r: f32[2, 3] = reshape(%xs) {shape=[2, 3]}
  %e: f32[2, 3] = expand(%r) {shape=[2, 3]}
  %sl: f32[2, 3] = slice(%e) {axis=1, end=9223372036854775807, start=0, step=1}
  %pi: f32[2, 3] = permute(%sl) {perm=[0, 1]}
  %ci: f32[2, 3] = cast(%pi) {dtype=f32}
  %m1: f32[2, 3] = mul(%one, %ci)
  %m2: f32[2, 3] = mul(%m1, %ones)
  %d: f32[2, 3] = div(%m2, %one)
  %a0: f32[2, 3] = add(%nzero, %d)
  %s0: f32[2, 3] = sub(%a0, %pzero)
  %n1: f32[2, 3] = neg(%s0)
  %n2: f32[2, 3] = neg(%n1)
  %u: f32[2, 1, 3] = unsqueeze(%n2) {axis=1}
  %sq: f32[2, 3] = squeeze(%u) {axes=[1]}
  %rr1: f32[6] = reshape(%sq) {shape=[6]}
  %rr2: f32[3, 2] = reshape(%rr1) {shape=[3, 2]}
  %p1: f32[2, 3] = permute(%rr2) {perm=[1, 0]}
  %p2: f32[3, 2] = permute(%p1) {perm=[1, 0]}
  %c1: f64[3, 2] = cast(%p2) {dtype=f64}
  %c2: f32[3, 2] = cast(%c1) {dtype=f32}
  %ia: i32[2, 3] = add(%i, %izero)
  %ys: f32[3] = squeeze(%y) {axes=[1]}
  %yu: f32[3, 1] = unsqueeze(%ys) {axis=1}
  return %c2, %ia, %yu
}"""


def test_canonicalize_golden_collapses_every_identity_and_chain():
    g = graphopt.parse(CANON_BEFORE, {"ones": np.ones((2, 3), np.float32)})
    out, report = graphopt.optimize(g, "canonicalize,dce", report=True)
    assert str(out) == golden("""
graph main(%x: f32[2, 3], %i: i32[2, 3], %y: f32[3, 1], %z: f32[2, 2]) {
  %reshape: f32[3, 2] = reshape(%x) {shape=[3, 2]}
  return %reshape, %i, %y
}""")
    fired = set(report.records[0].rewrites)
    assert {r.name for r in canonicalize_rules()} - fired == set()  # every rule fired
    x = torch.randn(2, 3)
    x[0, 0] = -0.0
    i = torch.arange(6, dtype=torch.int32).reshape(2, 3)
    y, z = torch.randn(3, 1), torch.randn(2, 2)
    for a, b in zip(graphopt.run(out, x, i, y, z), graphopt.run(g, x, i, y, z)):
        assert torch.equal(a, b) and torch.equal(a.signbit(), b.signbit())


CANON_NEGATIVE = """graph main(%x: f32[3], %h: f16[2, 3]) {
  const %zeros: f32[2, 3]
  const %pzero: f32[] = 0.0
  const %nzero: f32[] = -0.0
  const %one64: f64[1] = [1.0]
  const %onef: f32[] = 1.0
  %bcast: f32[2, 3] = add(%x, %zeros)
  %pz: f32[3] = add(%x, %pzero)
  %nz: f32[3] = sub(%x, %nzero)
  %promote: f64[3] = mul(%x, %one64)
  %floor: f32[3] = div(%x, %onef) {rounding_mode="floor"}
  %wide: f16[3] = cast(%x) {dtype=f16}
  %back: f32[3] = cast(%wide) {dtype=f32}
  %toint: f64[3] = cast(%x) {dtype=f64}
  %int: i32[3] = cast(%toint) {dtype=i32}
  %sl: f32[2] = slice(%x) {axis=0, end=2, start=0, step=1}
  %u: f32[3, 1] = unsqueeze(%x) {axis=1}
  %sq: f32[3, 1] = squeeze(%u) {axes=[0]}
  return %bcast, %pz, %nz, %promote, %floor, %back, %int, %sl, %sq
}"""


def _negative_graph():
    return graphopt.parse(CANON_NEGATIVE, {"zeros": np.zeros((2, 3), np.float32)})


def test_canonicalize_leaves_unsound_candidates_alone():
    g = _negative_graph()
    assert str(graphopt.optimize(g, "canonicalize")) == str(g)


@pytest.mark.parametrize(
    "rule, node, reason",
    [
        ("add-zero", "%bcast", "output %bcast: f32[2, 3] differs from %x: f32[3]"),
        ("add-zero", "%pz", "x + (+0.0) turns x = -0.0 into +0.0"),
        ("sub-zero", "%nz", "x - (-0.0) turns x = -0.0 into +0.0"),
        ("mul-one", "%promote", "output %promote: f64[3] differs from %x: f32[3]"),
        ("div-one", "%floor", "rounding_mode='floor' rounds float x"),
        ("cast-cast", "%back", "cast f32 -> f16 is not lossless"),
        ("cast-cast", "%int", "final cast to integer i32 from a different dtype is not merged"),
        ("identity-slice", "%sl", "output %sl: f32[2] differs from %x: f32[3]"),
        ("squeeze-unsqueeze", "%sq", "output %sq: f32[3, 1] differs from %x: f32[3]"),
        ("identity-cast", "%wide", "output %wide: f16[3] differs from %x: f32[3]"),
    ],
)
def test_canonicalize_negative_reasons_via_tracer(rule, node, reason):
    explanations = explain(_negative_graph(), rule_named(rule), limit=None)
    here = [e for e in explanations if e.node.split(" ")[0] == node]
    assert len(here) == 1 and not here[0].fired
    assert here[0].where == "check()" and reason in here[0].reason


def test_canonicalize_signed_zeros_option():
    g = _negative_graph()
    hist = graphopt.optimize(g, "canonicalize{signed_zeros=false}").op_histogram()
    assert hist["add"] == 1 and hist["sub"] == 0  # x+0.0 and x-(-0.0) folded; bcast kept
    assert explain(g, rule_named("add-zero", signed_zeros=False), limit=None)[0].fired


def test_canonicalize_cast_roundtrip_through_wider_type_is_removed():
    text = """graph main(%h: f16[2, 3]) {
  %w: f32[2, 3] = cast(%h) {dtype=f32}
  %n: f16[2, 3] = cast(%w) {dtype=f16}
  return %n
}"""
    assert optimized(text, "canonicalize,dce") == golden("""
graph main(%h: f16[2, 3]) {
  return %h
}""")


# ----------------------------------------------------------------- numerics on real models
PASSES = ["canonicalize", "cse", "fold-constants", "dce", "canonicalize,fold-constants,cse,dce"]


@pytest.mark.parametrize("pipeline", PASSES)
def test_passes_keep_real_models_equal_to_eager(
    pipeline,
    traced_bert_small,
    traced_gpt2_small,
    traced_tensorops,
    traced_convzoo,
    assert_matches_eager,
):
    for traced in (traced_bert_small, traced_gpt2_small, traced_tensorops, traced_convzoo):
        out = graphopt.optimize(traced.graph, pipeline, verify=True)
        assert_matches_eager(traced, out)


def test_default_pipeline_shrinks_gpt2(traced_gpt2_small):
    out, report = graphopt.optimize(traced_gpt2_small.graph, report=True)
    assert report.nodes_after < report.nodes_before
    rewrites = report.rewrites()
    assert rewrites.get("fold", 0) > 0 and rewrites.get("merge-constants", 0) > 0
    # Re-running the default pipeline on its own output changes nothing (fixpoint reached).
    _, again = graphopt.optimize(out, report=True)
    assert not again.changed
