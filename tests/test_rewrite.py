"""Pattern rewriting: matching, commutativity, constraints, escapes, the driver and the tracer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graphopt
from graphopt.errors import RewriteError, UnknownOpError
from graphopt.rewrite import (
    Attr,
    Const,
    Rule,
    Var,
    apply_rules,
    explain,
    explain_text,
    find_match,
    op,
    rule,
    track_rewrites,
)

MATMUL_ADD = """graph main(%x: f32[2, 4], %h: f32[2, 3]) {
  const %w: f32[4, 3]
  const %b: f32[3] = [0.5, -1.0, 2.0]
  %mm: f32[2, 3] = matmul(%x, %w)
  %y: f32[2, 3] = add(%b, %mm)
  %hw: f32[2, 3] = add(%h, %b)
  %out: f32[2, 3] = mul(%y, %hw)
  return %out
}"""


def parse(text: str, **constants) -> graphopt.Graph:
    rng = np.random.default_rng(0)
    arrays = {k: v for k, v in constants.items()}
    arrays.setdefault("w", rng.standard_normal((4, 3)).astype(np.float32))
    return graphopt.parse(text, arrays)


class MatMulAddToLinear(Rule):
    """add(matmul(x, w), b) -> linear(x, w^T, b) for a 2-D constant w and 1-D b."""

    name = "matmul-add-to-linear"

    def pattern(self):
        return op.add(op.matmul(Var("x"), Const("w")).named("mm"), Const("b"))

    def check(self, match):
        if match["b"].type.rank != 1:
            return f"bias %{match['b'].name} has rank {match['b'].type.rank}, not 1"
        return None

    def rewrite(self, match, rw):
        wt = rw.constant(np.ascontiguousarray(match.const("w").T), name="wt")
        return rw.op.linear(match["x"], wt, match["b"])


def inputs(graph):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(*v.shape, generator=gen) for v in graph.inputs]


def test_commutative_match_and_rewrite_is_exact():
    g = parse(MATMUL_ADD)
    args = inputs(g)
    before = graphopt.run(g, *args)
    stats = apply_rules(g, [MatMulAddToLinear()])
    assert stats.applied() == {"matmul-add-to-linear": 1}
    s = stats.per_rule["matmul-add-to-linear"]
    assert (s.inserted, s.removed, s.replaced) == (1, 2, 1)  # linear in; add+matmul out
    assert g.op_histogram() == {"linear": 1, "add": 1, "mul": 1}
    g.verify()
    torch.testing.assert_close(graphopt.run(g, *args), before, rtol=1e-5, atol=1e-6)
    assert "matmul-add-to-linear" in str(stats)


def test_match_object_exposes_values_nodes_and_constants():
    g = parse(MATMUL_ADD)
    root = next(n for n in g.nodes if n.name == "y")
    m = find_match(MatMulAddToLinear(), root)
    assert m is not None and m.root is root
    assert m["x"].name == "x" and m["b"].name == "b"
    assert m.nodes["mm"].op == "matmul"
    assert m.const("w").shape == (4, 3)
    assert [n.name for n in m.matched_nodes] == ["y", "mm"]
    with pytest.raises(KeyError, match="no variable 'nope'"):
        m["nope"]


def test_const_constraint_rejects_non_constant_and_tracer_says_so():
    g = parse(MATMUL_ADD.replace("%y: f32[2, 3] = add(%b, %mm)", "%y: f32[2, 3] = add(%h, %mm)"))
    assert apply_rules(g, [MatMulAddToLinear()]).rewrites == 0
    best = explain(g, MatMulAddToLinear())[0]
    assert not best.fired and best.matched == 2 and best.total == 2
    assert best.where == "add.b"
    assert "'b' must be a constant" in best.reason and "%h (graph input" in best.reason


def test_const_value_constraint():
    text = """graph main(%x: f32[3]) {
  const %one: f32[3] = [1.0, 1.0, 1.0]
  const %two: f32[] = 2.0
  %a: f32[3] = mul(%x, %one)
  %b: f32[3] = mul(%two, %a)
  return %b
}"""
    g = graphopt.parse(text)
    r = rule("mul-one", op.mul(Var("x"), Const("c", value=1)), lambda m, rw: m["x"])
    assert apply_rules(g, [r]).rewrites == 1
    assert [n.op for n in g.nodes] == ["mul"]
    assert "must be all 1" in explain(g, r)[0].reason


def test_escaping_interior_value_is_rejected_and_explained():
    text = """graph main(%x: f32[2, 4]) {
  const %w: f32[4, 3]
  const %b: f32[3] = [0.5, -1.0, 2.0]
  %mm: f32[2, 3] = matmul(%x, %w)
  %y: f32[2, 3] = add(%mm, %b)
  %z: f32[2, 3] = relu(%mm)
  return %y, %z
}"""
    g = parse(text)
    assert apply_rules(g, [MatMulAddToLinear()]).rewrites == 0
    e = explain(g, MatMulAddToLinear())[0]
    assert e.where == "escape check"
    assert "%mm (matmul) is also used by %z = relu" in e.reason
    # The same for an interior value that is a graph output.
    g2 = parse(text.replace("return %y, %z", "return %y, %mm"))
    assert "the graph output" in explain(g2, MatMulAddToLinear())[0].reason


def test_allow_shared_keeps_the_shared_interior_node():
    text = """graph main(%x: f32[2, 6]) {
  %r1: f32[3, 4] = reshape(%x) {shape=[3, 4]}
  %r2: f32[12] = reshape(%r1) {shape=[12]}
  %n: f32[3, 4] = neg(%r1)
  return %r2, %n
}"""
    g = graphopt.parse(text)
    r = rule(
        "reshape-reshape",
        op.reshape(op.reshape(Var("x"))),
        lambda m, rw: rw.op.reshape(m["x"], shape=m.root.attrs["shape"]),
        allow_shared=True,
    )
    assert apply_rules(g, [r]).rewrites == 1
    g.verify()
    assert [n.op for n in g.nodes] == ["reshape", "reshape", "neg"]
    assert g.outputs[0].producer.inputs[0].name == "x"


def test_attribute_equality_predicate_capture_and_alternatives():
    text = """graph main(%x: f32[1, 2, 3, 4]) {
  %p: f32[1, 3, 2, 4] = permute(%x) {perm=[0, 2, 1, 3]}
  %q: f32[1, 2, 3, 4] = permute(%p) {perm=[0, 2, 1, 3]}
  %r: f32[1, 2, 3, 4] = relu(%q)
  %s: f32[1, 2, 3, 4] = gelu(%r)
  return %s
}"""
    g = graphopt.parse(text)
    q = next(n for n in g.nodes if n.name == "q")
    eq = rule("eq", op.permute(Var("x"), perm=(0, 2, 1, 3)), lambda m, rw: None)
    assert find_match(eq, q) is not None
    other = rule("other", op.permute(Var("x"), perm=(0, 1, 3, 2)), lambda m, rw: None)
    assert find_match(other, q) is None
    assert "attribute perm: expected (0, 1, 3, 2)" in explain(g, other)[0].reason
    pred = rule("pred", op.permute(Var("x"), perm=lambda p: p[0] == 0), lambda m, rw: None)
    assert find_match(pred, q) is not None
    cap = rule(
        "cap", op.permute(op.permute(Var("x"), perm=Attr("p")), perm=Attr("p")), lambda m, rw: None
    )
    m = find_match(cap, q)
    assert m.attrs["p"] == (0, 2, 1, 3)
    act = rule("act", op.relu(Var("x")) | op.gelu(Var("x")), lambda m, rw: None)
    assert act.root_ops() == {"relu", "gelu"}
    assert sum(find_match(act, n) is not None for n in g.nodes) == 2


def test_optional_operands_and_repeated_variables():
    text = """graph main(%x: f32[2, 4], %y: f32[2, 4]) {
  const %w: f32[3, 4]
  const %b: f32[3] = [0.0, 1.0, 2.0]
  %l1: f32[2, 3] = linear(%x, %w, None)
  %l2: f32[2, 3] = linear(%x, %w, %b)
  %sq: f32[2, 4] = mul(%x, %x)
  %xy: f32[2, 4] = mul(%x, %y)
  return %l1, %l2, %sq, %xy
}"""
    g = parse(text, w=np.ones((3, 4), np.float32))
    nodes = {n.name: n for n in g.nodes}
    no_bias = rule("nb", op.linear(Var("x"), Const("w")), lambda m, rw: None)
    assert find_match(no_bias, nodes["l1"]) is not None
    assert find_match(no_bias, nodes["l2"]) is None
    any_bias = rule(
        "ab", op.linear(Var("x"), Const("w"), Var("b", optional=True)), lambda m, rw: None
    )
    assert find_match(any_bias, nodes["l1"])["b"] is None
    assert find_match(any_bias, nodes["l2"])["b"].name == "b"
    square = rule("sq", op.mul(Var("a"), Var("a")), lambda m, rw: None)
    assert find_match(square, nodes["sq"]) is not None
    assert find_match(square, nodes["xy"]) is None
    why = [e for e in explain(g, square, limit=None) if "xy" in e.node][0]
    assert "'a' appears twice" in why.reason


def test_var_predicate_and_pattern_typos():
    g = parse(MATMUL_ADD)
    rank3 = rule(
        "r3",
        op.matmul(Var("x", where=lambda v: v.type.rank == 3, doc="rank 3"), Var("w")),
        lambda m, rw: None,
    )
    e = explain(g, rank3)[0]
    assert "fails rank 3" in e.reason
    with pytest.raises(UnknownOpError):
        op.matmull(Var("x"), Var("y"))
    with pytest.raises(ValueError, match="unknown attribute"):
        op.permute(Var("x"), perms=(0, 1))
    with pytest.raises(TypeError, match="must be patterns"):
        op.relu("x")


def test_driver_reaches_fixpoint_and_respects_budgets():
    text = """graph main(%x: f32[4]) {
  %a: f32[4] = neg(%x)
  %b: f32[4] = neg(%a)
  %c: f32[4] = neg(%b)
  %d: f32[4] = neg(%c)
  %e: f32[4] = neg(%d)
  return %e
}"""
    r = rule("neg-neg", op.neg(op.neg(Var("x"))), lambda m, rw: m["x"], allow_shared=True)
    g = graphopt.parse(text)
    assert apply_rules(g, [r]).rewrites == 2
    assert [n.op for n in g.nodes] == ["neg"]
    g = graphopt.parse(text)
    assert apply_rules(g, [r], max_rewrites=1).rewrites == 1
    g = graphopt.parse(text)
    with track_rewrites(max_rewrites=1) as log:
        apply_rules(g, [r])
    assert log.count == 1 and log.events[0].rule == "neg-neg"


def test_rewrite_with_wrong_type_is_an_error():
    g = parse(MATMUL_ADD)
    bad = rule("bad", op.matmul(Var("x"), Var("w")), lambda m, rw: m["x"])
    with pytest.raises(RewriteError, match="identical type"):
        apply_rules(g, [bad])


def test_declined_rewrite_leaves_graph_unchanged():
    g = parse(MATMUL_ADD)
    before = str(g)

    def build_then_decline(m, rw):
        rw.op.relu(m["x"])

    r = rule("decline", op.matmul(Var("x"), Var("w")), build_then_decline)
    assert apply_rules(g, [r]).rewrites == 0
    assert str(g) == before


def test_ping_pong_rules_are_detected():
    text = """graph main(%x: f32[4]) {
  %a: f32[4] = relu(%x)
  return %a
}"""
    g = graphopt.parse(text)
    to_abs = rule("relu-to-abs", op.relu(Var("x")), lambda m, rw: rw.op.abs(m["x"]))
    to_relu = rule("abs-to-relu", op.abs(Var("x")), lambda m, rw: rw.op.relu(m["x"]))
    with pytest.raises(RewriteError, match="fixpoint"):
        apply_rules(g, [to_abs, to_relu], max_sweeps=3)


def test_tracer_reports_op_mismatch_position_check_reason_and_missing_root():
    text = """graph main(%x: f32[2, 4], %h: f32[2, 3]) {
  const %w: f32[3, 4]
  const %b: f32[3] = [0.5, -1.0, 2.0]
  const %b2: f32[2, 3]
  %lin: f32[2, 3] = linear(%x, %w, None)
  %y: f32[2, 3] = add(%lin, %b)
  %wt: f32[4, 3] = permute(%w) {perm=[1, 0]}
  %mm: f32[2, 3] = matmul(%x, %wt)
  %z: f32[2, 3] = add(%mm, %b)
  const %w3: f32[4, 3]
  %mm2: f32[2, 3] = matmul(%x, %w3)
  %q: f32[2, 3] = add(%mm2, %b2)
  return %y, %z, %q
}"""
    rng = np.random.default_rng(0)
    g = graphopt.parse(
        text,
        {
            "w": rng.standard_normal((3, 4)).astype(np.float32),
            "b2": np.zeros((2, 3), np.float32),
            "w3": np.zeros((4, 3), np.float32),
        },
    )
    by_node = {e.node.split(" ")[0]: e for e in explain(g, MatMulAddToLinear(), limit=None)}
    assert by_node["%y"].matched == 1 and by_node["%y"].where == "add.a"
    assert "expected op 'matmul', found 'linear' (%lin)" in by_node["%y"].reason
    assert by_node["%z"].where == "add.a -> matmul.b"
    assert "'w' must be a constant, found %wt (output of permute)" in by_node["%z"].reason
    assert by_node["%q"].where == "check()" and "rank 2, not 1" in by_node["%q"].reason
    text_report = explain_text(g, MatMulAddToLinear())
    assert text_report.startswith("rule matmul-add-to-linear: add(matmul(x, Const(w)), Const(b))")
    assert "matched 2/2 pattern ops, failed at check()" in text_report
    missing = explain(graphopt.parse("graph m(%x: f32[2]) {\n  return %x\n}"), MatMulAddToLinear())
    assert len(missing) == 1 and "no node in graph m has op 'add'" in str(missing[0])


def test_tracer_reports_firing_candidates_first():
    g = parse(MATMUL_ADD)
    first = explain(g, MatMulAddToLinear())[0]
    assert first.fired and "matches (would fire)" in str(first)
