"""fuse-attention: decomposed ``softmax(q @ k^T * scale + mask) @ v`` -> ``attention``; simplify
constant attention masks.

Before -> after (BERT-style attention written by hand)::

    graph main(%q: f32[1, 2, 4, 8], %k: f32[1, 2, 4, 8],    graph main(%q: f32[1, 2, 4, 8], ...) {
               %v: f32[1, 2, 4, 8], %m: f32[1, 1, 1, 4]) {    %o: f32[1, 2, 4, 8] = attention(
      %kt: f32[1, 2, 8, 4] = permute(%k) {perm=[0, 1, 3, 2]}      %q, %k, %v, %m) {scale=0.125}
      %s: f32[1, 2, 4, 4] = matmul(%q, %kt)                    return %o
      %d: f32[1, 2, 4, 4] = div(%s, %eight)                 }
      %a: f32[1, 2, 4, 4] = add(%d, %m)
      %p: f32[1, 2, 4, 4] = softmax(%a) {axis=-1}
      %o: f32[1, 2, 4, 8] = matmul(%p, %v)
      return %o
    }

``decomposed-attention`` matches ``matmul(softmax(M, axis=-1), v)`` where M is
``S = matmul(q, kT)``, optionally scaled (``S * c`` or ``S / c``, c a scalar constant; without
it the scale is 1, e.g. when q was scaled beforehand), then optionally masked:

* ``S + mask`` (additive float mask) -> the mask as it is: attention adds a float mask;
* ``where(cond, S, -inf)`` -> the bool mask ``cond`` (attention keeps True positions and puts
  -inf elsewhere); ``where(cond, -inf, S)`` (``masked_fill``) -> ``logical_not(cond)``;
* ``where(cond, S, c)`` with c <= -1e30 (``torch.finfo.min`` as HF writes it) -> the additive
  mask ``where(cond, 0, c)``: ``s + c`` rounds to exactly ``c`` for |s| < 1e22 (c's ulp is
  >= 2^76), so the logits are the same. Finite fills above -1e30 (-1e4, -1e9) would add to the
  logits instead of replacing them: not rewritten.

kT may be any value of shape [..., E, S]; k is ``permute(kT)`` swapping the last two dims,
merged into kT's own permute when kT is one (``k.permute(0, 2, 3, 1)`` of a [B, S, H, E]
tensor becomes ``permute(0, 2, 1, 3)``). q, k, v must have one rank, dtype and batch shape
(no broadcasting), and the fused op's inferred type must equal the matched result's. Sound
because ``attention`` is defined as exactly this expression (torch's SDPA); only the summation
order of the kernels may differ.
Interior values used elsewhere (e.g. attention probabilities returned by the model) block the
fusion, as the rewrite would compute them twice.

Constant masks of existing ``attention`` nodes (traced SDPA, or fused above):

* ``attention-trivial-mask``: an all-True bool mask or an all-zero float mask is dropped;
* ``attention-causal-mask``: a mask that is, in every [L, S] slice, the lower triangle (bool:
  True on and below the diagonal, False above; float: 0 on and below, -inf or <= -1e30 above)
  with L == S -> ``is_causal=true`` and no mask. Each row keeps its diagonal, so the masked
  weights are exactly 0 either way (exp underflows for fills <= -1e30 and finite logits).
"""

from __future__ import annotations

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Value
from graphopt.ir.types import TensorType, dims_equal
from graphopt.ops.registry import get_op
from graphopt.rewrite import Attr, Const, Match, RewritePass, Rule, Var, op
from graphopt.transform.registry import register_pass

# A fill at or below this replaces any realistic logit exactly when added to it.
HUGE_NEGATIVE = -1e30


def _scalar(name: str) -> Const:
    def scalar(v: Value) -> bool:  # bf16 constants hold raw bits: not read as numbers here
        return v.data is not None and v.data.size == 1 and v.dtype is not DType.bfloat16

    return Const(name, where=scalar, doc="a scalar")


def _value(v: Value) -> float:
    return float(v.data.reshape(()).astype(np.float64))


def _swapped(rank: int) -> tuple[int, ...]:
    return tuple(range(rank - 2)) + (rank - 1, rank - 2)


def _shortest(x: float) -> float:
    return float(str(np.float32(x)))


class DecomposedAttention(Rule):
    """matmul(softmax(q @ kT * scale + mask), v) -> attention(q, k, v, mask){scale}."""

    name = "decomposed-attention"

    def pattern(self):
        kt = op.permute(Var("k_src"), perm=Attr("k_perm")).named("kt_permute") | Var("kt")
        scores = op.matmul(Var("q"), kt).named("scores")
        scaled = (
            op.mul(scores, _scalar("scale")).named("scale_mul")
            | op.div(scores, _scalar("scale")).named("scale_div")
            | scores
        )
        masked = (
            scaled
            | op.add(scaled, Var("mask")).named("mask_add")
            | op.where(Var("cond"), scaled, _scalar("fill")).named("keep_where")
            | op.where(Var("cond"), _scalar("fill"), scaled).named("fill_where")
        )
        probs = op.softmax(masked, axis=Attr("axis")).named("softmax")
        return op.matmul(probs, Var("v"))

    def check(self, match):
        q, v = match["q"], match["v"]
        scores = match.nodes["scores"].output
        kt = scores.producer.inputs[1]
        if match.attrs["axis"] % scores.type.rank != scores.type.rank - 1:
            return f"softmax over axis {match.attrs['axis']}, not the key axis (last)"
        if not (q.type.rank == kt.type.rank == v.type.rank) or q.type.rank < 2:
            return f"q {q.type}, k^T {kt.type} and v {v.type} do not share one rank >= 2"
        if not q.dtype.is_floating or not (q.dtype == kt.dtype == v.dtype):
            return f"q, k, v dtypes {q.dtype}, {kt.dtype}, {v.dtype} are not one float dtype"
        batch = [t.type.shape[:-2] for t in (q, kt, v)]
        if not all(dims_equal(a, b) for other in batch[1:] for a, b in zip(batch[0], other)):
            return f"q, k, v batch dims {[list(b) for b in batch]} differ (a broadcast)"
        masked = match.nodes["softmax"].inputs[0]
        if not masked.type.same_as(scores.type):
            return f"the mask broadcasts the scores {scores.type} to {masked.type}"
        if "scale" in match.values:
            c = _value(match["scale"])
            if not np.isfinite(c) or c == 0:
                return f"scale constant {c} is not finite and nonzero"
        reason = self._check_mask(match, scores.type)
        if reason:
            return reason
        return self._check_type(match)

    @staticmethod
    def _check_mask(match: Match, scores: TensorType) -> str | None:
        if "mask_add" in match.nodes:
            mask = match["mask"]
            if mask.dtype != scores.dtype:
                return f"additive mask %{mask.name} is {mask.dtype}, the scores are {scores.dtype}"
        elif "cond" in match.values:
            cond = match["cond"]
            if cond.dtype is not DType.bool:
                return f"where condition %{cond.name} is {cond.dtype}, not bool"
            fill = _value(match["fill"])
            if not (fill == -np.inf or HUGE_NEGATIVE >= fill > -np.inf):
                return (
                    f"fill {fill} is not -inf or <= {HUGE_NEGATIVE}: as an additive mask it "
                    f"would shift the logits instead of replacing them"
                )
        return None

    def _check_type(self, match: Match) -> str | None:
        q, v = match["q"], match["v"]
        kt = match.nodes["scores"].inputs[1]
        k = kt.type.with_shape(kt.type.shape[:-2] + (kt.type.shape[-1], kt.type.shape[-2]))
        mask = None
        if "mask" in match.values:
            mask = match["mask"].type
        elif "cond" in match.values:
            mask = match["cond"].type
        opdef = get_op("attention")
        try:
            attrs = opdef.check_attrs({}, "fuse-attention")
            (out,) = opdef.infer_types([q.type, k, v.type, mask], attrs)
        except Exception as exc:  # noqa: BLE001  (any inference failure is a reason not to fuse)
            return f"attention rejects the operands: {exc}"
        if not out.same_as(match.root.output.type):
            return f"attention would give {out}, the matched result is {match.root.output.type}"
        return None

    def rewrite(self, match, rw):
        scores = match.nodes["scores"]
        rank = scores.output.type.rank
        if "kt_permute" in match.nodes:
            p = match.attrs["k_perm"]
            perm = tuple(p[i] for i in _swapped(rank))
            source = match["k_src"]
        else:
            perm, source = _swapped(rank), match["kt"]
        k = source if perm == tuple(range(rank)) else rw.op.permute(source, perm=perm)
        scale = 1.0
        if "scale_mul" in match.nodes:
            scale = _shortest(_value(match["scale"]))
        elif "scale_div" in match.nodes:
            scale = _shortest(1.0 / _value(match["scale"]))
        mask = self._mask(match, rw, scores.output.dtype)
        return rw.op.attention(match["q"], k, match["v"], mask, scale=scale)

    @staticmethod
    def _mask(match: Match, rw, dtype: DType) -> Value | None:
        if "mask_add" in match.nodes:
            return match["mask"]
        if "cond" not in match.values:
            return None
        cond, fill = match["cond"], _value(match["fill"])
        keep = "keep_where" in match.nodes
        if cond.kind == "const":  # build the mask as a constant, so the mask rules see it now
            kept = cond.data if keep else ~cond.data
            if fill == -np.inf:
                return rw.constant(kept, name="mask", dtype=DType.bool)
            return rw.constant(np.where(kept, 0.0, fill), name="mask", dtype=dtype)
        if fill == -np.inf:
            return cond if keep else rw.op.logical_not(cond)
        zero = rw.constant(0.0, name="zero", dtype=dtype)
        fill_c = rw.constant(fill, name="fill", dtype=dtype)
        return rw.op.where(cond, zero, fill_c) if keep else rw.op.where(cond, fill_c, zero)


def _mask_slices(mask: Value, scores_l, scores_s) -> np.ndarray | None:
    """The mask data as [n, L, S] slices, or None if its last two dims are not (L, S)."""
    shape = tuple(mask.type.shape)
    if len(shape) < 2 or shape[-2:] != (scores_l, scores_s):
        return None
    return mask.data.reshape((-1,) + shape[-2:])


class AttentionTrivialMask(Rule):
    """attention(q, k, v, all-True or all-zero constant mask) -> attention(q, k, v)."""

    name = "attention-trivial-mask"

    def pattern(self):
        return op.attention(Var("q"), Var("k"), Var("v"), Const("mask"))

    def check(self, match):
        mask = match["mask"]
        if mask.dtype is DType.bool:
            return None if bool(mask.data.all()) else f"bool mask %{mask.name} masks positions"
        if not mask.dtype.is_floating or mask.dtype is DType.bfloat16:
            return f"mask %{mask.name} is {mask.dtype}"
        return None if not np.any(mask.data) else f"float mask %{mask.name} is not all zero"

    def rewrite(self, match, rw):
        return rw.op.attention(match["q"], match["k"], match["v"], None, **dict(match.root.attrs))


class AttentionCausalMask(Rule):
    """attention(q, k, v, constant lower-triangular mask) -> attention(q, k, v){is_causal}."""

    name = "attention-causal-mask"

    def pattern(self):
        return op.attention(Var("q"), Var("k"), Var("v"), Const("mask"), is_causal=False)

    def check(self, match):
        mask = match["mask"]
        q, k = match["q"].type, match["k"].type
        n_q, n_k = q.shape[-2], k.shape[-2]
        if not (isinstance(n_q, int) and n_q == n_k):
            return f"query length {n_q} != key length {n_k}: is_causal is top-left aligned"
        slices = _mask_slices(mask, n_q, n_k)
        if slices is None:
            return f"mask %{mask.name}: {mask.type} is not [..., {n_q}, {n_k}]"
        lower = np.tril(np.ones((n_q, n_k), dtype=bool))
        if mask.dtype is DType.bool:
            causal = bool(np.all(slices == lower))
        elif mask.dtype.is_floating and mask.dtype is not DType.bfloat16:
            upper = slices[:, ~lower]
            causal = bool(np.all(slices[:, lower] == 0) and np.all(upper <= HUGE_NEGATIVE))
        else:
            return f"mask %{mask.name} is {mask.dtype}"
        return None if causal else f"mask %{mask.name} is not the causal lower triangle"

    def rewrite(self, match, rw):
        attrs = {**dict(match.root.attrs), "is_causal": True}
        return rw.op.attention(match["q"], match["k"], match["v"], None, **attrs)


@register_pass("fuse-attention")
class FuseAttention(RewritePass):
    """Decomposed softmax(q @ k^T * scale + mask) @ v -> attention; simplify constant masks."""

    RULES = (DecomposedAttention(), AttentionTrivialMask(), AttentionCausalMask())
