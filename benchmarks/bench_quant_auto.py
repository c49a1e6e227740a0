"""Per-layer choice among quantization modes (issue #24): ``mode="auto"`` against every mode alone.

For each model (the digits CNNs trained here, the dev zoo with random weights; see
bench_compression_speed.py for how they are built and scored) and each backend, the fp32 graph
and its quantized forms are compiled and timed in one interleaved run (rotated, blocks of 4
samples with a pause between blocks, medians and IQR, batch 1):

* every single mode at its best settings: ``graphopt.quantize(fp32, mode, speed=True,
  error_budget=BUDGET, target=<backend>)`` (dynamic per-token for the MLP and transformers,
  per tensor for the CNNs; static with the minmax observer; weight-only int4 blocks of 32;
  bf16 compute), each keeping float what does not pay on that backend or breaks the budget;
* ``auto``: ``graphopt.quantize(fp32, "auto", error_budget=BUDGET, target=<backend>)``: each
  layer chooses among all four modes and float.

Accuracy beside every number (test accuracy for the digits models, output cosine to fp32, mean
and worst, for the random-weight zoo), the weight bytes, and what each plan made of the layers.
The quantization time of each plan is recorded too. Per-layer costs are cached per machine;
the run starts from an empty private cache, so the single modes measure their layers and
``auto`` reads the measurements it shares with them from the cache, as it would on a user's
machine after earlier runs.

Usage: python benchmarks/bench_quant_auto.py [--models digits-vgg,mlp,...]
       [--backends native,onnxruntime] [--rounds 30] [--out PATH] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

import torch

import graphopt
from bench_compression_speed import Case, build_case, measure
from graphopt.bench.machine import machine_info
from graphopt.bench.report import write_results
from graphopt.ir.extract import region_signature

SCHEMA = "graphopt-quant-auto/1"
BACKENDS = ("native", "onnxruntime")
MODES = ("dynamic", "static", "weight-only", "bf16-compute")
BUDGET = 1e-3
THREADS = 2


def plan(case: Case, mode: str, backend: str) -> tuple[graphopt.Graph, dict]:
    """The graph ``mode`` makes of the case's fp32 graph for ``backend``, and its report."""
    options = {"error_budget": BUDGET, "report": True,
               "target": graphopt.Target(backend, threads=THREADS)}
    if mode == "auto":
        options["per_token"] = case.quant_options.get("per_token", False)
    else:
        options["speed"] = True
        if mode == "dynamic":
            options.update(case.quant_options if case.quant_mode == "dynamic" else {})
    started = time.perf_counter()
    q, rep = graphopt.quantize(case.graph, mode, calibration=case.calibration, **options)
    made = collections.Counter(r.mode or rep.label for r in rep.layers if r.quantized)
    return q, {"quantized_layers": len(rep.quantized), "layers": len(rep.layers),
               "modes": dict(made), "plan_s": round(time.perf_counter() - started, 2),
               "error": rep.error, "candidates_ms": rep.speed}


def run_case(case: Case, backends: list[str], rounds: int) -> dict:
    print(f"== {case.name}", flush=True)
    results = []
    fp32_score = case.score(case.graph)
    for backend in backends:
        graphs, plans = {"fp32": case.graph}, {"fp32": {}}
        for mode in MODES + ("auto",):
            graphs[mode], plans[mode] = plan(case, mode, backend)
        timing, _ = measure(case, graphs, backend, rounds)
        rows, seen = [], {}
        for variant, g in graphs.items():
            # a plan that made the same graph as an earlier one (all float = fp32): its time
            # differs from that one's by this run's noise only
            same = seen.setdefault(region_signature(g), variant)
            if same != variant:
                plans[variant]["same_as"] = same
            score = fp32_score if variant == "fp32" else case.score(g)
            score = {k: v for k, v in score.items() if k != "classification_report"}
            rows.append({"variant": variant, **timing[variant],
                         "speedup": timing["fp32"]["p50_ms"] / timing[variant]["p50_ms"],
                         "bytes": g.constant_bytes(), **score, **plans[variant]})
            print(f"  {backend:<12} {variant:<13} {timing[variant]['p50_ms']:9.3f} ms  "
                  f"{rows[-1]['speedup']:.2f}x  {score}  {plans[variant].get('modes', '')}",
                  flush=True)
        results.append({"backend": backend, "variants": rows})
    return {"name": case.name, "notes": case.notes, "backends": results}


def main(argv: list[str] | None = None) -> int:
    global THREADS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="digits-cnn,digits-vgg,mlp,mobilenetv2,bert,gpt2")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                 "quant_auto.json"))
    p.add_argument("--quick", action="store_true", help="digits models only, 8 rounds")
    opts = p.parse_args(argv)
    THREADS = opts.threads
    torch.set_num_threads(THREADS)
    models = [m for m in opts.models.split(",") if m]
    if opts.quick:
        models, opts.rounds = [m for m in models if m.startswith("digits")], 8
    backends = [b for b in opts.backends.split(",") if b]
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GRAPHOPT_CACHE_DIR"] = cache  # every plan measures (see the docstring)
        out = {"schema": SCHEMA, "machine": machine_info(),
               "settings": {"rounds": opts.rounds, "threads": THREADS, "batch": 1,
                            "backends": backends, "error_budget": BUDGET},
               "models": [run_case(build_case(m, False), backends, opts.rounds)
                          for m in models]}
    write_results(opts.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
