"""``graphopt compress MODEL -o model.gcm`` and ``graphopt inspect model.gcm``."""

from __future__ import annotations

import argparse
import json
import os

from graphopt.cli._common import (
    CliError,
    add_model_argument,
    add_speed_arguments,
    check_pipeline,
    ensure_parent,
    info,
    load_optimized,
    paragraph,
    speed_check,
)


def add_parsers(sub, common) -> None:
    p = sub.add_parser(
        "compress", parents=[common], help="Deep Compression: prune, share weights, Huffman-code "
        "into a .gcm file",
        description=paragraph(
            "Trace/import MODEL, optimize it (--pipeline, default: default), optionally zero "
            "the smallest weights (--sparsity), replace every weight by indices into its own "
            "k-means codebook (--bits for fully connected layers, --conv-bits for "
            "convolutions) and write a .gcm compressed model: the indices sparse-coded and "
            "Huffman-coded, every section checksummed. With --data (a .npz of inputs, as "
            "graphopt quantize's --calibration) and --error-budget the layers whose sharing "
            "costs the most accuracy stay float until the mean 1 - cosine to the float model "
            "fits. Load the file with graphopt.load(path) (Python) or inspect it with "
            "graphopt inspect. Accuracy is best recovered by fine-tuning between the stages "
            "(graphopt.finetune, Python API; docs/compression.md)."),
        epilog="examples:\n"
        "  graphopt compress zoo:mlp -o mlp.gcm --sparsity 0.9\n"
        "  graphopt compress model.onnx -o model.gcm --bits 4 --conv-bits 6\n"
        "  graphopt compress zoo:mlp -o mlp.gcm --data inputs.npz --error-budget 0.001\n"
        "  graphopt inspect mlp.gcm",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the .gcm file to write")
    p.add_argument("--sparsity", type=float, default=None, metavar="S",
                   help="first zero this fraction of the weights (magnitude pruning)")
    p.add_argument("--scope", choices=("layer", "global"), default="layer",
                   help="--sparsity per weight or with one global threshold "
                   "(default: %(default)s)")
    p.add_argument("--bits", type=int, default=5, metavar="B",
                   help="codebook bits of fully connected weights, 1-12 (default: %(default)s)")
    p.add_argument("--conv-bits", type=int, default=8, metavar="B",
                   help="codebook bits of convolution weights, 1-12 (default: %(default)s)")
    p.add_argument("--bias-bits", type=int, default=None, metavar="B",
                   help="share the biases too, at this many bits (default: keep them float)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="keep weights whose node or constant name matches GLOB float "
                   "(repeatable)")
    p.add_argument("--data", metavar="NPZ",
                   help="inputs (.npz, one array per graph input, items along axis 0) for "
                   "--error-budget")
    p.add_argument("--error-budget", type=float, default=None, metavar="E",
                   help="largest mean 1 - cosine vs the float model over --data")
    p.add_argument("--pipeline", default="default", metavar="P",
                   help="pipeline run before compressing (default: %(default)s; 'none' skips)")
    add_speed_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the report")
    p.set_defaults(run=run_compress)

    i = sub.add_parser(
        "inspect", parents=[common], help="what a .gcm compressed model holds",
        description=paragraph(
            "Read and decode a .gcm compressed model (every checksum and bound is checked) and "
            "print each constant's encoding, stored and float32 size, the total ratio and the "
            "decode time."),
        epilog="example:\n  graphopt inspect mlp.gcm --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("file", metavar="FILE", help="a .gcm file")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(run=run_inspect)


def _check(opts) -> None:
    if opts.sparsity is not None and not 0.0 <= opts.sparsity < 1.0:
        raise CliError(f"--sparsity {opts.sparsity}: expected a fraction in [0, 1)")
    for flag in ("bits", "conv_bits", "bias_bits"):
        if getattr(opts, flag) is not None and not 1 <= getattr(opts, flag) <= 12:
            raise CliError(f"--{flag.replace('_', '-')} {getattr(opts, flag)}: expected 1 to 12")
    if opts.error_budget is not None and not opts.data:
        raise CliError("--error-budget needs --data FILE.npz")
    if opts.error_budget is not None and not opts.error_budget >= 0:
        raise CliError(f"--error-budget {opts.error_budget}: expected a number >= 0")
    if opts.data and not os.path.isfile(opts.data):
        raise CliError(f"data file not found: {opts.data}")
    if not opts.output.endswith(".gcm"):
        raise CliError(f"-o {opts.output}: a compressed model is written as a .gcm file")
    ensure_parent(opts.output)


def run_compress(opts) -> int:
    import graphopt

    _check(opts)
    pipeline = None if opts.pipeline == "none" else check_pipeline(opts.pipeline)
    loaded, graph = load_optimized(opts, pipeline)
    source = graph
    if opts.sparsity:
        graph = graphopt.prune(graph, "magnitude", sparsity=opts.sparsity, scope=opts.scope,
                               exclude=opts.exclude)
    data = None
    if opts.data:
        from graphopt.quant.calibration import load_calibration

        data = load_calibration(opts.data, graph)
    shared, report = graphopt.quantize(graph, "codebook", bits=opts.bits,
                                       conv_bits=opts.conv_bits, bias_bits=opts.bias_bits,
                                       exclude=tuple(opts.exclude),
                                       calibration=data, error_budget=opts.error_budget,
                                       report=True)
    if not opts.quiet:
        print(report)
    speed_check(opts, source, shared, loaded.args, "native")
    written = graphopt.compress(shared, opts.output)
    if not opts.quiet:
        print(written)
    info(f"wrote {opts.output}: {written.file_bytes:,} bytes ({written.ratio:.1f}x smaller than "
         "its float32 parameters); load it with graphopt.load()")
    return 0


def run_inspect(opts) -> int:
    from graphopt.backends.compressed_model import inspect_compressed

    report = inspect_compressed(opts.file)
    if opts.json:
        print(json.dumps({
            "file": report.path, "file_bytes": report.file_bytes,
            "dense_bytes": report.dense_bytes, "ratio": round(report.ratio, 3),
            "decode_seconds": report.decode_seconds,
            "constants": [{"name": c.name, "encoding": c.encoding, "dtype": c.dtype,
                           "shape": list(c.shape), "kept": c.kept,
                           "dense_bytes": c.dense_bytes, "stored_bytes": c.stored_bytes}
                          for c in report.constants]}, indent=1))
    else:
        print(report)
    return 0
