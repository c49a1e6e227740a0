"""``graphopt passes`` (the pass registry) and ``graphopt explain`` (why a rule did not fire)."""

from __future__ import annotations

import argparse
import difflib

from graphopt.cli._common import CliError, add_model_argument, check_pipeline, load, paragraph


# ----------------------------------------------------------------------------------- passes
def add_passes_parser(sub, common) -> None:
    p = sub.add_parser(
        "passes", parents=[common], help="list registered passes, their options and pipelines",
        description=paragraph(
            "List every registered pass with its one-line doc and options (name: type "
            "= default), then the named pipelines. With NAME, print that pass's full docstring."))
    p.add_argument("name", nargs="?", metavar="NAME", help="show the full doc of one pass")
    p.set_defaults(run=run_passes)


def run_passes(opts) -> int:
    from graphopt.transform.pipeline import PIPELINES
    from graphopt.transform.registry import all_passes, format_option, get_pass_info

    if opts.name:
        info = get_pass_info(opts.name)  # UnknownPassError lists the known ones
        print(info.name)
        print(info.doc)
        _print_options(info, format_option)
        rules = _rules_of(info)
        if rules:
            print("rules: " + ", ".join(r.name for r in rules))
        return 0
    passes = all_passes()
    width = max((len(n) for n in passes), default=10)
    print(f"{len(passes)} registered passes:")
    for name, info in passes.items():
        print(f"  {name:<{width}}  {info.summary}")
        _print_options(info, format_option, indent=" " * (width + 6))
    print("\nnamed pipelines:")
    pwidth = max(len(n) for n in PIPELINES)
    for name, text in PIPELINES.items():
        print(f"  {name:<{pwidth}}  {text or '(empty)'}")
    return 0


def _print_options(info, format_option, indent: str = "  ") -> None:
    for key, spec in info.options.items():
        print(f"{indent}{key}: {spec.type_name} = {format_option(spec.default)}")


# ---------------------------------------------------------------------------------- explain
def add_explain_parser(sub, common) -> None:
    p = sub.add_parser(
            "explain", parents=[common], help="say why a rewrite rule does not fire on a model",
        description=paragraph(
            "Try rewrite rule R at every candidate root node of MODEL's graph (after "
            "--pipeline if given) and report the closest partial matches: how many pattern ops "
            "matched and which condition failed. R is a rule name, pass:rule, or a pass name "
            "(all rules of that pass)."),
        epilog="examples:\n  graphopt explain zoo:mlp --rule mul-one\n"
        "  graphopt explain zoo:bert?layers=1 --rule canonicalize --pipeline cleanup",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(p)
    p.add_argument("--rule", required=True, metavar="R", help="rule (or pass) name")
    p.add_argument("--pipeline", default=None, metavar="P",
                   help="run this pipeline first (default: the traced graph as is)")
    p.add_argument("--limit", type=int, default=5, metavar="N",
                   help="explanations per rule (default: %(default)s; 0: all)")
    p.set_defaults(run=run_explain)


def _rules_of(info) -> list:
    """The rules of a registered pass (empty for passes that are not rule sets)."""
    if info.is_function:
        return []
    try:
        instance = info.create()
    except Exception:
        return []
    rules = getattr(instance, "rules", None)
    if not callable(rules):
        return []
    try:
        return list(rules())
    except Exception:
        return []


def all_rules() -> dict[str, tuple[str, object]]:
    """rule name -> (pass name, rule), over every registered rule-set pass."""
    from graphopt.transform.registry import all_passes

    out: dict[str, tuple[str, object]] = {}
    for pass_name, info in all_passes().items():
        for rule in _rules_of(info):
            out.setdefault(rule.name, (pass_name, rule))
            out.setdefault(f"{pass_name}:{rule.name}", (pass_name, rule))
    return out


def find_rules(name: str) -> list:
    from graphopt.transform.registry import all_passes

    rules = all_rules()
    if name in rules:
        return [rules[name][1]]
    passes = all_passes()
    if name in passes:
        found = _rules_of(passes[name])
        if not found:
            raise CliError(f"pass '{name}' is not a rule set; nothing to explain")
        return found
    known = sorted(n for n in rules if ":" not in n)
    close = difflib.get_close_matches(name, known + list(passes), n=2)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    raise CliError(f"unknown rule '{name}'{hint}; rules: {', '.join(known) or 'none'}")


def run_explain(opts) -> int:
    try:
        from graphopt.rewrite.tracer import explain_text
    except ImportError as exc:
        raise CliError(f"explain is unavailable: the match tracer cannot load ({exc})",
                       code=1) from exc
    rules = find_rules(opts.rule)
    check_pipeline(opts.pipeline)
    loaded = load(opts.model, trust_pt2=opts.trust_pt2)
    graph = loaded.graph()
    if opts.pipeline:
        from graphopt.cli._common import optimize_with_report

        graph, _ = optimize_with_report(graph, opts.pipeline)
    limit = None if opts.limit == 0 else opts.limit
    for i, rule in enumerate(rules):
        if i:
            print()
        print(explain_text(graph, rule, limit=limit))
    return 0
