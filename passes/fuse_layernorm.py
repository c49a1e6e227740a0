"""fuse-layernorm: hand-written layer norm / RMS norm -> ``layer_norm`` / ``rms_norm``.

Before -> after::

    graph main(%x: f32[2, 8], %g: f32[8], %b: f32[8]) {   graph main(%x: f32[2, 8], %g: f32[8],
      %m: f32[2, 1] = mean(%x) {axes=[-1], keepdim=true}                     %b: f32[8]) {
      %d: f32[2, 8] = sub(%x, %m)                           %y: f32[2, 8] = layer_norm(%x, %g, %b)
      %sq: f32[2, 8] = pow(%d, %two)                          {eps=1e-05, normalized_shape=[8]}
      %v: f32[2, 1] = mean(%sq) {axes=[-1], keepdim=true}   return %y
      %ve: f32[2, 1] = add(%v, %eps)                      }
      %s: f32[2, 1] = sqrt(%ve)
      %n: f32[2, 8] = div(%d, %s)
      %ng: f32[2, 8] = mul(%n, %g)
      %y: f32[2, 8] = add(%ng, %b)
      return %y
    }

Rules:

* ``layernorm``: ``(x - mean(x)) / sqrt(var + eps)`` or ``(x - mean(x)) * rsqrt(var + eps)``
  (also ``pow(., 0.5)``, ``pow(., -0.5)``, ``reciprocal(sqrt(.))``), where var is
  ``mean((x - mean(x))^2)`` (``pow(d, 2)`` or ``d * d``) or ``var(x, correction=0)``, every
  mean over the same trailing axes with keepdim -> ``layer_norm(x){normalized_shape, eps}``;
  ``gamma * (x - mean(x)) / sqrt(...)`` (the scale applied first) -> ``layer_norm(x, gamma)``.
  That is layer_norm's definition (population variance, eps inside the root). The biased
  ``std(x) + eps`` form (eps outside the root, Bessel's correction) is a different function and
  does not match.
* ``rmsnorm`` (T5 / LLaMA): ``x * rsqrt(mean(x^2) + eps)`` (or ``x / sqrt(...)``) ->
  ``rms_norm(x){axis=-k, eps}``, the same formula.
* ``layernorm-scale`` / ``layernorm-shift`` / ``rmsnorm-scale``: ``norm(x) * gamma`` and
  ``norm(x) + beta`` with gamma / beta of the normalized shape (leading 1s allowed for
  constants) become the op's weight / bias, which the op applies in the same order (scale,
  then shift).

The eps constant becomes a float attribute holding the same float32 value (printed in its
shortest form). The layer-norm rule is tried before the RMS rule, since a centered input makes
the layer-norm formula an RMS norm of ``x - mean(x)``.
"""

from __future__ import annotations

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.ir.types import TensorType
from graphopt.rewrite import Attr, Const, Match, RewritePass, Rule, Var, op
from graphopt.transform.registry import register_pass


def _scalar(name: str) -> Const:
    def scalar(v) -> bool:  # bf16 constants hold raw bits: not read as numbers here
        return v.data is not None and v.data.size == 1 and v.dtype is not DType.bfloat16

    return Const(name, where=scalar, doc="a scalar")


def _mean(x, axes: str = "axes"):
    return op.mean(x, axes=Attr(axes), keepdim=True)


def _inv_root(x, den):
    """x / sqrt(den), x * rsqrt(den) and their pow / reciprocal spellings."""
    return (
        op.div(x, op.sqrt(den))
        | op.mul(x, op.rsqrt(den))
        | op.div(x, op.pow(den, Const("half", value=0.5)))
        | op.mul(x, op.pow(den, Const("neg_half", value=-0.5)))
        | op.mul(x, op.reciprocal(op.sqrt(den)))
    )


def _shortest_float(value: np.ndarray) -> float:
    """The shortest decimal of a (float32) scalar that converts back to the same value."""
    scalar = value.reshape(())
    return float(str(scalar)) if scalar.dtype.kind == "f" else float(scalar)


def _trailing_axes(match: Match) -> tuple[int, ...] | str:
    """The normalized trailing shape, or the reason the reduction is not over trailing dims."""
    x: TensorType = match["x"].type
    axes = sorted(a % x.rank for a in match.attrs["axes"])
    if not axes or axes != list(range(x.rank - len(axes), x.rank)):
        return f"the means reduce axes {list(match.attrs['axes'])}, not trailing dims of {x}"
    shape = x.shape[x.rank - len(axes) :]
    if any(not isinstance(d, int) for d in shape):
        return f"normalized dims {list(shape)} are symbolic"
    return tuple(shape)


def _check_norm(match: Match) -> str | None:
    x = match["x"]
    if not x.dtype.is_floating:
        return f"%{x.name} is {x.dtype}, not a float"
    if not match.root.output.type.same_as(x.type):
        return f"the result {match.root.output.type} is not of the input type {x.type}"
    eps = float(match.const("eps").reshape(()))
    if not np.isfinite(eps) or eps < 0:
        return f"eps {eps} is not a finite non-negative number"
    shape = _trailing_axes(match)
    return shape if isinstance(shape, str) else None


class LayerNorm(Rule):
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) -> layer_norm(x)."""

    name = "layernorm"
    allow_shared = True  # e.g. mean(x) also used elsewhere: it stays, the rest folds

    def pattern(self):
        x = Var("x")
        d = op.sub(x, _mean(x).named("mean")).named("centered")
        var = (
            _mean(op.pow(d, Const("two", value=2)))
            | _mean(op.mul(d, d))
            | op.var(x, axes=Attr("axes"), keepdim=True, correction=0.0)
        )
        # gamma * (x - mean) / sqrt(...): the scale applied before the division
        numerator = d | op.mul(d, Var("gamma"))
        return _inv_root(numerator, op.add(var, _scalar("eps")))

    def check(self, match):
        reason = _check_norm(match)
        if reason is None and match.values.get("gamma") is not None:
            reason = _affine_param(match, "gamma", _trailing_axes(match))
        return reason

    def rewrite(self, match, rw):
        shape = _trailing_axes(match)
        gamma = None
        if match.values.get("gamma") is not None:
            gamma = _as_param(match, "gamma", shape, rw)
        return rw.op.layer_norm(
            match["x"], gamma, None, normalized_shape=shape, eps=_shortest_float(match.const("eps"))
        )


class RMSNorm(Rule):
    """x * rsqrt(mean(x^2) + eps) -> rms_norm(x)."""

    name = "rmsnorm"
    allow_shared = True

    def pattern(self):
        x = Var("x")
        ms = _mean(op.pow(x, Const("two", value=2))) | _mean(op.mul(x, x))
        return _inv_root(x, op.add(ms, _scalar("eps")))

    def check(self, match):
        return _check_norm(match)

    def rewrite(self, match, rw):
        axis = -len(_trailing_axes(match))
        return rw.op.rms_norm(match["x"], None, axis=axis, eps=_shortest_float(match.const("eps")))


def _affine_param(match: Match, key: str, shape: tuple) -> str | None:
    """Reason why ``match[key]`` cannot serve as the norm's weight/bias of ``shape``."""
    p = match[key]
    if not match.root.output.type.same_as(match["x"].type):
        return f"%{p.name}: {p.type} broadcasts the result beyond {match['x'].type}"
    if p.dtype != match["x"].dtype:
        return f"%{p.name} is {p.dtype}, the input is {match['x'].dtype}"
    dims = tuple(p.type.shape)
    if dims == shape:
        return None
    lead = len(dims) - len(shape)
    if (
        p.kind == "const"
        and lead >= 0
        and dims[lead:] == shape
        and all(d == 1 for d in dims[:lead])
    ):
        return None
    return f"%{p.name}: {p.type} is not per-element over the normalized shape {list(shape)}"


def _as_param(match: Match, key: str, shape: tuple, rw):
    p = match[key]
    if tuple(p.type.shape) == shape:
        return p
    return rw.constant(p.data.reshape(shape), name=p.name, dtype=p.dtype)


class LayerNormScale(Rule):
    """layer_norm(x) * gamma -> layer_norm(x, gamma)."""

    name = "layernorm-scale"

    def pattern(self):
        return op.mul(op.layer_norm(Var("x"), None, None).named("ln"), Var("gamma"))

    def check(self, match):
        return _affine_param(match, "gamma", match.nodes["ln"].attrs["normalized_shape"])

    def rewrite(self, match, rw):
        attrs = dict(match.nodes["ln"].attrs)
        gamma = _as_param(match, "gamma", attrs["normalized_shape"], rw)
        return rw.op.layer_norm(match["x"], gamma, None, **attrs)


class LayerNormShift(Rule):
    """layer_norm(x, w?) + beta -> layer_norm(x, w, beta)."""

    name = "layernorm-shift"

    def pattern(self):
        ln = op.layer_norm(Var("x"), Var("gamma", optional=True), None).named("ln")
        return op.add(ln, Var("beta"))

    def check(self, match):
        return _affine_param(match, "beta", match.nodes["ln"].attrs["normalized_shape"])

    def rewrite(self, match, rw):
        attrs = dict(match.nodes["ln"].attrs)
        beta = _as_param(match, "beta", attrs["normalized_shape"], rw)
        return rw.op.layer_norm(match["x"], match["gamma"], beta, **attrs)


class RMSNormScale(Rule):
    """rms_norm(x) * weight -> rms_norm(x, weight)."""

    name = "rmsnorm-scale"

    def pattern(self):
        return op.mul(op.rms_norm(Var("x"), None).named("rms"), Var("gamma"))

    def check(self, match):
        attrs = match.nodes["rms"].attrs
        shape = tuple(match["x"].type.shape[attrs["axis"] % match["x"].type.rank :])
        return _affine_param(match, "gamma", shape)

    def rewrite(self, match, rw):
        attrs = dict(match.nodes["rms"].attrs)
        shape = tuple(match["x"].type.shape[attrs["axis"] % match["x"].type.rank :])
        return rw.op.rms_norm(match["x"], _as_param(match, "gamma", shape, rw), **attrs)


@register_pass("fuse-layernorm")
class FuseLayerNorm(RewritePass):
    """Hand-written layer norm / RMS norm (+ affine) -> layer_norm / rms_norm."""

    RULES = (LayerNorm(), RMSNorm(), LayerNormScale(), LayerNormShift(), RMSNormScale())
