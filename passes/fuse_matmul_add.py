"""fuse-matmul-add: matmul by a constant 2-D weight (+ a bias along the last dim) -> linear.

Before -> after (GPT-2's Conv1D, traced from ``addmm``)::

    graph main(%h: f32[1, 16, 768]) {                graph main(%h: f32[1, 16, 768]) {
      const %w: f32[768, 2304]                         const %w_t: f32[2304, 768]
      const %b: f32[2304]                              const %b: f32[2304]
      %x: f32[16, 768] = reshape(%h) {shape=[-1, 768]} %y: f32[1, 16, 2304] = linear(%h, %w_t, %b)
      %m: f32[16, 2304] = matmul(%x, %w)               return %y
      %a: f32[16, 2304] = add(%m, %b)                }
      %y: f32[1, 16, 2304] = reshape(%a) {shape=[1, 16, 2304]}
      return %y
    }

Rules:

* ``matmul-to-linear``: ``matmul(x, W)`` with W a constant [K, N] -> ``linear(x, W^T)``; W^T
  is a new constant that views W's memory transposed (no copy; not for a W that other nodes
  also use).
  ``x @ W`` and ``x @ (W^T)^T`` are the same sums of the same products; only the kernel's
  summation order may differ (within 1e-5 on GPT-2).
* ``linear-add-bias``: ``add(linear(x, w), b)`` with b broadcasting along the last dim only
  (shape [N]; for a constant also [1, ..., 1, N] or a scalar; the add's result has the
  linear's type) -> ``linear(x, w, b)``, which adds the same bias to every row. With the rule
  above, ``matmul(x, W) + b`` becomes ``linear(x, W^T, b)``.
* ``linear-through-reshape``: ``reshape(linear(reshape(x, [M, K]), w, b), S)`` with
  ``S = [d1, .., dk, N]`` and ``d1 * .. * dk = M`` ->
  ``linear(reshape(x, [d1, .., dk, K]), w, b)`` (no reshape when x has that shape already).
  A linear maps each K-row to an N-row independently; both forms keep the M rows in the same
  row-major order, so only the view of the leading dims changes.
"""

from __future__ import annotations

import numpy as np

from graphopt.ir.types import dims_equal
from graphopt.ops._infer import prod
from graphopt.rewrite import Const, Match, RewritePass, Rule, Var, op
from graphopt.transform.registry import register_pass

_W_DOC = "a 2-D float constant"


def _weight() -> Const:
    return Const("w", where=lambda v: v.type.rank == 2 and v.dtype.is_floating, doc=_W_DOC)


def _transposed(match: Match, rw):
    # A view, not a copy: W^T of a C-ordered W is the same memory read in Fortran order (the
    # native GEMM reads B through strides; other consumers copy at use).
    w = match["w"]
    return rw.constant(w.data.T, name=f"{w.name}_t", dtype=w.dtype, like=w)


class LinearAddBias(Rule):
    """add(linear(x, w), b) with b along the last dim -> linear(x, w, b)."""

    name = "linear-add-bias"

    def pattern(self):
        return op.add(op.linear(Var("x"), Var("w"), None).named("lin"), Var("b"))

    def check(self, match):
        lin, b = match.nodes["lin"].output, match["b"]
        if not match.root.output.type.same_as(lin.type):
            return f"the add broadcasts the product {lin.type} to {match.root.output.type}"
        if b.dtype != lin.dtype:
            return f"bias %{b.name} is {b.dtype}, the product is {lin.dtype}"
        n = lin.type.shape[-1]
        if b.kind == "const" and b.data.size == 1 and isinstance(n, int):
            return None  # a scalar: the same value in every column
        if b.type.rank == 0 or not dims_equal(b.type.shape[-1], n):
            return f"bias %{b.name}: {b.type} does not run along the last dim ({n})"
        if any(d != 1 for d in b.type.shape[:-1]):
            return f"bias %{b.name}: {b.type} broadcasts along other dims than the last"
        if b.type.rank != 1 and b.kind != "const":
            return f"bias %{b.name}: {b.type} is not 1-D and not a constant to reshape"
        return None

    def rewrite(self, match, rw):
        b = match["b"]
        if b.type.rank != 1 or b.data is not None and b.data.size == 1:
            n = match.nodes["lin"].output.type.shape[-1]
            b = rw.constant(np.broadcast_to(b.data.reshape(-1), (n,)), name=b.name, dtype=b.dtype)
        return rw.op.linear(match["x"], match["w"], b)


class MatMulToLinear(Rule):
    """matmul(x, W), W a constant [K, N] -> linear(x, W^T)."""

    name = "matmul-to-linear"

    def pattern(self):
        return op.matmul(Var("x"), _weight())

    def check(self, match):
        w = match["w"]
        if match["x"].dtype != w.dtype:
            return f"x is {match['x'].dtype}, the weight is {w.dtype}"
        if len(w.users) > 1:
            return (
                f"weight %{w.name} has {len(w.users)} users; a transposed copy would keep "
                f"both layouts in memory"
            )
        return None

    def rewrite(self, match, rw):
        return rw.op.linear(match["x"], _transposed(match, rw), None)


class LinearThroughReshape(Rule):
    """reshape(linear(reshape(x, [M, K])), [..., N]) -> linear(reshape(x, [..., K]))."""

    name = "linear-through-reshape"

    def pattern(self):
        flat = op.reshape(Var("x")).named("flat")
        return op.reshape(op.linear(flat, Var("w"), Var("b", optional=True)).named("lin"))

    def check(self, match):
        flat = match.nodes["flat"].output.type
        out = match.root.output.type
        if flat.rank != 2:
            return f"the inner reshape gives {flat}, not a 2-D [rows, K] matrix"
        if out.rank < 1 or not dims_equal(prod(out.shape[:-1]), flat.shape[0]):
            return f"the outer reshape {out} does not regroup the {flat.shape[0]} rows"
        if any(not isinstance(d, int) for d in out.shape):
            return f"the outer reshape {out} has symbolic dims"
        return None

    def rewrite(self, match, rw):
        out = match.root.output.type
        k = match.nodes["flat"].output.type.shape[1]
        shape = tuple(out.shape[:-1]) + (k,)
        x = match["x"]
        rows = x if tuple(x.type.shape) == shape else rw.op.reshape(x, shape=shape)
        return rw.op.linear(rows, match["w"], match["b"])


@register_pass("fuse-matmul-add")
class FuseMatMulAdd(RewritePass):
    """matmul by a constant 2-D weight (+ bias along the last dim) -> linear."""

    RULES = (MatMulToLinear(), LinearAddBias(), LinearThroughReshape())
