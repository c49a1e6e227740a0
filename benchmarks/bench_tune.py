"""``graphopt.tune`` (issue #18): how fast a model the search finds within an accuracy goal,
against fp32 eager PyTorch. ``--model digits`` (default) or ``--model minilm``.

MiniLM (``--model minilm``): all-MiniLM-L6-v2 with its trained weights, seq 128; the metric is
the mean per-token cosine of the hidden states to fp32 eager over 16 sentences (padding
excluded), the goal a mean >= 0.99 (``max_accuracy_drop`` 0.01 from the float graph's 1.0);
the space has no pruning (nothing to fine-tune it with here): quantization mode, per-token,
error budget and backend.

The CNN (graphopt.models_digits.cnn) is trained on scikit-learn's digits; the search runs
``--trials`` trials over the default space (channel pruning 20-60% of FLOPs with distillation
fine-tuning as ``recover``, quantization mode and error budget, backend), scored by test
accuracy, on a SQLite study. Then the chosen graph, compiled for its backend, and the eager
model are timed interleaved at batch 1 (rotated blocks with pauses, medians), and both
accuracies are measured on the test split. Writes JSON (every trial, the front, the choice,
the eager comparison) and the Pareto plot.

Usage: python benchmarks/bench_tune.py [--model digits|minilm] [--trials 30] [--out PATH]
       [--plot PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

import graphopt
from graphopt import models_digits
from graphopt.bench.machine import machine_info
from graphopt.bench.report import write_results
from graphopt.timing import calibrate, run_interleaved

SCHEMA = "graphopt-tune-digits/1"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("digits", "minilm"), default="digits")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--max-drop", type=float, default=0.5)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                 "tune_digits.json"))
    p.add_argument("--plot", default=None, help="copy the Pareto plot here")
    opts = p.parse_args(argv)
    torch.set_num_threads(2)
    if opts.model == "minilm":
        return minilm(opts)
    x_train, y_train, x_test, y_test = models_digits.load_digits_split()
    torch.manual_seed(0)
    model = models_digits.train(models_digits.cnn(), x_train, y_train, epochs=6)
    batch = torch.export.Dim("batch", min=1, max=4096)
    graph = graphopt.optimize(graphopt.trace(model, (x_test[:2],),
                                             dynamic_shapes=({0: batch},)))

    def accuracy(g) -> float:
        return float((graphopt.run(g, x_test).argmax(1) == y_test).float().mean()) * 100

    def recover(g):  # distillation from the float graph, as a user would fine-tune
        return graphopt.finetune(g, models_digits.batches(x_train, y_train, seed=3),
                                 loss=F.cross_entropy, teacher=graph, epochs=4, lr=1e-3,
                                 progress=False)

    data = [(x_train[i:i + 1],) for i in range(16)]
    work = tempfile.mkdtemp(prefix="graphopt_tune_")
    started = time.perf_counter()
    result = graphopt.tune(graph, data, metric=accuracy, max_accuracy_drop=opts.max_drop,
                           trials=opts.trials, storage=f"sqlite:///{work}/study.db",
                           study="digits", seed=0, recover=recover,
                           output=os.path.join(work, "out"), progress=False)
    search_s = time.perf_counter() - started
    print(result, flush=True)
    eager = _versus_eager(model, result, x_test[:1])
    with torch.no_grad():
        eager_accuracy = float((model(x_test).argmax(1) == y_test).float().mean()) * 100
    out = {"schema": SCHEMA, "machine": machine_info(),
           "settings": {"trials": opts.trials, "max_accuracy_drop": opts.max_drop,
                        "threads": 2, "batch": 1},
           "search_seconds": round(search_s, 1), "baseline_accuracy": result.baseline_metric,
           "eager_accuracy": eager_accuracy, "chosen": result.chosen,
           "chosen_accuracy": accuracy(result.graph) if result.graph is not None else None,
           "versus_eager": eager, "trials": result.trials,
           "front": [t["number"] for t in result.front], "failed": result.failed}
    print(f"search {search_s:.0f} s; chosen {eager.get('speedup', 0):.2f}x eager "
          f"({eager.get('chosen_ms', 0):.3f} vs {eager.get('eager_ms', 0):.3f} ms), accuracy "
          f"{out['chosen_accuracy']} vs eager {eager_accuracy:.2f}")
    write_results(opts.out, out)
    if opts.plot:
        shutil.copy(os.path.join(work, "out", "pareto.png"), opts.plot)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def minilm(opts) -> int:
    """The MiniLM search (see the module doc)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from graphopt.models_minilm import EVAL_SENTENCES, encode, load_minilm

    model, args = load_minilm(seq=128)
    graph = graphopt.optimize(graphopt.trace(model, args))
    sentences = [encode([s], 128) for s in EVAL_SENTENCES[:16]]
    with torch.no_grad():
        reference = [model(*a) for a in sentences]

    def token_cosine(g) -> float:
        cosines = []
        for a, ref in zip(sentences, reference):
            out = graphopt.run(g, *a)
            keep = a[1][0].bool()
            cosines.append(F.cosine_similarity(out[0][keep].double(), ref[0][keep].double(),
                                               dim=-1))
        return float(torch.cat(cosines).mean())

    space = {"prune": ["none"], "quantize": ["none", "dynamic", "static", "auto",
                                             "weight-only"]}
    work = tempfile.mkdtemp(prefix="graphopt_tune_")
    started = time.perf_counter()
    result = graphopt.tune(graph, sentences[:2], metric=token_cosine, max_accuracy_drop=0.01,
                           trials=opts.trials, storage=f"sqlite:///{work}/study.db",
                           study="minilm", seed=0, space=space,
                           output=os.path.join(work, "out"))
    search_s = time.perf_counter() - started
    print(result, flush=True)
    eager = _versus_eager(model, result, args)
    out = {"schema": "graphopt-tune-minilm/1", "machine": machine_info(),
           "settings": {"trials": opts.trials, "max_accuracy_drop": 0.01, "threads": 2,
                        "batch": 1, "seq": 128, "sentences": len(sentences)},
           "search_seconds": round(search_s, 1), "baseline_metric": result.baseline_metric,
           "chosen": result.chosen,
           "chosen_metric": token_cosine(result.graph) if result.graph is not None else None,
           "versus_eager": eager, "trials": result.trials,
           "front": [t["number"] for t in result.front], "failed": result.failed}
    print(f"search {search_s:.0f} s; chosen {eager.get('speedup', 0):.2f}x eager, per-token "
          f"cosine {out['chosen_metric']}")
    write_results(opts.out, out)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _versus_eager(model, result, x) -> dict:
    """The chosen graph on its backend and the eager model, timed interleaved (batch 1);
    ``x``: one input tensor or a tuple of them."""
    args = x if isinstance(x, tuple) else (x,)
    if result.graph is None:
        return {}
    compiled = graphopt.compile(result.graph, backend=result.chosen["params"]["backend"],
                                threads=2)

    def eager():
        with torch.no_grad():
            return model(*args)

    calls = {"eager": eager, "chosen": lambda: compiled(*args)}
    per_sample = {k: calibrate(c, 5, 0.02, time.perf_counter) for k, c in calls.items()}
    samples, _ = run_interleaved(calls, per_sample, 30, time.perf_counter, rotate=True,
                                 block=4, pause_s=0.1, block_warmup=1)
    ratios = [a / b for a, b in zip(samples["eager"], samples["chosen"])]
    return {"eager_ms": statistics.median(samples["eager"]) * 1e3,
            "chosen_ms": statistics.median(samples["chosen"]) * 1e3,
            "speedup": statistics.median(ratios)}


if __name__ == "__main__":
    sys.exit(main())
