"""``graphopt tune MODEL --calibration c.npz --max-accuracy-drop 0.01 -o OUT/``."""

from __future__ import annotations

import argparse
import json
import os

from graphopt.cli._common import CliError, add_model_argument, check_pipeline, load_optimized, \
    paragraph


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "tune", parents=[common], help="search pruning / quantization / backend on Optuna",
        description=paragraph(
            "Search pipelines for MODEL (pruning method and amount, quantization mode and "
            "error budget, backend) against an accuracy goal: each trial's graph is scored by "
            "the mean cosine of its outputs to the float model's on --calibration and timed "
            "against the float graph. Writes OUT/front.json (every trial, the Pareto front, "
            "the choice), OUT/pareto.png and the chosen model as the model directory "
            "OUT/model. With --storage the study is kept (sqlite:///study.db; a PostgreSQL URL "
            "for several machines) and a second run continues it. Needs the [tune] extra."),
        epilog="examples:\n"
        "  graphopt tune zoo:mlp --calibration c.npz --max-accuracy-drop 0.001 -o tuned/\n"
        "  graphopt tune model.onnx --calibration c.npz --trials 50 \\\n"
        "      --storage sqlite:///study.db --study mymodel -o tuned/   (run again to resume)\n"
        "  graphopt tune zoo:mlp --calibration c.npz --space space.json -o tuned/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="results folder")
    p.add_argument("--calibration", required=True, metavar="NPZ",
                   help="inputs (.npz, one array per graph input, items along axis 0)")
    p.add_argument("--max-accuracy-drop", type=float, default=None, metavar="D",
                   help="largest allowed drop of the mean output cosine (e.g. 0.001)")
    p.add_argument("--trials", type=int, default=20, help="trials to run (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="stop starting trials after S seconds")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage (sqlite:///study.db, postgresql://...; default: "
                   "in memory)")
    p.add_argument("--study", default="graphopt", help="study name (default: %(default)s)")
    p.add_argument("--space", default=None, metavar="JSON",
                   help="search space file (graphopt/autotune/space.py: keys prune, "
                   "prune_flops, sparsity, quantize, per_token, error_budget, backend)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pipeline", default="default", metavar="P",
                   help="pipeline run first (default: %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(run=run)


def run(opts) -> int:
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise CliError("graphopt tune needs the [tune] extra: pip install 'graphopt[tune]'",
                       code=1)
    import graphopt
    from graphopt.quant.calibration import load_calibration

    if opts.trials < 1:
        raise CliError(f"--trials {opts.trials}: expected >= 1")
    if not os.path.isfile(opts.calibration):
        raise CliError(f"calibration file not found: {opts.calibration}")
    space = _space(opts.space)
    pipeline = None if opts.pipeline == "none" else check_pipeline(opts.pipeline)
    _, graph = load_optimized(opts, pipeline)
    data = load_calibration(opts.calibration, graph)
    result = graphopt.tune(graph, data, max_accuracy_drop=opts.max_accuracy_drop,
                           trials=opts.trials, timeout=opts.timeout, storage=opts.storage,
                           study=opts.study, space=space, seed=opts.seed,
                           threads=opts.threads, output=opts.output,
                           progress=not opts.quiet)
    print(result)
    print(f"wrote {opts.output}/ (front.json, pareto.png"
          + (", model/" if result.graph is not None else "") + ")")
    return 0


def _space(path: str | None) -> dict | None:
    if path is None:
        return None
    if os.path.getsize(path) > 1 << 20:
        raise CliError(f"{path}: a search space file is at most 1 MiB")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError, RecursionError) as exc:
        raise CliError(f"{path}: not a JSON search space ({exc})") from None
