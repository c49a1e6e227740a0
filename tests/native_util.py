"""Helpers for the native runtime tests: one-op (or few-op) graphs built with the IR API, run
by the native backend and compared with the reference interpreter (whose op implementations
are the torch functions themselves)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import graphopt
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph
from graphopt.ir.types import TensorType


class Const:
    """Marks an operand as a graph constant (a weight) instead of a graph input."""

    def __init__(self, data):
        self.data = torch.as_tensor(data)


def op_graph(op: str, args: Sequence[Any], attrs: dict | None = None) -> tuple[Graph, list]:
    """A graph computing ``op(*args){attrs}``; tensors become inputs, Const(...) constants."""
    g = Graph("test")
    values, feeds = [], []
    for i, a in enumerate(args):
        if a is None:
            values.append(None)
        elif isinstance(a, Const):
            values.append(g.add_constant(a.data.numpy(), f"c{i}"))
        else:
            t = torch.as_tensor(a)
            type_ = TensorType(tuple(t.shape), DType.from_torch(t.dtype))
            values.append(g.add_input(f"x{i}", type_))
            feeds.append(t)
    node = g.create_node(op, values, attrs)
    g.set_outputs(node.outputs)
    return g, feeds


def flat(x) -> list[torch.Tensor]:
    return list(x) if isinstance(x, (tuple, list)) else [x]


def assert_same(out, ref, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Floats: |out - ref| <= atol * max(1, max|ref|) + rtol * |ref| (NaNs must match);
    everything else exactly, dtypes and shapes included."""
    for o, r in zip(flat(out), flat(ref), strict=True):
        assert o.dtype == r.dtype, (o.dtype, r.dtype)
        assert o.shape == r.shape, (o.shape, r.shape)
        if r.dtype.is_floating_point:
            scale = max(1.0, float(r[torch.isfinite(r)].abs().max()) if r.numel() and
                        torch.isfinite(r).any() else 1.0)
            torch.testing.assert_close(o, r, rtol=rtol, atol=atol * scale, equal_nan=True)
        else:
            assert torch.equal(o, r), (o, r)


def check_graph(g: Graph, feeds: list, threads=(1, 2), rtol: float = 1e-4,
                atol: float = 1e-5, **options):
    """Native (each thread count) against the reference interpreter; returns the module.
    Every node must run natively (fallback="error") unless the caller says otherwise."""
    options.setdefault("fallback", "error")
    ref = graphopt.run(g, *feeds)
    fn = None
    for t in threads:
        fn = graphopt.compile(g, backend="native", threads=t, **options)
        assert_same(fn(*feeds), ref, rtol, atol)
    return fn


def check_op(op: str, args: Sequence[Any], attrs: dict | None = None, **kw):
    g, feeds = op_graph(op, args, attrs)
    return check_graph(g, feeds, **kw)


def randn(*shape, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 7919 * len(shape) + sum(shape))
    return torch.randn(shape, generator=gen)


def buffers_overlap_check(plan) -> None:
    """No two arena buffers that are live at the same step share a byte."""
    from graphopt.native import check_plan

    check_plan(plan.lifetimes, plan.memory)


def np_f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)
