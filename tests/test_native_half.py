"""float16 / bfloat16 nodes run natively in float32 (graphopt/native/widen.py): the conversions
match torch bit for bit, and whole half-precision graphs agree with the reference."""

from __future__ import annotations

import collections

import pytest
import torch
from native_util import check_graph, op_graph

import graphopt

HALVES = [torch.float16, torch.bfloat16]


def _cast_graph(src: torch.dtype, dst: torch.dtype):
    return op_graph("cast", [torch.zeros(4, dtype=src)], {"dtype": graphopt.DType.from_torch(dst)})


@pytest.mark.parametrize("half", HALVES)
def test_every_16_bit_pattern_widens_exactly(half):
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    x = bits.view(half)
    g, _ = op_graph("cast", [x], {"dtype": graphopt.DType.float32})
    fn = graphopt.compile(g, backend="native", fallback="error")
    got, want = fn(x), x.float()
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    ok = ~torch.isnan(want)
    assert torch.equal(got[ok].view(torch.int32), want[ok].view(torch.int32))
    assert [s.kernel for s in fn.plan.steps] == ["cast_half"]


@pytest.mark.parametrize("half", HALVES)
def test_narrowing_rounds_like_torch(half):
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([
        torch.randn(20000, generator=gen) * torch.logspace(-9, 6, 20000),
        torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 65504.0, 65519.99, 65520.0,
                      2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -14 * (1 - 2.0 ** -11),
                      1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 3.4e38, -1e-45]),
        # float32 values halfway between two neighbours of the 16-bit type: ties to even
        (torch.arange(1, 2000, dtype=torch.float32) * 2 + 1) * 2.0 ** -11,
    ])
    g, _ = op_graph("cast", [x], {"dtype": graphopt.DType.from_torch(half)})
    fn = graphopt.compile(g, backend="native", fallback="error")
    got, want = fn(x), x.to(half)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    nan = fn(torch.tensor([float("nan")] * 4 + [1.0] * (x.numel() - 4)))
    assert torch.isnan(nan[:4]).all()


class _HalfBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(16)
        self.up = torch.nn.Linear(16, 32)
        self.down = torch.nn.Linear(32, 16)

    def forward(self, x, mask):
        h = self.down(torch.nn.functional.gelu(self.up(self.norm(x))))
        scores = (h @ h.transpose(-1, -2)).masked_fill(mask, -1e4)
        return torch.softmax(scores, -1) @ h + x


@pytest.mark.parametrize("half", HALVES)
def test_half_precision_block_runs_natively(half):
    torch.manual_seed(0)
    model = _HalfBlock().to(half).eval()
    x = torch.randn(2, 5, 16).to(half)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    g = graphopt.trace(model, (x, mask))
    tol = 2e-2 if half == torch.bfloat16 else 3e-3
    fn = check_graph(g, [x, mask], rtol=tol, atol=tol)
    kernels = collections.Counter(s.kernel for s in fn.plan.steps)
    assert kernels["gemm"] >= 4 and kernels["cast_half"] >= 2 and not fn.plan.fallback_nodes
    with torch.no_grad():
        eager = model(x, mask)
    torch.testing.assert_close(fn(x, mask), eager, rtol=tol * 2, atol=tol * 2)
