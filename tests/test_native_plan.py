"""The native plan's memory planning: liveness, best-fit placement, in-place reuse, views.

Every planned arena is checked with an interval test: two buffers whose lifetimes (first to
last step touching them) overlap must not share a byte (graphopt.native.check_plan).
"""

from __future__ import annotations

import random

import pytest
import torch
from native_util import Const, assert_same, check_graph, op_graph, randn

import graphopt
from graphopt import zoo
from graphopt.native import Lifetime, check_plan, plan_memory
from graphopt.native.refs import SPACE_ARENA

KIB = 1024


# ------------------------------------------------------------------------------ the planner
def test_docstring_example():
    bufs = [Lifetime(0, 4 * KIB, 0, 2), Lifetime(1, 4 * KIB, 1, 3), Lifetime(2, 8 * KIB, 3, 5),
            Lifetime(3, 2 * KIB, 4, 5)]
    plan = plan_memory(bufs)
    check_plan(bufs, plan)
    assert plan.offsets == {2: 0, 0: 0, 1: 8 * KIB, 3: 8 * KIB}
    assert plan.peak_bytes == 12 * KIB
    assert plan.total_bytes == 18 * KIB


def test_alignment_and_disjoint_reuse():
    bufs = [Lifetime(i, 100 + i, i, i) for i in range(5)]  # never live together
    plan = plan_memory(bufs)
    check_plan(bufs, plan)
    assert plan.peak_bytes == 128  # one aligned slot serves all
    assert all(off % 64 == 0 for off in plan.offsets.values())


def test_all_live_together_is_a_stack():
    bufs = [Lifetime(i, 64 * (i + 1), 0, 9) for i in range(4)]
    plan = plan_memory(bufs)
    check_plan(bufs, plan)
    assert plan.peak_bytes == plan.total_bytes == 64 * 10


@pytest.mark.parametrize("seed", range(20))
def test_random_intervals(seed):
    rng = random.Random(seed)
    bufs = []
    for i in range(60):
        first = rng.randrange(50)
        bufs.append(Lifetime(i, rng.choice([1, 63, 64, 100, 4096, 5000]) * rng.randrange(1, 9),
                             first, first + rng.randrange(10)))
    plan = plan_memory(bufs)
    check_plan(bufs, plan)
    assert plan.peak_bytes <= plan.total_bytes
    # Lower bound: the bytes live at the busiest step.
    busiest = max(sum(-(-b.size // 64) * 64 for b in bufs if b.first <= s <= b.last)
                  for s in range(60))
    assert plan.peak_bytes >= busiest


def test_check_plan_catches_overlap():
    bufs = [Lifetime(0, 64, 0, 3), Lifetime(1, 64, 2, 4)]
    plan = plan_memory(bufs)
    plan.offsets[1] = plan.offsets[0]
    with pytest.raises(AssertionError, match="overlap"):
        check_plan(bufs, plan)


# --------------------------------------------------------------------------- compiled plans
class _Chain(torch.nn.Module):
    """x -> linear -> relu -> (+1) -> gelu -> linear(+residual) -> sigmoid, with a reshape."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(32, 32)
        self.b = torch.nn.Linear(32, 32)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.nn.functional.gelu(h + 1.0)
        y = self.b(h) + h
        return torch.sigmoid(y).reshape(4, 2, 32)


def _arena_buffers(plan):
    return [b for b in plan.buffers if b.space == SPACE_ARENA and b.first is not None]


def test_chain_reuses_buffers_in_place():
    x = randn(8, 32)
    g = graphopt.trace(_Chain().eval(), (x,))  # unoptimized: separate relu/add/gelu nodes
    fn = check_graph(g, [x])
    plan = fn.plan
    check_plan(plan.lifetimes, plan.memory)
    inplace = [s for s in plan.steps
               if s.operands and s.operands[0].meta.get("inplace_of") is not None]
    kinds = {s.kernel for s in inplace}
    assert {"unary", "binary"} <= kinds, [(s.kernel, s.name) for s in plan.steps]
    # The activations of 8x32 floats (1 KiB each) fit in at most two slots.
    assert plan.peak_bytes <= 2 * 1024
    assert plan.peak_bytes <= plan.memory.total_bytes
    # reshape of the result is an alias: no copy step, the output is the sigmoid's buffer.
    assert plan.steps[-1].kernel == "unary"


def test_no_in_place_over_a_value_read_later():
    class Twice(torch.nn.Module):
        def forward(self, x):
            h = x * 2.0
            return torch.relu(h) + h  # h is read after relu: relu must not overwrite it

    x = randn(16, 8)
    g = graphopt.trace(Twice(), (x,))
    fn = check_graph(g, [x])
    relu = next(s for s in fn.plan.steps if s.kernel == "unary")
    assert relu.operands[0].buffer is not relu.operands[1].buffer


def test_graph_inputs_and_outputs_never_overwritten():
    class Out(torch.nn.Module):
        def forward(self, x):
            h = x + 1.0
            return h, torch.relu(h)  # h is an output: relu must not reuse its buffer

    x = randn(5, 7)
    x_before = x.clone()
    g = graphopt.trace(Out(), (x,))
    fn = graphopt.compile(g, backend="native")
    h, r = fn(x)
    assert torch.equal(x, x_before)
    assert_same((h, r), (x + 1.0, torch.relu(x + 1.0)))


def test_residual_accumulates_in_place():
    class Res(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(24, 24)

        def forward(self, x):
            r = torch.tanh(x)
            return torch.relu(self.lin(x) + r)

    x = randn(10, 24)
    g = graphopt.optimize(graphopt.trace(Res().eval(), (x,)), "default")
    assert "fused_linear" in g.op_histogram()
    fn = check_graph(g, [x])
    gemm = next(s for s in fn.plan.steps if s.kernel == "gemm")
    assert gemm.ints[-2] == 1, "residual should be accumulated in place"  # [-1]: bf16
    assert gemm.operands[0].buffer is gemm.operands[4].buffer


@pytest.mark.parametrize("rows", [1, 10])  # the GEMV (batch 1) and the GEMM
def test_a_residual_that_is_also_the_input_is_not_overwritten_in_place(rows):
    """relu(W x + x): the residual dies at the fused linear but is also its input; writing the
    product into its buffer would corrupt what the product still reads (a bug found by the
    codebook tests: fused_linear with residual == input, after a GELU)."""
    class SelfResidual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = torch.nn.Linear(16, 48)
            self.lin = torch.nn.Linear(48, 48)

        def forward(self, x):
            h = torch.nn.functional.gelu(self.first(x))
            return torch.relu(self.lin(h) + h)

    x = randn(rows, 16)
    g = graphopt.optimize(graphopt.trace(SelfResidual().eval(), (x,)), "default")
    fused = [n for n in g.nodes if n.op == "fused_linear" and n.inputs[3] is n.inputs[0]]
    assert fused, "the residual should be fused with the product of the same input"
    fn = check_graph(g, [x])
    gemm = next(s for s in fn.plan.steps if s.kernel == "gemm" and s.operands[4] is not None)
    assert gemm.operands[0].buffer is not gemm.operands[1].buffer


@pytest.mark.parametrize("name,options", [("mlp", {}), ("convzoo", {}), ("tensorops", {}),
                                          ("bert", {"layers": 2, "seq": 32})])
def test_model_plans_are_overlap_free(name, options):
    model, args = zoo.get(name, **options)
    g = graphopt.optimize(graphopt.trace(model, args), "default")
    plan = graphopt.compile(g, backend="native").plan
    check_plan(plan.lifetimes, plan.memory)
    sizes = sum(-(-b.nbytes // 64) * 64 for b in _arena_buffers(plan))
    assert plan.peak_bytes <= sizes
    # Every step's arena operands fit in the arena.
    for step in plan.steps:
        for ref in step.operands:
            if ref is not None and ref.buffer.space == SPACE_ARENA:
                assert ref.buffer.offset + ref.buffer.nbytes <= plan.peak_bytes


def test_weights_are_not_copied_into_the_arena():
    g = graphopt.trace(torch.nn.Linear(64, 64).eval(), (randn(1, 64),))
    plan = graphopt.compile(g, backend="native").plan
    assert plan.peak_bytes == 0 or plan.peak_bytes <= 64 * 4
    assert len(plan.steps) == 1


def test_constant_subgraphs_fold_at_plan_time():
    """A computation on constants only (e.g. BERT's mask expansion) is not a runtime step."""
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("m", torch.arange(6.0).reshape(2, 3))

        def forward(self, x):
            return x + torch.exp(self.m).sum(0)

    x = randn(4, 3)
    g = graphopt.trace(M(), (x,))
    fn = check_graph(g, [x])
    assert [s.kernel for s in fn.plan.steps] == ["binary"]


def test_const_only_graph_output_is_copied():
    g, feeds = op_graph("add", [randn(3), Const(torch.ones(3))])
    fn = graphopt.compile(g, backend="native")
    assert_same(fn(*feeds), graphopt.run(g, *feeds))
