"""Native linear layers on codebook-shared weights: decoded at plan time (float32 GEMM / GEMV)
vs read through the codebook inside the product (``codebook="lookup"``, "linear_codebook").

For square layers of growing size and a few batch sizes, each variant's median time per call
(interleaved rounds in a rotating order, after a warm-up), the weight bytes the plan holds, and
the largest difference to the reference interpreter. Writes JSON with ``--json``; the published
run is rendered into docs/compression.md.

Usage: python benchmarks/bench_codebook_gemv.py [--sizes 512,1024,2048,4096] [--rows 1,4,16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

import graphopt
from graphopt.bench.machine import machine_info

SCHEMA = "graphopt-codebook-gemv/1"


def layer_graph(size: int, bits: int, rows: int):
    torch.manual_seed(size)
    model = torch.nn.Linear(size, size)
    graph = graphopt.trace(model, (torch.randn(rows, size),))
    return graphopt.quantize(graph, "codebook", bits=bits)


def measure(size: int, rows: int, bits: int, rounds: int, threads: int) -> dict:
    graph = layer_graph(size, bits, rows)
    x = torch.randn(rows, size)
    expected = graphopt.run(graph, x).numpy()
    modules = {mode: graphopt.compile(graph, backend="native", codebook=mode, threads=threads)
               for mode in ("decode", "lookup")}
    calls = max(1, int(2e7 // (size * size)))  # about the same work per timed sample
    times = {mode: [] for mode in modules}
    for module in modules.values():
        for _ in range(3 * calls):
            module(x)
    names = list(modules)
    for r in range(rounds):
        for mode in names[r % 2:] + names[:r % 2]:
            start = time.perf_counter()
            for _ in range(calls):
                modules[mode](x)
            times[mode].append((time.perf_counter() - start) / calls * 1e3)
    row = {"size": size, "rows": rows, "bits": bits}
    for mode, module in modules.items():
        row[f"{mode}_ms"] = round(statistics.median(times[mode]), 4)
        row[f"{mode}_weight_bytes"] = int(sum(a.nbytes for a in module._last.constants))
        row[f"{mode}_max_error"] = float(np.abs(np.asarray(module(x)) - expected).max())
    row["speedup"] = round(row["decode_ms"] / row["lookup_ms"], 3)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="512,1024,2048,4096")
    p.add_argument("--rows", default="1,4,16")
    p.add_argument("--bits", type=int, default=5)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", default=None)
    opts = p.parse_args()
    results = []
    print(f"{'size':>6s} {'rows':>5s} {'decode ms':>10s} {'lookup ms':>10s} {'speed-up':>9s} "
          f"{'weight MB':>10s} {'lookup MB':>10s}")
    for size in (int(s) for s in opts.sizes.split(",")):
        for rows in (int(r) for r in opts.rows.split(",")):
            r = measure(size, rows, opts.bits, opts.rounds, opts.threads)
            results.append(r)
            print(f"{size:6d} {rows:5d} {r['decode_ms']:10.4f} {r['lookup_ms']:10.4f} "
                  f"{r['speedup']:8.2f}x {r['decode_weight_bytes'] / 1e6:10.2f} "
                  f"{r['lookup_weight_bytes'] / 1e6:10.2f}")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"schema": SCHEMA, "machine": machine_info(), "bits": opts.bits,
                       "threads": opts.threads, "rounds": opts.rounds, "results": results},
                      f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
