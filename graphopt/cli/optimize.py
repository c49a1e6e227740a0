"""``graphopt optimize MODEL -o OUT``: run a pipeline and save the result for a backend."""

from __future__ import annotations

import argparse

from graphopt.cli._common import (
    TARGET_BACKENDS,
    add_model_argument,
    add_target_arguments,
    check_pipeline,
    cli_target,
    load,
    optimize_with_report,
    paragraph,
    prepare_output,
    write_output,
)


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "optimize", parents=[common], help="optimize a model and save it for a backend",
        description=paragraph(
            "Trace/import MODEL, run the pipeline, and save the optimized model: an "
            ".onnx file (onnx), a .graphopt bundle that "
            "graphopt.backends.torch_module.load_module turns into an nn.Module without "
            "pickle (torch) or the native backend's artifact (native); OUT without an "
            "extension (or ending in /) is a model directory (graphopt.save: the graph, a "
            "manifest with hashes, and the --backend's file)."),
        epilog="examples:\n  graphopt optimize zoo:bert?layers=2 -o bert.onnx\n"
        "  graphopt optimize model.onnx -o model.opt.onnx --pipeline 'cleanup'\n"
        "  graphopt optimize mypkg.models:make_model -o model.graphopt\n"
        "  graphopt optimize zoo:mlp -o mlp_model/ --backend native   (a model directory)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="where to save it")
    p.add_argument("--pipeline", default="default", metavar="P",
                   help="pass pipeline text or a named pipeline (default: %(default)s)")
    p.add_argument("--backend", choices=("onnx", "native", "torch"), default=None,
                   help="what to save (default: from OUT's extension: .onnx -> onnx, "
                   ".graphopt -> torch)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (onnx backend)")
    add_target_arguments(p, "native backend: the saved plan's threads")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the pass report")
    p.set_defaults(run=run)


def run(opts) -> int:
    backend = prepare_output(opts.output, opts.backend)  # fails before the (slow) trace
    target = cli_target(opts, TARGET_BACKENDS[backend])
    check_pipeline(opts.pipeline)
    loaded = load(opts.model, trust_pt2=opts.trust_pt2)
    graph = loaded.graph()
    optimized, report = optimize_with_report(graph, opts.pipeline)
    if not opts.quiet:
        print(report)
    write_output(optimized, opts.output, backend,
                 f"{backend}, nodes {len(graph.nodes)} -> {len(optimized.nodes)}",
                 opset=opts.opset, threads=target.threads, pipeline=opts.pipeline)
    return 0
