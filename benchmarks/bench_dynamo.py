"""torch.compile(backend="graphopt") vs the default inductor backend (and eager): first-call
compile time and steady-state latency, batch 1, on an MLP, a small CNN and a 2-layer BERT.

Each backend compiles a fresh copy of the model (``torch._dynamo.reset()`` first); the first
call's wall time is the compile time. Steady state: the compiled callables are timed interleaved
in a rotating order (``graphopt.timing``), medians. Writes JSON with ``--json``.

Usage: python benchmarks/bench_dynamo.py [--models mlp,cnn,bert] [--rounds 40] [--json PATH]

Inductor caches compiled graphs on disk; for its cold compile time (a fresh process on a fresh
machine) run with ``TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_FX_GRAPH_CACHE=0
TORCHINDUCTOR_AUTOGRAD_CACHE=0``. The first model also pays inductor's one-time start-up.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from graphopt import zoo
from graphopt.bench.machine import machine_info
from graphopt.timing import calibrate, run_interleaved


def model_and_args(name: str):
    torch.manual_seed(0)
    if name == "mlp":
        model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(),
                                    torch.nn.Linear(1024, 1024), torch.nn.GELU(),
                                    torch.nn.Linear(1024, 10))
        return model.eval(), (torch.randn(1, 256),)
    if name == "cnn":
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2), torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.BatchNorm2d(64),
            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            torch.nn.Linear(64, 10))
        return model.eval(), (torch.randn(1, 3, 32, 32),)
    model, args = zoo.get("bert", layers=2, seq=32)
    return model.eval(), args


def run(name: str, rounds: int) -> dict:
    model, args = model_and_args(name)
    calls, compile_s = {"eager": lambda: model(*args)}, {}
    for backend in ("inductor", "graphopt"):
        torch._dynamo.reset()
        compiled = torch.compile(copy.deepcopy(model), backend=backend)
        start = time.perf_counter()
        with torch.no_grad():
            compiled(*args)
        compile_s[backend] = time.perf_counter() - start
        calls[backend] = (lambda c=compiled: c(*args))
    with torch.no_grad():
        per_sample = {k: calibrate(c, 5, 0.01, time.perf_counter) for k, c in calls.items()}
        samples, _ = run_interleaved(calls, per_sample, rounds, time.perf_counter, rotate=True)
    ms = {k: round(statistics.median(v) * 1e3, 4) for k, v in samples.items()}
    return {"model": name, "compile_s": {k: round(v, 2) for k, v in compile_s.items()},
            "p50_ms": ms}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,cnn,bert")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--json", default=None)
    opts = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    results = [run(name, opts.rounds) for name in opts.models.split(",")]
    for r in results:
        print(f"{r['model']:5s} compile: inductor {r['compile_s']['inductor']:.2f} s, graphopt "
              f"{r['compile_s']['graphopt']:.2f} s; p50: eager {r['p50_ms']['eager']:.3f} ms, "
              f"inductor {r['p50_ms']['inductor']:.3f} ms, graphopt {r['p50_ms']['graphopt']:.3f} "
              "ms")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"machine": machine_info(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
