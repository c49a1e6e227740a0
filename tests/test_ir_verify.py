"""IR verifier: each kind of graph corruption is caught with a message naming it, and every
problem is reported (capped). Split from tests/test_ir_core.py, whose private ``test.*`` ops and
``sample_graph`` these tests use."""

from __future__ import annotations

import numpy as np
import pytest
from test_ir_core import F32, _corrupt_other_graph, _node, sample_graph

from graphopt.errors import VerificationError
from graphopt.ir.attrs import Attrs
from graphopt.ir.types import TensorType


# ---------------------------------------------------------------------------------- verify
def _corrupt_order(g):
    g.move_before(_node(g, "out"), _node(g, "norm"))


def _corrupt_stale_use(g):
    g.inputs[0].uses.append((_node(g, "cat"), 1))


def _corrupt_missing_use(g):
    g.constants["big"].uses.clear()


def _corrupt_type(g):
    _node(g, "out").output.type = TensorType((1, 9), F32)


def _corrupt_const_dtype(g):
    g.constants["idx"].data = g.constants["idx"].data.astype(np.int32)


def _corrupt_const_shape(g):
    g.constants["idx"].data = np.zeros(4, np.int64)


def _corrupt_unknown_op(g):
    _node(g, "out").op = "test.gone"


def _corrupt_attrs(g):
    _node(g, "norm").attrs = Attrs()


def _corrupt_arity(g):
    node = _node(g, "out")
    node.set_input(1, None)
    node.inputs.pop()


def _corrupt_erased_operand(g):
    dead = g.create_node("test.relu", [g.inputs[0]], name="dead")
    g.erase_node(dead)
    _node(g, "out").set_input(1, dead.output)


def _corrupt_duplicate_name(g):
    g.inputs[1].name = "x"


def _corrupt_unreserved_name(g):
    _node(g, "cat").output.name = "renamed"


def _corrupt_unprintable_name(g):
    g._names.add("a b")
    _node(g, "cat").output.name = "a b"


def _corrupt_index(g):
    _node(g, "split").outputs[1].index = 0


def _corrupt_graph_output(g):
    g.outputs.append(sample_graph().outputs[0])


def _corrupt_output_count(g):
    _node(g, "split").outputs.pop()


CORRUPTIONS = [
    (_corrupt_order, "operand 0 %split is used before its definition"),
    (_corrupt_stale_use, "%x: stale use by %cat = test.concat slot 1: that slot holds %big"),
    (_corrupt_missing_use, "operand 1 %big is missing from its use list"),
    (_corrupt_type, "%out has stored type f32[1, 9], op infers f32[1, 8]"),
    (_corrupt_const_dtype, "data dtype int32 != numpy storage int64"),
    (_corrupt_const_shape, "data shape [4] != type shape i64[3]"),
    (_corrupt_unknown_op, "%out = test.gone: unknown op 'test.gone'"),
    (_corrupt_attrs, "%norm = test.norm: attrs do not match the schema (missing ['eps'])"),
    (_corrupt_arity, "%out = test.add: op 'test.add' takes operands (a, b), got 1"),
    (_corrupt_other_graph, "operand 1 %x belongs to another graph"),
    (_corrupt_erased_operand, "operand 1 %dead is produced by erased node"),
    (_corrupt_duplicate_name, "value name %x is defined 2 times"),
    (_corrupt_unreserved_name, "name %renamed is not reserved"),
    (_corrupt_unprintable_name, "value name 'a b' is not made of letters"),
    (_corrupt_index, "output 1 %split.1 has producer %split = test.split2 and index 0"),
    (_corrupt_graph_output, "output 3 (%cat) is not defined in the graph"),
    (_corrupt_output_count, "%split = test.split2: has 1 output(s), op infers 2"),
]


@pytest.mark.parametrize("corrupt, fragment", CORRUPTIONS, ids=[c.__name__ for c, _ in CORRUPTIONS])
def test_verify_catches(corrupt, fragment):
    g = sample_graph()
    g.verify()
    corrupt(g)
    with pytest.raises(VerificationError) as info:
        g.verify()
    assert fragment in str(info.value)


def test_verify_reports_every_problem_capped():
    g = sample_graph()
    _corrupt_type(g)
    _corrupt_const_dtype(g)
    with pytest.raises(VerificationError, match=r"\(3 problem\(s\)\)") as info:
        g.verify()
    assert "data dtype" in str(info.value) and "%cat has stored type f32[5, 8], op infers" in str(
        info.value
    )  # downstream nodes are re-inferred from the stored (wrong) type
    for _ in range(30):
        g.inputs[0].uses.append((_node(g, "cat"), 1))
    with pytest.raises(VerificationError, match=r"\.\.\. and 13 more"):
        g.verify()
