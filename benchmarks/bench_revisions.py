"""Two checkouts of graphopt against each other: is the newer one slower on real models?

Each checkout (a folder holding a built ``graphopt`` tree, e.g. a ``git worktree`` of the older
revision with ``setup.py build_ext --inplace`` run in it) is imported in its own worker process
(``PYTHONPATH`` = the checkout). Workers alternate A, B, B, A, A, B, ... in blocks, so drift of the
shared machine (load, thermal, another job) hits both sides alike; each block traces, optimizes
and compiles the model, times ``--rounds`` calls of the native plan and of the onnxruntime
lowering after a warm-up, and reports their medians. The summary gives, per model and backend,
the median over blocks, the B/A ratio and its spread (min-max of per-block-pair ratios), next to
the compile time and the worst absolute difference of the two sides' outputs (same seed, same
inputs: the numbers must agree).

Usage (from the repository root, inside the project venv)::

    git worktree add /tmp/graphopt-before <rev> && ln -s ../passes /tmp/graphopt-before/graphopt/passes
    (cd /tmp/graphopt-before && ../path/to/.venv/bin/python setup.py build_ext --inplace)
    .venv/bin/python benchmarks/bench_revisions.py /tmp/graphopt-before . --blocks 6

Writes ``benchmarks/results/revisions/all.json`` (or ``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODELS: dict[str, dict] = {
    "mlp": {},
    "mobilenetv2": {},
    "resnet50": {},
    "bert": {"seq": 128},
    "gpt2": {"seq": 64},
}
BACKENDS = ("native", "onnxruntime")


def worker(model_name: str, rounds: int, warmup: int, threads: int, backends: list[str]) -> dict:
    """Runs inside the checkout under test: one block for one model."""
    import numpy as np
    import torch

    import graphopt
    from graphopt import zoo

    torch.set_num_threads(threads)
    model, args = zoo.get(model_name, **MODELS[model_name])
    with torch.no_grad():
        expected = model(*args)
    expected = expected[0] if isinstance(expected, (tuple, list)) else expected
    expected = getattr(expected, "last_hidden_state", getattr(expected, "logits", expected))
    start = time.perf_counter()
    graph = graphopt.optimize(graphopt.trace(model, args), "default")
    out: dict = {"module": os.path.dirname(graphopt.__file__),
                 "optimize_s": time.perf_counter() - start, "backends": {}}
    for backend in backends:
        start = time.perf_counter()
        fn = graphopt.compile(graph, backend=backend, threads=threads)
        compile_s = time.perf_counter() - start
        for _ in range(warmup):
            result = fn(*args)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            result = fn(*args)
            times.append(time.perf_counter() - start)
        got = result[0] if isinstance(result, (tuple, list)) else result
        got = getattr(got, "last_hidden_state", getattr(got, "logits", got))
        diff = float(np.max(np.abs(np.asarray(got, dtype=np.float64)
                                   - expected.double().numpy())))
        out["backends"][backend] = {"p50_ms": 1e3 * statistics.median(times),
                                    "compile_s": compile_s, "max_abs_diff": diff}
    return out


def run_block(checkout: str, model: str, opts) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout), OMP_NUM_THREADS=str(opts.threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", model, "--rounds",
           str(opts.rounds), "--warmup", str(opts.warmup), "--threads", str(opts.threads),
           "--backends", ",".join(opts.backends)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=checkout)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed in {checkout} on {model}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(model: str, a: list[dict], b: list[dict], backends: list[str]) -> list[dict]:
    rows = []
    for backend in backends:
        pa = [r["backends"][backend]["p50_ms"] for r in a]
        pb = [r["backends"][backend]["p50_ms"] for r in b]
        ratios = [y / x for x, y in zip(pa, pb)]
        rows.append({
            "model": model, "backend": backend,
            "a_p50_ms": statistics.median(pa), "b_p50_ms": statistics.median(pb),
            "ratio_b_over_a": statistics.median(pb) / statistics.median(pa),
            "pair_ratio_min": min(ratios), "pair_ratio_max": max(ratios),
            "a_compile_s": statistics.median(r["backends"][backend]["compile_s"] for r in a),
            "b_compile_s": statistics.median(r["backends"][backend]["compile_s"] for r in b),
            "a_optimize_s": statistics.median(r["optimize_s"] for r in a),
            "b_optimize_s": statistics.median(r["optimize_s"] for r in b),
            "max_abs_diff_vs_eager": max(r["backends"][backend]["max_abs_diff"] for r in a + b),
            "a_blocks_ms": pa, "b_blocks_ms": pb,
        })
    return rows


def table(rows: list[dict]) -> str:
    head = ["model", "backend", "A p50 ms", "B p50 ms", "B/A", "pair range", "A/B optimize s",
            "A/B compile s", "max |diff| vs eager"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], r["backend"], f"{r['a_p50_ms']:.2f}", f"{r['b_p50_ms']:.2f}",
            f"{r['ratio_b_over_a']:.3f}", f"{r['pair_ratio_min']:.2f}-{r['pair_ratio_max']:.2f}",
            f"{r['a_optimize_s']:.2f}/{r['b_optimize_s']:.2f}",
            f"{r['a_compile_s']:.2f}/{r['b_compile_s']:.2f}",
            f"{r['max_abs_diff_vs_eager']:.2e}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="*", help="A (baseline) and B (candidate) folders")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--blocks", type=int, default=6, help="blocks per checkout and model")
    # 20 rounds left a 1.3x spread between identical ONNX graphs on 5-10 ms models; 60 did not
    parser.add_argument("--rounds", type=int, default=60, help="timed calls per block")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results", "revisions"))
    opts = parser.parse_args(argv)
    opts.backends = opts.backends.split(",")
    if opts.worker:
        print(json.dumps(worker(opts.worker, opts.rounds, opts.warmup, opts.threads,
                                opts.backends)))
        return 0
    if len(opts.checkouts) != 2:
        parser.error("give two checkouts: the baseline A and the candidate B")
    rows, environment = [], {"load_avg_1m_start": os.getloadavg()[0],
                             "checkouts": [os.path.abspath(c) for c in opts.checkouts],
                             "threads": opts.threads, "rounds": opts.rounds,
                             "blocks": opts.blocks}
    for model in opts.models.split(","):
        results: dict[int, list[dict]] = {0: [], 1: []}
        for block in range(opts.blocks):
            order = (0, 1) if block % 2 == 0 else (1, 0)  # ABBAAB...: neither side always first
            for side in order:
                results[side].append(run_block(opts.checkouts[side], model, opts))
            print(f"{model}: block {block + 1}/{opts.blocks}", file=sys.stderr)
        rows += summarize(model, results[0], results[1], opts.backends)
    environment["load_avg_1m_end"] = os.getloadavg()[0]
    text = table(rows)
    print(text)
    os.makedirs(opts.out, exist_ok=True)
    with open(os.path.join(opts.out, "all.json"), "w") as f:
        json.dump({"environment": environment, "rows": rows}, f, indent=2)
    with open(os.path.join(opts.out, "summary.md"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
