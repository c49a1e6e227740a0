"""``graphopt export MODEL --triton REPO/``: a Triton Inference Server model repository."""

from __future__ import annotations

import argparse
import os

from graphopt.cli._common import CliError, add_model_argument, check_pipeline, load_optimized, \
    paragraph


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "export", parents=[common], help="export a model for another server (Triton)",
        description=paragraph(
            "Trace/import MODEL (a model directory too), optimize it (--pipeline) and write it "
            "as a Triton model repository entry: REPO/NAME/config.pbtxt and "
            "REPO/NAME/1/model.onnx (platform onnxruntime_onnx). A shared dynamic first dim "
            "becomes Triton's batch dim, with dynamic batching on."),
        epilog="examples:\n"
        "  graphopt export zoo:mlp --triton models/ --name mlp\n"
        "  graphopt export minilm_dir/ --triton models/ --max-batch 16\n"
        "  tritonserver --model-repository=models/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(p)
    p.add_argument("--triton", required=True, metavar="REPO",
                   help="the Triton model repository to write into")
    p.add_argument("--name", default=None,
                   help="the model's name in the repository (default: from MODEL)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="max_batch_size for a model with a batch dim (default: %(default)s)")
    p.add_argument("--max-queue-delay-us", type=int, default=100, metavar="US",
                   help="dynamic batching delay (default: %(default)s)")
    p.add_argument("--instances", type=int, default=1, metavar="N",
                   help="CPU instances of the model (default: %(default)s)")
    p.add_argument("--pipeline", default="default", metavar="P",
                   help="pipeline run first (default: %(default)s; 'none' skips)")
    p.add_argument("--int8-weights", choices=("s8", "u8"), default="s8",
                   help="int8 weights of a quantized model: s8 (default, fast with VNNI) or "
                   "u8 (exact on servers without VNNI)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the result")
    p.set_defaults(run=run)


def run(opts) -> int:
    from graphopt.triton import export_triton

    pipeline = None if opts.pipeline == "none" else check_pipeline(opts.pipeline)
    loaded, graph = load_optimized(opts, pipeline)
    name = opts.name or loaded.name
    if not name:
        raise CliError("cannot tell the model's name: pass --name")
    folder = export_triton(graph, opts.triton, name, max_batch=opts.max_batch,
                           max_queue_delay_us=opts.max_queue_delay_us,
                           instances=opts.instances, int8_weights=opts.int8_weights)
    with open(os.path.join(folder, "config.pbtxt")) as f:
        batch = next(line for line in f if line.startswith("max_batch_size"))
    print(f"wrote {folder}/ (config.pbtxt, 1/model.onnx; {batch.strip()})")
    return 0
