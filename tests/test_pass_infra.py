"""Pass infrastructure: registry, pipeline text, PassManager, instruments, optimize, bisect."""

from __future__ import annotations

import io
import os
from typing import Literal

import numpy as np
import pytest
import torch

import graphopt
from graphopt.errors import (
    NumericDriftError,
    PassError,
    PassOptionError,
    PipelineError,
    UnknownPassError,
)
from graphopt.rewrite import Const, RewritePass, Var, op, rule
from graphopt.transform import (
    PIPELINES,
    DumpIRInstrument,
    Fixpoint,
    NodeCountInstrument,
    NumericCheckInstrument,
    PassManager,
    PrintIRInstrument,
    Repeat,
    TimingInstrument,
    all_passes,
    bisect,
    create_pass,
    get_pass_info,
    parse_pipeline,
    register_pass,
    verify_by_default,
)

SMALL = """graph main(%x: f32[2, 3]) {
  const %one: f32[] = 1.0
  const %two: f32[] = 2.0
  const %two_again: f32[] = 2.0
  %a: f32[2, 3] = mul(%x, %one)
  %b: f32[2, 3] = mul(%a, %two)
  %c: f32[2, 3] = mul(%a, %two_again)
  %dead: f32[2, 3] = exp(%x)
  %s: f32[2, 3] = add(%b, %c)
  return %s
}"""


def x_input():
    return torch.linspace(-2, 2, 6).reshape(2, 3)


# ------------------------------------------------------------------------- test-only passes
@register_pass("test-options", replace=True)
class OptionsPass:
    """A pass with one option of every supported type (does nothing)."""

    threshold: float = 0.5
    steps: int = 3
    enabled: bool = True
    mode: str = "fast"
    perm: tuple[int, ...] = (0, 1)
    limit: int | None = None
    kind: Literal["a", "b"] = "a"

    def run(self, graph):
        return False


@register_pass("test-break-verify", replace=True)
def break_verify(graph):
    """Corrupts the graph: gives a node a wrong output type (caught by the verifier)."""
    node = next(n for n in graph.nodes if n.op == "add")
    node.outputs[0].type = node.outputs[0].type.with_shape((7, 7))
    return True


@register_pass("test-crash", replace=True)
def crash(graph):
    """Raises inside the pass."""
    raise RuntimeError("boom")


@register_pass("test-liar", replace=True)
def liar(graph):
    """Changes the graph but returns False."""
    node = next(n for n in graph.nodes if n.op == "exp")
    with graph.inserting_before(node):
        graph.create_node("relu", [graph.inputs[0]])
    return False


@register_pass("test-drift", replace=True)
def drift(graph):
    """Scales the graph output by 1.01 (a numerically wrong pass)."""
    out = graph.outputs[0]
    c = graph.add_constant(np.array(1.01, np.float32), name="oops")
    node = graph.create_node("mul", [out, c])
    graph.outputs[0] = node.output
    return True


def _scale_some(m, rw):
    # Wrong only for the multiplication by the constant named "two_again".
    c = m["c"]
    if c.name != "two_again":
        return None
    bad = rw.constant(np.asarray(m.const("c") * 1.01, np.float32), name="bad")
    return rw.op.mul(m["x"], bad)


@register_pass("test-bad-rule", replace=True)
class BadRulePass(RewritePass):
    """Rewrites x*c into x*(c*1.01), but only for one constant (a subtly wrong rule)."""

    RULES = (
        rule("harmless", op.exp(Var("x")), lambda m, rw: None),
        rule(
            "scale-mul", op.mul(Var("x"), Const("c", where=lambda v: v.type.rank == 0)), _scale_some
        ),
    )


# ----------------------------------------------------------------------------- registry
def test_registry_lists_builtin_passes_with_docs():
    passes = all_passes()
    for name in ("canonicalize", "cse", "dce", "fold-constants"):
        assert name in passes and passes[name].summary
    assert get_pass_info("fold_constants").name == "fold-constants"  # snake case accepted


def test_register_pass_requires_docstring_and_unique_name():
    with pytest.raises(ValueError, match="docstring"):
        register_pass("test-nodoc")(lambda g: False)

    with pytest.raises(ValueError, match="already registered"):

        @register_pass("dce")
        def other_dce(graph):
            """Not the real dce."""
            return False


def test_unknown_pass_lists_known_passes_and_suggests():
    with pytest.raises(UnknownPassError) as info:
        parse_pipeline("canonicalize,csee")
    text = str(info.value)
    assert "unknown pass 'csee'" in text and "Did you mean 'cse'" in text
    assert "Registered passes:" in text and "fold-constants" in text
    assert "named pipelines: cleanup, default, fusions" in text


# ----------------------------------------------------------------------------- pipelines
def test_pipeline_options_are_typed():
    pipe = parse_pipeline(
        'test-options{threshold=0.25, steps=7, enabled=false, mode="slow, careful", '
        "perm=[2,0,1], limit=none, kind=b}"
    )
    p = pipe.steps[0].pass_
    assert (p.threshold, p.steps, p.enabled, p.mode, p.perm, p.limit, p.kind) == (
        0.25,
        7,
        False,
        "slow, careful",
        (2, 0, 1),
        None,
        "b",
    )
    assert parse_pipeline("test-options{limit=5}").steps[0].pass_.limit == 5
    assert str(parse_pipeline("test-options{steps=4}, dce")) == "test-options{steps=4},dce"


@pytest.mark.parametrize(
    "text, message",
    [
        ("test-options{steps=2.5}", "option 'steps' of pass 'test-options' expects int, got '2.5'"),
        ("test-options{enabled=maybe}", "option 'enabled' of pass 'test-options' expects bool"),
        ("test-options{perm=[a,b]}", "expects tuple[int, ...]"),
        ("test-options{kind=c}", "expects 'a' | 'b'"),
        (
            "test-options{speed=1}",
            "pass 'test-options' has no option 'speed' (options: threshold: float",
        ),
        ("dce{x=1}", "pass 'dce' takes no options"),
    ],
)
def test_bad_options_name_option_and_expected_type(text, message):
    with pytest.raises(PassOptionError) as info:
        parse_pipeline(text)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("dce,,cse", "expected a pass name, found ','"),
        ("fixpoint(dce", "expected ',' or ')', found end of text"),
        ("dce cse", "expected ',' or end of text"),
        ("fixpoint{max=0}(dce)", "must be >= 1"),
        ("repeat(dce)", "'repeat' needs a count"),
        ("fixpoint{n=2}(dce)", "takes only the option 'max'"),
        ("test-options{steps=}", "empty option value"),
    ],
)
def test_pipeline_syntax_errors_point_at_the_problem(text, message):
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text)
    assert message in str(info.value) and "^" in str(info.value)


def test_nested_repetition_and_named_pipelines_round_trip():
    pipe = parse_pipeline("canonicalize, fixpoint{max=4}(cse, repeat{n=2}(dce)), fold-constants")
    assert isinstance(pipe.steps[1], Fixpoint) and pipe.steps[1].max_iterations == 4
    assert isinstance(pipe.steps[1].body.steps[1], Repeat)
    assert str(pipe) == "canonicalize,fixpoint{max=4}(cse,repeat{n=2}(dce)),fold-constants"
    assert str(parse_pipeline(str(pipe))) == str(pipe)
    assert str(parse_pipeline("cleanup")) == PIPELINES["cleanup"]
    assert str(parse_pipeline("")) == ""
    default = [type(p).__name__ for p in parse_pipeline("default").passes()]
    assert default  # every pass of the default pipeline is registered


def test_pipeline_from_python_list():
    def tag(graph):
        return False

    pm = PassManager(["canonicalize,cse", create_pass("fold-constants", max_growth="3"), tag])
    assert str(pm.pipeline) == "canonicalize,cse,fold-constants{max_growth=3.0},tag"


def test_fixpoint_reruns_until_no_change_and_respects_max():
    calls = []

    def countdown(graph):
        calls.append(1)
        return len(calls) < 3

    pm = PassManager([], verify=False)
    pm.pipeline = parse_pipeline("fixpoint(dce)")
    pm.pipeline.steps[0].body.steps[0].pass_ = _function_pass("countdown", countdown)
    report = pm.run(graphopt.parse(SMALL))
    assert len(calls) == 3 and [r.path for r in report.records] == [
        "fixpoint#1",
        "fixpoint#2",
        "fixpoint#3",
    ]
    calls.clear()
    pm.pipeline.steps[0].max_iterations = 2
    pm.run(graphopt.parse(SMALL))
    assert len(calls) == 2


def _function_pass(name, fn):
    from graphopt.transform import FunctionPass

    return FunctionPass(name, fn)


# ------------------------------------------------------------------------ manager / errors
def test_verify_is_on_under_pytest_and_catches_a_broken_pass():
    assert verify_by_default()
    g = graphopt.parse(SMALL)
    with pytest.raises(PassError) as info:
        PassManager("dce,cse,test-break-verify,canonicalize").run(g)
    err = info.value
    assert err.pass_name == "test-break-verify" and err.passes_before == ["dce", "cse"]
    text = str(err)
    assert "pass 'test-break-verify'" in text and "passes run before it: dce, cse" in text
    assert "node: %s = add" in text and "VerificationError" in text


def test_verify_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("GRAPHOPT_VERIFY", "0")
    assert not verify_by_default()
    PassManager("test-break-verify").run(graphopt.parse(SMALL))  # not caught
    PassManager("test-break-verify", verify=False).run(graphopt.parse(SMALL))
    with pytest.raises(PassError):
        PassManager("test-break-verify", verify=True).run(graphopt.parse(SMALL))


def test_exception_in_pass_names_pass_and_history():
    with pytest.raises(PassError) as info:
        PassManager("canonicalize,test-crash").run(graphopt.parse(SMALL))
    assert "failed in pass 'test-crash'" in str(info.value)
    assert "passes run before it: canonicalize" in str(info.value)
    assert "RuntimeError: boom" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_verify_catches_pass_that_lies_about_changes():
    with pytest.raises(PassError, match="returned changed=False but modified the graph"):
        PassManager("test-liar").run(graphopt.parse(SMALL))


def test_invalid_input_graph_is_reported_before_any_pass():
    g = graphopt.parse(SMALL)
    next(iter(g.nodes)).outputs[0].type = g.inputs[0].type.with_shape((9,))
    with pytest.raises(graphopt.GraphoptError, match="before any pass ran"):
        PassManager("dce").run(g)


# ---------------------------------------------------------------------------- instruments
def test_node_count_timing_and_report():
    counts, timing = NodeCountInstrument(), TimingInstrument()
    g = graphopt.parse(SMALL)
    report = PassManager("canonicalize,cse,dce", [counts, timing]).run(g)
    assert counts.deltas == [
        ("canonicalize", 5, 4, {"mul": -1}),
        ("cse", 4, 3, {"mul": -1}),
        ("dce", 3, 2, {"exp": -1}),
    ]
    assert "cse: 4 -> 3 nodes (-1) [mul -1]" in str(counts)
    assert set(timing.timings) == {"canonicalize", "cse", "dce"}
    assert [r.changed for r in report.records] == [True, True, True]
    assert report.records[0].rewrites == {"mul-one": 1}
    assert report.records[1].rewrites == {"merge-constants": 1, "merge-nodes": 1}
    assert report.rewrites()["dead-node"] == 1
    table = str(report)
    assert "canonicalize" in table and "5 -> 4" in table and "mul-one x1" in table
    assert "total: 3 pass runs, nodes 5 -> 2" in table


def test_dump_and_print_ir(tmp_path):
    dump = DumpIRInstrument(tmp_path / "ir")
    stream = io.StringIO()
    PassManager("canonicalize,dce,dce", [dump, PrintIRInstrument(stream)]).run(
        graphopt.parse(SMALL)
    )
    names = sorted(os.listdir(tmp_path / "ir"))
    assert names == ["000_input.ir", "001_canonicalize.ir", "002_dce.ir", "003_dce.ir"]
    assert (tmp_path / "ir" / "000_input.ir").read_text().strip() == SMALL
    assert graphopt.parse((tmp_path / "ir" / "002_dce.ir").read_text()).op_histogram() == {
        "mul": 2,
        "add": 1,
    }
    printed = stream.getvalue()
    assert "// ----- IR after #1 canonicalize -----" in printed
    assert "#3 dce" not in printed  # unchanged passes are not printed


def test_numeric_check_catches_drift():
    g = graphopt.parse(SMALL)
    check = NumericCheckInstrument([x_input()], rtol=1e-4, atol=1e-5)
    PassManager("canonicalize,cse,dce", [check]).run(g)
    assert check.checks == 3
    with pytest.raises(PassError) as info:
        PassManager("canonicalize,test-drift,dce", [NumericCheckInstrument([x_input()])]).run(
            graphopt.parse(SMALL)
        )
    assert isinstance(info.value.__cause__, NumericDriftError)
    text = str(info.value)
    assert "NumericCheckInstrument.after_pass failed after pass 'test-drift'" in text
    assert "max abs error" in text and info.value.passes_before == ["canonicalize"]


# ------------------------------------------------------------------------------- optimize
def test_optimize_never_mutates_its_input_and_returns_report():
    g = graphopt.parse(SMALL)
    before = str(g)
    out, report = graphopt.optimize(g, "default", report=True)
    assert str(g) == before
    assert out is not g and out.op_histogram() == {"mul": 1, "add": 1}
    assert report.nodes_before == 5 and report.nodes_after == 2 and report.changed
    torch.testing.assert_close(graphopt.run(out, x_input()), graphopt.run(g, x_input()))


def test_optimize_option_overrides():
    g = graphopt.parse(SMALL)
    _, report = graphopt.optimize(
        g,
        "canonicalize,fold-constants",
        report=True,
        fold_constants={"max_growth": "8"},
        canonicalize={"signed_zeros": False},
    )
    assert report.records[1].options["max_growth"] == 8.0
    assert report.records[0].options == {"signed_zeros": False}
    with pytest.raises(PassOptionError, match="no option 'growth'"):
        graphopt.optimize(g, "fold-constants", fold_constants={"growth": 1})
    with pytest.raises(UnknownPassError):
        graphopt.optimize(g, "dce", not_a_pass={})


def test_optimize_real_models_stays_close_to_eager_with_verify(
    traced_bert_small, traced_gpt2_small, traced_tensorops, traced_convzoo, assert_matches_eager
):
    for traced in (traced_bert_small, traced_gpt2_small, traced_tensorops, traced_convzoo):
        before = str(traced.graph)
        out, report = graphopt.optimize(traced.graph, verify=True, report=True)
        assert str(traced.graph) == before
        assert report.nodes_after <= report.nodes_before
        assert_matches_eager(traced, out)


# --------------------------------------------------------------------------------- bisect
def test_bisect_finds_the_broken_pass():
    g = graphopt.parse(SMALL)
    result = bisect(g, "canonicalize,cse,test-drift,dce", [x_input()])
    assert result.found and result.pass_name == "test-drift" and result.pass_index == 3
    assert result.passes_before == ["canonicalize", "cse"]
    assert result.rewrite_index is None  # a function pass without individual rewrites
    assert result.max_error > 0.01
    assert "outputs drift after pass #3 'test-drift'" in str(result)


def test_bisect_finds_the_first_bad_rewrite_inside_a_rule_pass():
    g = graphopt.parse(SMALL)
    result = bisect(g, "canonicalize,test-bad-rule,dce", [x_input()])
    assert result.pass_name == "test-bad-rule"
    assert result.rewrite_index == 1 and result.rewrites_in_pass == 1
    assert result.rule == "scale-mul" and result.node == "%c = mul"
    assert "first bad rewrite: #1 of 1, rule 'scale-mul' at %c = mul" in str(result)


def test_bisect_binary_searches_among_many_rewrites():
    # Ten good rewrites (dce) before the bad one inside a single pass run.
    lines = [
        "graph main(%x: f32[4]) {",
        "  const %k: f32[] = 3.0",
        "  const %two_again: f32[] = 2.0",
    ]
    prev = "x"
    for i in range(10):
        lines.append(f"  %m{i}: f32[4] = mul(%{prev}, %k)")
        prev = f"m{i}"
    lines += ["  %bad: f32[4] = mul(%m9, %two_again)", "  return %bad", "}"]
    g = graphopt.parse("\n".join(lines))

    def scale_all_but_mark(m, rw):  # exact for %k (x*k -> x*k), wrong for two_again
        if m["c"].name != "two_again":
            return rw.op.mul(m["x"], m["c"])
        return _scale_some(m, rw)

    @register_pass("test-many-rewrites", replace=True)
    class ManyRewrites(RewritePass):
        """Rewrites every mul once (idempotence guarded by a name check); one is wrong."""

        RULES = (rule("rewrite-mul", op.mul(Var("x"), Const("c")), scale_all_but_mark),)

        def run(self, graph):
            done = set()
            from graphopt.rewrite.tracking import allow_rewrite

            changed = False
            for node in list(graph.nodes):
                if node.op != "mul" or node.name in done:
                    continue
                if not allow_rewrite("rewrite-mul", node):
                    return changed
                if node.inputs[1].name == "two_again":
                    bad = graph.add_constant(np.float32(2.02), name="bad")
                    node.set_input(1, bad)
                changed = True
            return changed

    result = bisect(g, "test-many-rewrites", [torch.ones(4)])
    assert result.rewrite_index == 11 and result.rewrites_in_pass == 11
    assert result.node == "%bad = mul"


def test_bisect_reports_no_drift():
    result = bisect(graphopt.parse(SMALL), "default", [x_input()])
    assert not result.found and "no drift" in str(result)
