"""canonicalize: peephole rules that remove identity-like nodes and merge chains.

Before -> after::

    graph main(%x: f32[2, 3]) {                          graph main(%x: f32[2, 3]) {
      const %one: f32[] = 1.0                              %t: f32[3, 2] = permute(%x) {perm=[1, 0]}
      %r: f32[2, 3] = reshape(%x) {shape=[2, 3]}           return %t
      %m: f32[2, 3] = mul(%r, %one)                      }
      %p: f32[3, 2] = permute(%m) {perm=[1, 0]}
      %t: f32[3, 2] = permute(%p) {perm=[1, 0]}
      %u: f32[3, 2] = permute(%t) {perm=[1, 0]}   (the two last permutes compose to [1, 0])
      return %u
    }

Rules (each is exact in fp32, see its docstring for why):

* identities: reshape/expand/slice whose output type equals the input type, permute with the
  identity perm, cast to the same dtype; a slice that is exactly one piece of a two-piece
  concatenation;
* chains: reshape(reshape(x)), permute(permute(x)) (perms composed; the identity disappears),
  cast(cast(x)) when the inner cast is lossless, neg(neg(x)), squeeze(unsqueeze(x)) and
  unsqueeze(squeeze(x)) that give back x's type;
* arithmetic identities: x*1, x/1, x+0, x-0 where the constant is exactly 1 / 0 and broadcasting
  does not change the output shape or dtype.

The reshape/permute rules live in ``graphopt.rewrite.layout``, the one layout canonicalizer,
which the ONNX importer's cleanup also runs.

Signed zeros: x + (+0.0) maps -0.0 to +0.0, and x - (-0.0) likewise, so for floats these fold
only when the zero has the right sign (x + (-0.0) and x - (+0.0) are exact), unless the option
``signed_zeros=false`` says the sign of zero does not matter.
"""

from __future__ import annotations

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.rewrite import Attr, Const, RewritePass, Rule, Var, op
from graphopt.rewrite.layout import (  # the shared layout rules (the ONNX importer runs them too)
    IdentityPermute,
    IdentityReshape,
    PermutePermute,
    ReshapeReshape,
)
from graphopt.rewrite.layout import same_type_reason as _same_type
from graphopt.transform.registry import register_pass


# ------------------------------------------------------------------------------- identities
class IdentityExpand(IdentityReshape):
    """expand(x) to the shape x already has -> x."""

    name = "identity-expand"

    def pattern(self):
        return op.expand(Var("x"))


class IdentitySlice(IdentityReshape):
    """slice(x) with step 1 whose output has x's shape (covers the whole axis) -> x.

    With step 1, an output as long as the input can only be the whole axis.
    """

    name = "identity-slice"

    def pattern(self):
        return op.slice(Var("x"), step=1)


class SliceOfConcat(Rule):
    """slice(concat(a, b){axis}){axis, step=1} that is exactly ``a`` or ``b`` -> that piece.

    With step 1, a slice starting where a piece starts (0 for ``a``, ``a``'s length for ``b``)
    whose output has that piece's type (so its length) covers that piece and nothing else. A
    traced decoder step returns its new keys as ``slice(concat(cache, new))``: after this rule
    the concatenation is read by attention alone (native/lower/kv_segments.py).
    """

    name = "slice-of-concat"
    allow_shared = True  # the concatenation usually has other readers; it is not duplicated

    def pattern(self):
        cat = op.concat(Var("a"), Var("b"), axis=Attr("cat_axis"))
        return op.slice(cat, axis=Attr("axis"), start=Attr("start"), step=1)

    def check(self, match):
        return self._piece(match)[1]

    def rewrite(self, match, rw):
        return self._piece(match)[0]

    @staticmethod
    def _piece(match):
        a, b = match["a"], match["b"]
        rank = a.type.rank
        if match.attrs["axis"] % rank != match.attrs["cat_axis"] % rank:
            return None, "the slice and the concatenation are along different axes"
        start, axis = match.attrs["start"], match.attrs["axis"] % rank
        if start == 0 and _same_type(match, a) is None:
            return a, None
        if isinstance(a.shape[axis], int) and start == a.shape[axis] and \
                _same_type(match, b) is None:
            return b, None
        return None, "the slice is not exactly one piece of the concatenation"


class IdentityCast(IdentityReshape):
    """cast(x) to x's own dtype -> x."""

    name = "identity-cast"

    def pattern(self):
        return op.cast(Var("x"))


# ----------------------------------------------------------------------------------- chains
# Casts from -> to that represent every value exactly (so a later cast sees the same number).
_LOSSLESS = {
    DType.bool: set(DType) - {DType.bool},
    DType.uint8: {
        DType.int16,
        DType.int32,
        DType.int64,
        DType.float16,
        DType.bfloat16,
        DType.float32,
        DType.float64,
    },
    DType.int8: {
        DType.int16,
        DType.int32,
        DType.int64,
        DType.float16,
        DType.bfloat16,
        DType.float32,
        DType.float64,
    },
    DType.int16: {DType.int32, DType.int64, DType.float32, DType.float64},
    DType.int32: {DType.int64, DType.float64},
    DType.float16: {DType.float32, DType.float64},
    DType.bfloat16: {DType.float32, DType.float64},
    DType.float32: {DType.float64},
}


class CastCast(Rule):
    """cast(cast(x, T1), T2) -> cast(x, T2) (or x when T2 is x's dtype) if x -> T1 is lossless.

    A lossless first cast hands the second one the exact value of x, so rounding once from x
    gives the same result. Kept when T2 is an integer type other than x's (float -> int of
    out-of-range values is implementation-defined) or when the first cast can lose information
    (f32 -> f16 -> f32 rounds).
    """

    name = "cast-cast"
    allow_shared = True

    def pattern(self):
        return op.cast(op.cast(Var("x")).named("inner"))

    def check(self, match):
        src = match["x"].dtype
        mid = match.nodes["inner"].attrs["dtype"]
        dst = match.root.attrs["dtype"]
        if mid not in _LOSSLESS.get(src, set()):
            return f"cast {src} -> {mid} is not lossless, so {src} -> {mid} -> {dst} may differ"
        if dst != src and not (dst.is_floating or dst is DType.bool):
            return f"final cast to integer {dst} from a different dtype is not merged"
        return None

    def rewrite(self, match, rw):
        dst = match.root.attrs["dtype"]
        if dst == match["x"].dtype:
            return match["x"]
        return rw.op.cast(match["x"], dtype=dst)


class NegNeg(Rule):
    """neg(neg(x)) -> x (exact, also for integers: wrap-around negation is an involution)."""

    name = "neg-neg"
    allow_shared = True

    def pattern(self):
        return op.neg(op.neg(Var("x")))

    def rewrite(self, match, rw):
        return match["x"]


class SqueezeUnsqueeze(Rule):
    """squeeze(unsqueeze(x)) -> x when the result has x's type.

    Inserting or removing size-1 dims never reorders elements (row-major), so equal types mean
    equal data.
    """

    name = "squeeze-unsqueeze"
    allow_shared = True

    def pattern(self):
        return op.squeeze(op.unsqueeze(Var("x")))

    def check(self, match):
        return _same_type(match, match["x"])

    def rewrite(self, match, rw):
        return match["x"]


class UnsqueezeSqueeze(SqueezeUnsqueeze):
    """unsqueeze(squeeze(x)) -> x when the result has x's type (the squeezed dim comes back)."""

    name = "unsqueeze-squeeze"

    def pattern(self):
        return op.unsqueeze(op.squeeze(Var("x")))


# ------------------------------------------------------------------------------- arithmetic
class _ArithIdentity(Rule):
    """Base: ``op(x, c)`` -> x for a constant c of all-``value`` elements (checks types)."""

    value: float = 0.0

    def check(self, match):
        return _same_type(match, match["x"])

    def rewrite(self, match, rw):
        return match["x"]


class MulOne(_ArithIdentity):
    """x * 1 -> x (and 1 * x): exact for every value, NaN and -0.0 included."""

    name = "mul-one"

    def pattern(self):
        return op.mul(Var("x"), Const("c", value=1))


class DivOne(_ArithIdentity):
    """x / 1 -> x for true division (or floor/trunc division of integers)."""

    name = "div-one"

    def pattern(self):
        return op.div(Var("x"), Const("c", value=1))

    def check(self, match):
        mode = match.root.attrs["rounding_mode"]
        if mode is not None and match["x"].dtype.is_floating:
            return f"rounding_mode={mode!r} rounds float x, so x / 1 is not x"
        return _same_type(match, match["x"])


class AddZero(_ArithIdentity):
    """x + 0 -> x (and 0 + x); for floats only with -0.0 unless signed zeros are ignored."""

    name = "add-zero"
    signed_zeros = True

    def pattern(self):
        return op.add(Var("x"), Const("c", value=0))

    def check(self, match):
        reason = _same_type(match, match["x"])
        if reason is None and self.signed_zeros and match["x"].dtype.is_floating:
            if not np.all(np.signbit(match.const("c"))):
                reason = (
                    f"x + (+0.0) turns x = -0.0 into +0.0 (constant %{match['c'].name}); "
                    f"exact only for -0.0 (or with signed_zeros=false)"
                )
        return reason


class SubZero(_ArithIdentity):
    """x - 0 -> x; for floats only with +0.0 unless signed zeros are ignored."""

    name = "sub-zero"
    signed_zeros = True

    def pattern(self):
        return op.sub(Var("x"), Const("c", value=0))

    def check(self, match):
        reason = _same_type(match, match["x"])
        if reason is None and self.signed_zeros and match["x"].dtype.is_floating:
            if np.any(np.signbit(match.const("c"))):
                reason = (
                    f"x - (-0.0) turns x = -0.0 into +0.0 (constant %{match['c'].name}); "
                    f"exact only for +0.0 (or with signed_zeros=false)"
                )
        return reason


_RULE_SETS: dict[bool, list[Rule]] = {}


def canonicalize_rules(signed_zeros: bool = True) -> list[Rule]:
    """The canonicalization rule set (``signed_zeros=False`` also folds float x+0.0, x-(-0.0))."""
    if signed_zeros in _RULE_SETS:
        return _RULE_SETS[signed_zeros]
    add_zero, sub_zero = AddZero(), SubZero()
    add_zero.signed_zeros = sub_zero.signed_zeros = signed_zeros
    rules = _RULE_SETS[signed_zeros] = [
        IdentityReshape(),
        IdentityExpand(),
        IdentitySlice(),
        SliceOfConcat(),
        IdentityPermute(),
        IdentityCast(),
        ReshapeReshape(),
        PermutePermute(),
        CastCast(),
        NegNeg(),
        SqueezeUnsqueeze(),
        UnsqueezeSqueeze(),
        MulOne(),
        DivOne(),
        add_zero,
        sub_zero,
    ]
    return rules


@register_pass("canonicalize")
class Canonicalize(RewritePass):
    """Peephole cleanup: remove identity nodes (reshape, permute, x*1, ...), merge chains.

    Options:
        signed_zeros: keep float x + 0.0 / x - (-0.0), which would turn -0.0 into +0.0.
    """

    signed_zeros: bool = True

    def rules(self) -> list[Rule]:
        return canonicalize_rules(self.signed_zeros)
