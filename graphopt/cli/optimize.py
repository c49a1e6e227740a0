"""``graphopt optimize MODEL -o OUT``: run a pipeline and save the result for a backend."""

from __future__ import annotations

import argparse
import os

from graphopt.cli._common import (
    CliError,
    check_pipeline,
    ensure_parent,
    human_size,
    info,
    load,
    optimize_with_report,
    paragraph,
)

_BY_EXTENSION = {".onnx": "onnx", ".pt": "torch", ".pth": "torch"}


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "optimize", parents=[common], help="optimize a model and save it for a backend",
        description=paragraph(
            "Trace/import MODEL, run the pipeline, and save the optimized model: an "
            ".onnx file (onnx), a torch.save'd nn.Module (torch) or the native backend's artifact "
            "(native)."),
        epilog="examples:\n  graphopt optimize zoo:bert?layers=2 -o bert.onnx\n"
        "  graphopt optimize model.onnx -o model.opt.onnx --pipeline 'cleanup'\n"
        "  graphopt optimize mypkg.models:make_model -o model.pt --backend torch",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="the model (see `graphopt --help`)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="where to save it")
    p.add_argument("--pipeline", default="default", metavar="P",
                   help="pass pipeline text or a named pipeline (default: %(default)s)")
    p.add_argument("--backend", choices=("onnx", "native", "torch"), default=None,
                   help="what to save (default: from OUT's extension: .onnx -> onnx, "
                   ".pt/.pth -> torch)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (onnx backend)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the pass report")
    p.set_defaults(run=run)


def run(opts) -> int:
    backend = opts.backend or _BY_EXTENSION.get(os.path.splitext(opts.output)[1].lower())
    if backend is None:
        raise CliError(f"cannot tell the backend from '{opts.output}'; use --backend "
                       "onnx|native|torch (or name it .onnx / .pt)")
    check_pipeline(opts.pipeline)
    ensure_parent(opts.output)
    if backend == "native":
        _native_saver()  # fail before the (slow) trace if there is no native backend
    loaded = load(opts.model)
    graph = loaded.graph()
    optimized, report = optimize_with_report(graph, opts.pipeline)
    if not opts.quiet:
        print(report)
    if backend == "onnx":
        import graphopt

        graphopt.to_onnx(optimized, opts.output, opset=opts.opset)
    elif backend == "torch":
        import torch

        import graphopt

        torch.save(graphopt.to_torch(optimized), opts.output)
    else:
        _native_saver()(optimized, opts.output)
    size = os.path.getsize(opts.output)
    extra = [f for f in os.listdir(os.path.dirname(os.path.abspath(opts.output)))
             if f.startswith(os.path.basename(opts.output) + ".")] if backend == "onnx" else []
    print(f"wrote {opts.output} ({human_size(size)}{', + ' + ', '.join(extra) if extra else ''})"
          f": {backend}, nodes {len(graph.nodes)} -> {len(optimized.nodes)}")
    if backend == "torch":
        info("load it with torch.load(path, weights_only=False) (graphopt must be importable)")
    return 0


def _native_saver():
    """``save(graph, path)`` of the native backend, or a CliError saying it is unavailable."""
    from graphopt.bench.backends import BackendUnavailable, _native_factory

    try:
        factory = _native_factory()
    except BackendUnavailable as exc:
        raise CliError(f"--backend native is not available: {exc}", code=1) from exc

    def save(graph, path):
        compiled = factory(graph)
        if not callable(getattr(compiled, "save", None)):
            raise CliError("--backend native is not available: the native backend cannot "
                           "serialize compiled models (no save())", code=1)
        compiled.save(path)

    return save
