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
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes searching together (default: %(default)s); they share the "
                   "study through --storage (default with N > 1: sqlite:///OUT/study.db)")
    p.add_argument("--worker", action="store_true",
                   help="join the study as a worker only (run trials until it holds "
                   "--total-trials, write nothing): what --workers starts, and what other "
                   "machines run against a shared PostgreSQL --storage")
    p.add_argument("--total-trials", type=int, default=None, metavar="N",
                   help="with --worker: stop when the study holds N completed trials")
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
    if opts.workers < 1:
        raise CliError(f"--workers {opts.workers}: expected >= 1")
    if opts.threads is None:  # every worker times with the same threads (same machine key)
        import torch

        opts.threads = torch.get_num_threads()
    if opts.workers > 1 and opts.storage is None:
        os.makedirs(opts.output, exist_ok=True)
        opts.storage = f"sqlite:///{os.path.abspath(os.path.join(opts.output, 'study.db'))}"
    space = _space(opts.space)
    pipeline = None if opts.pipeline == "none" else check_pipeline(opts.pipeline)
    _, graph = load_optimized(opts, pipeline)
    data = load_calibration(opts.calibration, graph)

    def search(total: int | None, output: str | None, seed: int):
        return graphopt.tune(graph, data, max_accuracy_drop=opts.max_accuracy_drop,
                             trials=opts.trials, timeout=opts.timeout, storage=opts.storage,
                             study=opts.study, space=space, seed=seed, threads=opts.threads,
                             output=output, progress=not opts.quiet and not opts.worker,
                             total_trials=total)

    if opts.worker:
        if opts.total_trials is None or opts.storage is None:
            raise CliError("--worker needs --storage and --total-trials")
        result = search(opts.total_trials, None, opts.seed)
        print(f"worker {os.getpid()}: study holds {len(result.trials)} trials")
        return 0
    if opts.workers == 1:
        result = search(None, opts.output, opts.seed)
    else:
        total = _completed_trials(opts.storage, opts.study) + opts.trials
        workers = [_start_worker(opts, total, opts.seed + i) for i in range(1, opts.workers)]
        search(total, None, opts.seed)
        for proc in workers:
            if proc.wait() != 0:
                print(f"warning: worker {proc.pid} exited with status {proc.returncode}")
        result = search(total, opts.output, opts.seed)  # the study is full: results only
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


def _completed_trials(storage: str, study: str) -> int:
    import optuna

    try:
        st = optuna.load_study(study_name=study, storage=storage)
    except KeyError:  # no such study yet
        return 0
    return len(st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _start_worker(opts, total: int, seed: int):
    """``graphopt tune ... --worker`` in a new process, on the same model, data and study."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "graphopt.cli", "tune", opts.model, "-o", opts.output,
            "--calibration", opts.calibration, "--storage", opts.storage, "--study",
            opts.study, "--seed", str(seed), "--pipeline", opts.pipeline, "--worker",
            "--total-trials", str(total), "-q"]
    for flag, value in (("--max-accuracy-drop", opts.max_accuracy_drop),
                        ("--space", opts.space), ("--threads", opts.threads),
                        ("--timeout", opts.timeout)):
        if value is not None:
            argv += [flag, str(value)]
    if opts.trust_pt2:
        argv.append("--trust-pt2")
    return subprocess.Popen(argv)
