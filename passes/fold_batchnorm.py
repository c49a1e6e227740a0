"""fold-batchnorm: fold inference BatchNorm into the conv / linear before it (and zero padding
into the conv after it).

Before -> after::

    graph main(%x: f32[1, 3, 8, 8]) {                   graph main(%x: f32[1, 3, 8, 8]) {
      const %w: f32[4, 3, 3, 3]                           const %w_bn: f32[4, 3, 3, 3]
      const %mean, %var, %gamma, %beta: f32[4]            const %b_bn: f32[4]
      %p: f32[1, 3, 10, 10] = pad(%x) {pads=[1, 1, 1, 1]} %y: f32[1, 4, 8, 8] = conv(%x, %w_bn,
      %c: f32[1, 4, 8, 8] = conv(%p, %w, None)                %b_bn) {padding=[1, 1]}
      %y: f32[1, 4, 8, 8] = batch_norm(%c, %mean, %var,   return %y
                              %gamma, %beta) {eps=1e-5}  }
      return %y
    }

Why it is sound: inference batch norm is a per-channel affine map of the channel axis (1),
``bn(y)[c] = y[c] * s[c] + (beta[c] - mean[c] * s[c])`` with ``s = gamma / sqrt(var + eps)``.
A conv's output channel ``c`` is a dot product with weight slice ``w[c]`` plus ``b[c]``, so
scaling ``w[c]`` by ``s[c]`` and replacing the bias by ``(b[c] - mean[c]) * s[c] + beta[c]``
computes the same map (the new parameters are computed in float64, then rounded once to the
weight dtype). The same holds for ``linear`` when its output is 2-D (BatchNorm1d over
features: the channel axis 1 is the feature axis); a rank-3 linear output has its *sequence*
on axis 1 and is left alone. Every parameter must be a constant, and the conv output must have
no other user (otherwise the unnormalized value would still be needed; the rewriter's escape
check refuses that match).

``pad-into-conv``: a constant-zero ``pad`` that pads only the spatial dims of a conv input, by
the same amount on both sides, is what the conv's own ``padding`` does: the padding moves into
the conv (all-zero pads, which MobileNetV2's TF-style padding emits, disappear the same way).
"""

from __future__ import annotations

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Value
from graphopt.rewrite import Const, Match, RewritePass, Rule, Var, op
from graphopt.transform.registry import register_pass

_FOLDABLE_DTYPES = (DType.float16, DType.float32, DType.float64)


def _const_or_absent(name: str) -> Var:
    return Var(name, optional=True, where=lambda v: v.kind == "const", doc="a constant")


def _bn_operands():
    return (Const("mean"), Const("var"), _const_or_absent("gamma"), _const_or_absent("beta"))


def _check_dtypes(match: Match) -> str | None:
    w = match["w"]
    if w.dtype not in _FOLDABLE_DTYPES:
        return f"weight %{w.name} is {w.dtype}; folding needs f16/f32/f64 weights"
    for key in ("b", "mean", "var", "gamma", "beta"):
        v = match[key]
        if v is not None and not v.dtype.is_floating:
            return f"%{v.name} is {v.dtype}, not a float"
    return None


def _folded(match: Match, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(per-channel scale s, new bias) in float64."""
    eps = float(match.root.attrs["eps"])

    def param(key: str, fill: float) -> np.ndarray:
        v = match[key]
        return np.full(channels, fill) if v is None else v.data.astype(np.float64).reshape(-1)

    scale = param("gamma", 1.0) / np.sqrt(param("var", 0.0) + eps)
    bias = (param("b", 0.0) - param("mean", 0.0)) * scale + param("beta", 0.0)
    return scale, bias


def _emit(match: Match, rw, scale: np.ndarray, bias: np.ndarray) -> tuple[Value, Value]:
    w = match["w"]
    shape = (-1,) + (1,) * (w.type.rank - 1)
    weight = w.data.astype(np.float64) * scale.reshape(shape)
    new_w = rw.constant(weight, name=f"{w.name}_bn", dtype=w.dtype)
    new_b = rw.constant(bias, name=f"{w.name}_bn_bias", dtype=w.dtype)
    return new_w, new_b


class ConvBatchNorm(Rule):
    """batch_norm(conv(x, w, b?)) with constant w, b, statistics -> conv(x, w', b')."""

    name = "conv-batchnorm"

    def pattern(self):
        conv = op.conv(Var("x"), Const("w"), _const_or_absent("b")).named("conv")
        return op.batch_norm(conv, *_bn_operands())

    def check(self, match):
        return _check_dtypes(match)

    def rewrite(self, match, rw):
        conv = match.nodes["conv"]
        scale, bias = _folded(match, int(match["w"].shape[0]))
        w, b = _emit(match, rw, scale, bias)
        return rw.op.conv(match["x"], w, b, **dict(conv.attrs))


class LinearBatchNorm(Rule):
    """batch_norm(linear(x, w, b?)) over a 2-D [N, features] output -> linear(x, w', b')."""

    name = "linear-batchnorm"

    def pattern(self):
        return op.batch_norm(
            op.linear(Var("x"), Const("w"), _const_or_absent("b")), *_bn_operands()
        )

    def check(self, match):
        rank = match.root.output.type.rank
        if rank != 2:
            return (
                f"linear output is rank {rank}: batch_norm normalizes axis 1, which is not "
                f"the feature axis of a linear unless the output is 2-D"
            )
        return _check_dtypes(match)

    def rewrite(self, match, rw):
        scale, bias = _folded(match, int(match["w"].shape[0]))
        w, b = _emit(match, rw, scale, bias)
        return rw.op.linear(match["x"], w, b)


class PadIntoConv(Rule):
    """conv(pad(x) {symmetric zero pads on spatial dims}) -> conv(x) {padding += pads}."""

    name = "pad-into-conv"

    def pattern(self):
        padded = op.pad(Var("x"), mode="constant", value=0.0).named("pad")
        return op.conv(padded, Var("w"), Var("b", optional=True))

    def check(self, match):
        if self._spatial_pads(match) is None:
            pads = list(match.nodes["pad"].attrs["pads"])
            return (
                f"pads {pads} are not the same on both sides of every spatial dim (or pad "
                f"the batch/channel dims); conv padding is symmetric"
            )
        return None

    @staticmethod
    def _spatial_pads(match: Match) -> list[int] | None:
        n = match.root.output.type.rank - 2
        pads = list(match.nodes["pad"].attrs["pads"])  # (last_lo, last_hi, prev_lo, ...)
        if len(pads) % 2 or any(not isinstance(p, int) or p < 0 for p in pads):
            return None
        pairs = [(pads[i], pads[i + 1]) for i in range(0, len(pads), 2)]
        if any(lo != hi for lo, hi in pairs) or any(lo for lo, _ in pairs[n:]):
            return None
        per_dim = [lo for lo, _ in pairs[:n]] + [0] * max(0, n - len(pairs))
        return per_dim[::-1]  # first spatial dim first

    def rewrite(self, match, rw):
        attrs = dict(match.root.attrs)
        n = match.root.output.type.rank - 2
        old = [int(p) for p in attrs["padding"]]
        old = old * n if len(old) == 1 else old
        extra = self._spatial_pads(match)
        attrs["padding"] = tuple(a + b for a, b in zip(old, extra))
        return rw.op.conv(match["x"], match["w"], match["b"], **attrs)


@register_pass("fold-batchnorm")
class FoldBatchNorm(RewritePass):
    """Fold inference batch_norm into the preceding conv / 2-D linear; zero pads into conv."""

    RULES = (ConvBatchNorm(), LinearBatchNorm(), PadIntoConv())
