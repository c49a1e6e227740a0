"""Declarative pattern rewriting: patterns, rules, the worklist driver and the match tracer.

A rewrite rule is a pattern (built like the expression it matches), an optional ``check``
returning a reason when the rewrite is not valid, and a ``rewrite`` building the replacement
through a :class:`Rewriter`. ``apply_rules`` drives a rule set to a fixpoint; ``RewritePass``
turns a rule set into a pass; ``explain`` says why a rule did not fire. See
docs/writing-a-pass.md for a worked example.

Modules:
    pattern   Var, Const, Attr, op (the pattern builder), alternatives with ``|``
    matcher   structural matching, Match, match_at, escape check, failure tracking
    rewriter  Rewriter (all mutation, counted) and RewriteStats
    rule      Rule base class and the rule() helper
    driver    apply_rules, find_match, RewritePass
    tracer    explain, Explanation
    tracking  per-pass rewrite log and budget (allow_rewrite, track_rewrites)
    dce       eliminate_dead_code: the one dead-code elimination (dce pass, ONNX importer)
    layout    the one reshape/permute canonicalizer's rules (canonicalize pass, ONNX importer)
"""

from graphopt.rewrite.dce import eliminate_dead_code
from graphopt.rewrite.driver import RewritePass, apply_rules, find_match
from graphopt.rewrite.layout import layout_rules
from graphopt.rewrite.matcher import Match, match_at
from graphopt.rewrite.pattern import AnyOf, Attr, Const, OpPattern, Pattern, Var, op
from graphopt.rewrite.rewriter import Rewriter, RewriteStats, RuleStats
from graphopt.rewrite.rule import Rule, rule
from graphopt.rewrite.tracer import Explanation, explain, explain_text
from graphopt.rewrite.tracking import allow_rewrite, budget_exhausted, track_rewrites

__all__ = [
    "AnyOf",
    "Attr",
    "Const",
    "Explanation",
    "Match",
    "OpPattern",
    "Pattern",
    "RewritePass",
    "RewriteStats",
    "Rewriter",
    "Rule",
    "RuleStats",
    "Var",
    "allow_rewrite",
    "apply_rules",
    "budget_exhausted",
    "eliminate_dead_code",
    "explain",
    "explain_text",
    "find_match",
    "layout_rules",
    "match_at",
    "op",
    "rule",
    "track_rewrites",
]
