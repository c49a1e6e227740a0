"""Op traits and weight metadata: the registry says what an op is, and code above it asks that.

Three checks: the metadata of the main weight-carrying ops; every registered op whose schema
looks weight-carrying declares a ``WeightSpec`` (so a new op without one fails here); and the
op-name checks left in ``graphopt/`` and ``passes/`` stay few and documented.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from graphopt.ops.registry import (
    EPILOGUE,
    FUSED,
    IN_OUT,
    IN_OUT_SPATIAL,
    NORMALIZATION,
    OUT_IN,
    OUT_IN_SPATIAL,
    PRUNABLE,
    QDQ_TRANSPARENT,
    QUANTIZABLE,
    SHAPE_ONLY,
    TABLE,
    WeightSpec,
    all_ops,
    get_op,
    ops_with,
)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------- metadata of the main ops
@pytest.mark.parametrize(
    "op, slot, layout, channel_axis, bias, residual",
    [
        ("linear", 1, OUT_IN, 0, 2, None),
        ("fused_linear", 1, OUT_IN, 0, 2, 3),
        ("matmul", 1, IN_OUT, -1, None, None),
        ("fused_matmul", 1, IN_OUT, -1, 2, 3),
        ("conv", 1, OUT_IN_SPATIAL, 0, 2, None),
        ("fused_conv", 1, OUT_IN_SPATIAL, 0, 2, 3),
        ("conv_transpose", 1, IN_OUT_SPATIAL, 1, 2, None),
        ("qconv", 3, OUT_IN_SPATIAL, 0, 5, None),
        ("qconv_dynamic", 1, OUT_IN_SPATIAL, 0, 3, 4),
        ("qlinear_dynamic", 1, OUT_IN, 0, 3, 4),
        ("embedding", 0, TABLE, 0, None, None),
    ],
)
def test_weight_spec_of_main_ops(op, slot, layout, channel_axis, bias, residual):
    spec = get_op(op).weights
    assert spec is not None, f"{op} declares no weights"
    assert (spec.slot, spec.layout, spec.channel_axis, spec.bias, spec.residual) == (
        slot, layout, channel_axis, bias, residual)
    # the slots name real operands
    names = get_op(op).inputs
    assert names[spec.slot].rstrip("?") in ("weight", "b", "w_q")
    if spec.bias is not None:
        assert names[spec.bias].rstrip("?") in ("bias", "b")
    if spec.residual is not None:
        assert names[spec.residual].rstrip("?") == "residual"


def test_fused_matmul_trans_b_flips_the_layout():
    spec = get_op("fused_matmul").weights
    assert spec.layout_for({"trans_b": True}) == OUT_IN
    assert spec.layout_for({"trans_b": False}) == IN_OUT
    assert get_op("linear").weights.layout_for({}) == OUT_IN


def test_traits_of_main_ops():
    assert set(ops_with(QUANTIZABLE)) == {"linear", "fused_linear", "matmul", "conv",
                                           "fused_conv", "embedding"}
    assert set(ops_with(PRUNABLE)) == {"linear", "fused_linear", "matmul", "fused_matmul",
                                        "conv", "fused_conv", "conv_transpose"}
    assert set(ops_with(QDQ_TRANSPARENT)) == {"reshape", "permute", "squeeze", "unsqueeze",
                                               "max_pool", "pad"}
    assert {"batch_norm", "layer_norm", "group_norm", "rms_norm"} <= set(ops_with(NORMALIZATION))
    assert get_op("batch_norm").statistics == (1, 2)
    # every fused op carries an epilogue; every op with epilogue attrs says so
    for name, d in all_ops().items():
        if FUSED in d.traits:
            assert EPILOGUE in d.traits, name
        assert (EPILOGUE in d.traits) == ("activation" in d.attrs), name
    # data movement is free in the cost model
    for name in ops_with(SHAPE_ONLY):
        assert get_op(name).flops_per_element == 0, name
    assert get_op("layer_norm").flops_per_element == 8
    assert get_op("relu").flops_per_element == 1


def test_activation_epilogues():
    assert get_op("relu").epilogue({}) == ("relu", ())
    assert get_op("clamp").epilogue({"min": 0, "max": 6}) == ("relu6", ())
    assert get_op("clamp").epilogue({"min": None, "max": None}) == "clamp without bounds"
    assert get_op("gelu").epilogue({"approximate": "tanh"}) == ("gelu_tanh", ())
    assert get_op("leaky_relu").epilogue({"negative_slope": 0.2}) == ("leaky_relu", (0.2,))
    assert get_op("exp").epilogue is None


def test_qdq_transparent_ops_follow_the_trait():
    from graphopt.ops.quant import QDQ_TRANSPARENT_OPS

    assert QDQ_TRANSPARENT_OPS == ops_with(QDQ_TRANSPARENT)


# ----------------------------------------------------- every weight-like op declares weights
# Operand names that hold a learned weight matrix / kernel.
_WEIGHT_NAMES = {"weight", "w", "w_q"}
# Ops with such an operand that is not a layer weight (the trait that exempts norms is
# NORMALIZATION: their weight is a per-channel affine scale).
_NOT_LAYER_WEIGHTS = {"nll_loss": "per-class loss weights"}


def test_weight_like_ops_declare_weights():
    missing = []
    for name, d in all_ops().items():
        if "." in name:  # ops other tests register (e.g. "test.norm"), not the op library
            continue
        operands = {n.rstrip("?*") for n in d.inputs}
        if not operands & _WEIGHT_NAMES or NORMALIZATION in d.traits:
            continue
        if name in _NOT_LAYER_WEIGHTS:
            continue
        if not isinstance(d.weights, WeightSpec):
            missing.append(name)
    assert not missing, (f"ops with a weight operand but no weights=WeightSpec(...) in their "
                         f"register_op: {missing}")


def test_declared_weight_specs_are_consistent():
    for name, d in all_ops().items():
        spec = d.weights
        if spec is None:
            continue
        for slot in (spec.slot, spec.bias, spec.residual, spec.lhs_slot):
            assert slot is None or slot < len(d.inputs), name
        if spec.transpose_attr is not None:
            assert spec.transpose_attr in d.attrs, name
        if QUANTIZABLE in d.traits or PRUNABLE in d.traits:
            assert d.weights is not None, name


# ------------------------------------------------------------- op-name checks stay few
NAME_CHECK = re.compile(
    r"\.op(_name)? (not )?in \(|\.op(_name)? (==|!=) \"|\.op(_name)? (not )?in [A-Z_]+"
    r"|\.op(_name)? (not )?in \{")
# torch.fx's node kinds (``torch.fx.Node.op``: what a node does, not which operator it calls).
# A check comparing only against these is about an fx graph, not an IR op, so it is not counted;
# none of them may name a registered IR op (test below), so the exclusion cannot hide one.
FX_NODE_KINDS = frozenset({"placeholder", "get_attr", "call_function", "call_method",
                           "call_module", "output", "root"})
MAX_OP_NAME_CHECKS = 5


def _is_fx_node_kind_check(line: str) -> bool:
    names = re.findall(r"\"([^\"]*)\"", line)
    return bool(names) and set(names) <= FX_NODE_KINDS


def _name_checks():
    found = []
    for top in ("graphopt", "passes"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            lines = path.read_text().splitlines()
            for i, line in enumerate(lines):
                if NAME_CHECK.search(line) and not _is_fx_node_kind_check(line):
                    found.append((rel, i, line, lines))
    return found


def test_fx_node_kinds_are_not_ir_ops():
    assert not FX_NODE_KINDS & set(all_ops())


def test_op_name_checks_are_few_and_documented():
    found = []
    for rel, i, line, lines in _name_checks():
        found.append(f"{rel}:{i + 1}: {line.strip()}")
        # each one says why a trait does not fit, in a comment just above
        above = "\n".join(lines[max(0, i - 3): i])
        assert "op-name check:" in above, (
            f"{rel}:{i + 1} checks an op name without an '# op-name check: why' comment")
    assert len(found) <= MAX_OP_NAME_CHECKS, (
        "ask the op's traits / OpDef.weights instead of its name (graphopt/ops/registry.py), or "
        "match one op's structure with a pattern (graphopt.rewrite.match_at / a rule):\n"
        + "\n".join(found))
