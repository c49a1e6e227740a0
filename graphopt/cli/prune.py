"""``graphopt prune MODEL -o OUT --flops 0.5 | --ratio 0.3 | --sparsity 0.8``."""

from __future__ import annotations

import argparse

from graphopt.cli._common import (
    CliError,
    add_model_argument,
    add_speed_arguments,
    check_pipeline,
    load,
    optimize_with_report,
    paragraph,
    prepare_output,
    speed_check,
    write_output,
)


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "prune", parents=[common], help="prune a model (channels/heads, or sparse weights)",
        description=paragraph(
            "Trace/import MODEL, prune it and save it for a backend. --flops/--ratio remove "
            "whole channels, attention heads and conv groups (a smaller dense model); "
            "--sparsity zeroes the smallest weights (unstructured; the saved model stays "
            "dense). The report lists every channel group: what was removed, or why it was "
            "left alone. Recover accuracy with graphopt.finetune (Python API)."),
        epilog="examples:\n  graphopt prune zoo:resnet50 -o r50.onnx --flops 0.5\n"
        "  graphopt prune 'zoo:bert?layers=2' -o bert.onnx --ratio 0.3 --exclude 'pooler.*'\n"
        "  graphopt prune zoo:resnet50 -o r50.onnx --flops 0.5 --scope global\n"
        "  graphopt prune zoo:mlp -o mlp.graphopt --sparsity 0.8 --scope global",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="where to save it (.onnx, .graphopt; or --backend)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--flops", type=float, metavar="F",
                      help="structured: remove this fraction of the FLOPs (0.5 = half)")
    what.add_argument("--ratio", type=float, metavar="R",
                      help="structured: remove this fraction of every channel group")
    what.add_argument("--sparsity", type=float, metavar="S",
                      help="unstructured: zero this fraction of the weights")
    p.add_argument("--importance", choices=("l1", "l2", "bn"), default="l1",
                   help="structured: channel importance (default: %(default)s)")
    p.add_argument("--scope", choices=("layer", "global"), default="layer",
                   help="unstructured: per-weight or one global threshold; structured: the same "
                   "ratio per group or one global ranking of all channels (default: "
                   "%(default)s)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="never modify constants matching GLOB (repeatable)")
    p.add_argument("--pipeline", default=None, metavar="P",
                   help="run this pipeline after pruning (e.g. default)")
    p.add_argument("--backend", choices=("onnx", "native", "torch"), default=None,
                   help="what to save (default: from OUT's extension)")
    add_speed_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the report")
    p.set_defaults(run=run)


def run(opts) -> int:
    import graphopt
    from graphopt.prune.report import human

    for flag in ("flops", "ratio", "sparsity"):
        value = getattr(opts, flag)
        if value is not None and not 0.0 <= value < 1.0:
            raise CliError(f"--{flag} {value}: expected a fraction in [0, 1)")
    check_pipeline(opts.pipeline)
    backend = prepare_output(opts.output, opts.backend)  # fails before the (slow) trace
    loaded = load(opts.model, trust_pt2=opts.trust_pt2)
    graph = loaded.graph()
    if opts.sparsity is not None:
        pruned, report = graphopt.prune(graph, "magnitude", sparsity=opts.sparsity,
                                        scope=opts.scope, exclude=opts.exclude, report=True)
    else:
        from graphopt.prune.structured import PruneError

        try:
            pruned, report = graphopt.prune(graph, "channels", flops=opts.flops,
                                            ratio=opts.ratio, importance=opts.importance,
                                            exclude=opts.exclude, scope=opts.scope,
                                            report=True)
        except PruneError as exc:
            raise CliError(str(exc), code=1) from exc
    if not opts.quiet:
        print(report)
    if opts.pipeline:
        pruned, pass_report = optimize_with_report(pruned, opts.pipeline)
        if not opts.quiet:
            print(pass_report)
    if opts.check_speed or opts.require_faster:  # against the optimized float model
        speed_check(opts, optimize_with_report(graph, "default")[0], pruned, loaded.args,
                    backend)
    write_output(pruned, opts.output, backend, f"{backend}, FLOPs "
                 f"{human(report.flops_before)} -> {human(report.flops_after)}")
    return 0
