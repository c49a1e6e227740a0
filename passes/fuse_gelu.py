"""fuse-gelu: the decomposed GELU formulas -> ``gelu{approximate}``.

Before -> after (GPT-2's ``gelu_new``)::

    graph main(%x: f32[4, 8]) {                     graph main(%x: f32[4, 8]) {
      %h: f32[4, 8] = mul(%x, %half)                  %g: f32[4, 8] = gelu(%x) {approximate="tanh"}
      %c: f32[4, 8] = pow(%x, %three)                 return %g
      %k: f32[4, 8] = mul(%c, %kappa)               }
      %i: f32[4, 8] = add(%x, %k)
      %s: f32[4, 8] = mul(%i, %sqrt_2_over_pi)
      %t: f32[4, 8] = tanh(%s)
      %o: f32[4, 8] = add(%t, %one)
      %g: f32[4, 8] = mul(%h, %o)
      return %g
    }

Matched forms (``*`` and ``+`` in either operand order; the three ways to associate
``0.5 * x * (1 + ...)``):

* erf (exact GELU): ``0.5 * x * (1 + erf(x / sqrt(2)))``, also ``erf(x * (1 / sqrt(2)))``
  -> ``gelu(x){approximate="none"}``;
* tanh: ``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))`` with ``pow(x, 3)``,
  ``x * x * x`` or ``0.044715 * x * x * x`` -> ``gelu(x){approximate="tanh"}``.

Sound because both sides are the same formula: every constant must equal the formula's within
a relative 1e-6 (or the constant's dtype epsilon, for f16), so ``0.5 * x * sigmoid(1.702 x)``
and other approximations that are *not* these formulas are never rewritten. The torch kernel
evaluates the same expression (differences are float rounding, < 1e-6 relative).
"""

from __future__ import annotations

import math

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Value
from graphopt.rewrite import Const, RewritePass, Rule, Var, op
from graphopt.transform.registry import register_pass

_FLOATS = (DType.float16, DType.float32, DType.float64)
_INTS = (DType.int8, DType.uint8, DType.int16, DType.int32, DType.int64)


def scalar_near(name: str, expected: float, rtol: float = 1e-6) -> Const:
    """A 1-element constant within ``rtol`` (at least its dtype's epsilon) of ``expected``.

    Integer constants (``1 + erf(...)`` traces the 1 as an i64 scalar) must be exactly equal.
    """

    def near(v: Value) -> bool:
        if v.data is None or v.data.size != 1 or v.dtype not in _FLOATS + _INTS:
            return False
        eps = float(np.finfo(v.dtype.numpy).eps) if v.dtype in _FLOATS else 0.0
        return abs(float(v.data.reshape(())) - expected) <= max(rtol, eps) * abs(expected)

    return Const(name, where=near, doc=f"a scalar ~= {expected:.10g}")


def _outer(x: Var, inner):
    """0.5 * x * inner, associated any of the three ways."""
    return (
        op.mul(op.mul(x, scalar_near("half", 0.5)), inner)
        | op.mul(x, op.mul(scalar_near("half", 0.5), inner))
        | op.mul(op.mul(x, inner), scalar_near("half", 0.5))
    )


class _Gelu(Rule):
    approximate = "none"
    # A shared interior node (two GELUs of one x share ``0.5 * x`` after cse) stays for its
    # other user; the replacement is still one op instead of up to eight.
    allow_shared = True

    def check(self, match):
        x = match["x"]
        if not x.dtype.is_floating:
            return f"%{x.name} is {x.dtype}, gelu needs a float"
        if not match.root.output.type.same_as(x.type):
            return f"the constants broadcast %{x.name}: {x.type} to {match.root.output.type}"
        return None

    def rewrite(self, match, rw):
        return rw.op.gelu(match["x"], approximate=self.approximate)


class GeluErf(_Gelu):
    """0.5 * x * (1 + erf(x / sqrt(2))) -> gelu(x)."""

    name = "gelu-erf"

    def pattern(self):
        x = Var("x")
        scaled = op.div(x, scalar_near("sqrt2", math.sqrt(2.0))) | op.mul(
            x, scalar_near("inv_sqrt2", 1.0 / math.sqrt(2.0))
        )
        return _outer(x, op.add(op.erf(scaled), scalar_near("one", 1.0)))


class GeluTanh(_Gelu):
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) -> gelu(x){approximate=tanh}."""

    name = "gelu-tanh"
    approximate = "tanh"

    def pattern(self):
        x = Var("x")
        kappa = scalar_near("kappa", 0.044715)
        cube = op.pow(x, scalar_near("three", 3.0)) | op.mul(op.mul(x, x), x)
        # 0.044715 * x**3, or 0.044715 * x * x * x as Python associates it
        term = op.mul(cube, kappa) | op.mul(op.mul(op.mul(x, kappa), x), x)
        inner = op.add(x, term)
        arg = op.mul(inner, scalar_near("beta", math.sqrt(2.0 / math.pi)))
        return _outer(x, op.add(op.tanh(arg), scalar_near("one", 1.0)))


@register_pass("fuse-gelu")
class FuseGelu(RewritePass):
    """Decomposed erf / tanh GELU formulas -> gelu."""

    RULES = (GeluErf(), GeluTanh())
