"""attention-bf16: attention -> attention_bf16 (both products in bf16, the softmax in f32).

Before -> after::

    %o: f32[1, 12, 128, 64] = attention(%q, %k, %v, %mask) {scale=0.125, ...}
  ->
    %o: f32[1, 12, 128, 64] = attention_bf16(%q, %k, %v, %mask) {scale=0.125, ...}

Not exact: q, k, v and the probabilities are rounded to bf16 (8 bits of mantissa) before the
f32 sums (the op's docstring gives its definition). On a CPU with AMX the native kernel runs
both products on bf16 tiles (BERT-base int8, seq 128: attention 3.9 -> 1.9 ms of ~16 ms);
elsewhere it computes in f32. ``graphopt.quantize(graph, error_budget=...)`` applies it on AMX machines when
the end-to-end error stays within the budget (docs/quantization.md); run it by name to force
it. Each attention node is one rewrite, so ``graphopt.bisect`` can stop after any one.
"""

from __future__ import annotations

from graphopt.rewrite import RewritePass, Rule, Var, op
from graphopt.transform.registry import register_pass


class AttentionToBf16(Rule):
    """attention(q, k, v, mask?) -> attention_bf16 with the same operands and attributes."""

    name = "attention-bf16"

    def pattern(self):
        return op.attention(Var("q"), Var("k"), Var("v"), Var("mask", optional=True))

    def rewrite(self, match, rw):
        attrs = dict(match.root.attrs)
        return rw.op.attention_bf16(match["q"], match["k"], match["v"], match["mask"], **attrs)


@register_pass("attention-bf16")
class AttentionBf16(RewritePass):
    """Attention's two products in bf16 (attention_bf16): AMX tiles on the native backend."""

    RULES = (AttentionToBf16(),)
