"""fold-transpose-matmul: absorb transposes (and a scalar scale) into matmul / linear.

Before -> after::

    graph main(%a: f32[2, 8, 4], %b: f32[2, 5, 4]) {     graph main(%a: f32[2, 8, 4],
      %bt: f32[2, 4, 5] = permute(%b) {perm=[0, 2, 1]}              %b: f32[2, 5, 4]) {
      %m: f32[2, 8, 5] = matmul(%a, %bt)                   %s: f32[2, 8, 5] = fused_matmul(%a, %b,
      %s: f32[2, 8, 5] = mul(%m, %half)                      None, None) {alpha=0.5, trans_b=true}
      return %s                                            return %s
    }                                                    }

Rules (``swap`` = a permute exchanging the last two dims and nothing else):

* ``matmul-transposed-weight``: ``matmul(x, permute(w, [1, 0]))``, w 2-D -> ``linear(x, w)``:
  ``linear(x, w)`` is defined as ``x @ w^T``.
* ``linear-transposed-weight``: ``linear(x, permute(w, [1, 0]), b?)`` -> ``matmul(x, w)``, or
  ``fused_matmul(x, w, b)`` with a bias: ``x @ (w^T)^T = x @ w``.
* ``matmul-transpose-a`` / ``matmul-transpose-b``: ``matmul(swap(a), b)`` /
  ``matmul(a, swap(b))`` -> ``fused_matmul(a, b){trans_a | trans_b}``.
* ``fused-matmul-transpose-a`` / ``-b``: a swap feeding a ``fused_matmul`` operand toggles the
  flag (``op(swap(a))`` with the flag set is ``a`` itself).
* ``fused-matmul-scale``: ``fused_matmul(a, b){alpha=1, no epilogue} * c`` for a scalar constant
  c -> ``alpha=c``; fused_matmul computes ``(op(a) @ op(b)) * alpha``, the same product.
* ``plain-fused-matmul``: a fused_matmul with nothing left to fuse -> ``matmul``.

A permute of a *constant* needs no rule: ``fold-constants`` folds it into a new constant, and
``fuse-matmul-add`` turns a matmul by a constant 2-D weight into ``linear``.
"""

from __future__ import annotations

from graphopt.rewrite import Attr, Const, RewritePass, Rule, Var, op
from graphopt.transform.registry import register_pass


def _is_swap(perm) -> bool:
    n = len(perm)
    return n >= 2 and tuple(perm) == tuple(range(n - 2)) + (n - 1, n - 2)


def _swap(name: str):
    swap = Attr(f"{name}_perm", where=_is_swap, doc="a swap of the last two dims")
    return op.permute(Var(name), perm=swap).named(f"{name}_swap")


class _SameDType(Rule):
    """Base: every operand has the result's dtype (the fused forms do not promote dtypes).

    The only interior node is the transpose; one that other nodes also read stays for them
    (the rewrite never duplicates a product, and it dies once its last reader is rewritten).
    """

    allow_shared = True

    def check(self, match):
        dtype = match.root.output.dtype
        for value in match.values.values():
            if value is not None and value.dtype != dtype:
                return f"%{value.name} is {value.dtype}, the result is {dtype}"
        return None


class MatMulTransposedWeight(_SameDType):
    """matmul(x, permute(w, [1, 0])) with a 2-D w -> linear(x, w)."""

    name = "matmul-transposed-weight"

    def pattern(self):
        return op.matmul(Var("x"), op.permute(Var("w"), perm=(1, 0)))

    def rewrite(self, match, rw):
        return rw.op.linear(match["x"], match["w"], None)


class LinearTransposedWeight(_SameDType):
    """linear(x, permute(w, [1, 0]), b?) -> matmul(x, w) / fused_matmul(x, w, b)."""

    name = "linear-transposed-weight"

    def pattern(self):
        return op.linear(Var("x"), op.permute(Var("w"), perm=(1, 0)), Var("b", optional=True))

    def rewrite(self, match, rw):
        if match["b"] is None:
            return rw.op.matmul(match["x"], match["w"])
        return rw.op.fused_matmul(match["x"], match["w"], match["b"], None)


class MatMulTransposeA(_SameDType):
    """matmul(swap(a), b) -> fused_matmul(a, b){trans_a=true}."""

    name = "matmul-transpose-a"

    def pattern(self):
        return op.matmul(_swap("a"), Var("b"))

    def rewrite(self, match, rw):
        return rw.op.fused_matmul(match["a"], match["b"], None, None, trans_a=True)


class MatMulTransposeB(_SameDType):
    """matmul(a, swap(b)) -> fused_matmul(a, b){trans_b=true}."""

    name = "matmul-transpose-b"

    def pattern(self):
        return op.matmul(Var("a"), _swap("b"))

    def rewrite(self, match, rw):
        return rw.op.fused_matmul(match["a"], match["b"], None, None, trans_b=True)


class FusedMatMulTransposeA(_SameDType):
    """fused_matmul(swap(a), b, ...){trans_a=t} -> fused_matmul(a, b, ...){trans_a=not t}."""

    name = "fused-matmul-transpose-a"

    def pattern(self):
        return op.fused_matmul(
            _swap("a"), Var("b"), Var("bias", optional=True), Var("residual", optional=True)
        )

    def rewrite(self, match, rw):
        attrs = dict(match.root.attrs)
        attrs["trans_a"] = not attrs["trans_a"]
        return rw.op.fused_matmul(match["a"], match["b"], match["bias"], match["residual"], **attrs)


class FusedMatMulTransposeB(_SameDType):
    """fused_matmul(a, swap(b), ...){trans_b=t} -> fused_matmul(a, b, ...){trans_b=not t}."""

    name = "fused-matmul-transpose-b"

    def pattern(self):
        return op.fused_matmul(
            Var("a"), _swap("b"), Var("bias", optional=True), Var("residual", optional=True)
        )

    def rewrite(self, match, rw):
        attrs = dict(match.root.attrs)
        attrs["trans_b"] = not attrs["trans_b"]
        return rw.op.fused_matmul(match["a"], match["b"], match["bias"], match["residual"], **attrs)


class FusedMatMulScale(Rule):
    """fused_matmul(a, b){alpha=1, no epilogue} * c -> fused_matmul(a, b){alpha=c}."""

    name = "fused-matmul-scale"

    def pattern(self):
        mm = op.fused_matmul(Var("a"), Var("b"), alpha=1.0, activation="none").named("mm")
        scale = Const(
            "c",
            where=lambda v: v.data.size == 1 and v.dtype.is_floating and v.dtype.name != "bfloat16",
            doc="a float scalar",
        )
        return op.mul(mm, scale)

    def check(self, match):
        mm = match.nodes["mm"].output
        if not match.root.output.type.same_as(mm.type):
            return f"the scale changes the product's type {mm.type} to {match.root.output.type}"
        return None

    def rewrite(self, match, rw):
        attrs = dict(match.nodes["mm"].attrs)
        attrs["alpha"] = float(str(match.const("c").reshape(())))
        return rw.op.fused_matmul(match["a"], match["b"], None, None, **attrs)


class PlainFusedMatMul(Rule):
    """fused_matmul(a, b) without transposes, scale or epilogue -> matmul(a, b)."""

    name = "plain-fused-matmul"

    def pattern(self):
        return op.fused_matmul(
            Var("a"), Var("b"), trans_a=False, trans_b=False, alpha=1.0, activation="none"
        )

    def rewrite(self, match, rw):
        return rw.op.matmul(match["a"], match["b"])


@register_pass("fold-transpose-matmul")
class FoldTransposeMatMul(RewritePass):
    """Absorb last-two-dims transposes and scalar scales into matmul / linear."""

    RULES = (
        MatMulTransposedWeight(),
        LinearTransposedWeight(),
        MatMulTransposeA(),
        MatMulTransposeB(),
        FusedMatMulTransposeA(),
        FusedMatMulTransposeB(),
        FusedMatMulScale(),
        PlainFusedMatMul(),
    )
