"""Winograd F(2x2, 3x3) against the direct blocked convolution on the native runtime.

Each shape is a 3x3, stride-1, padding-1 convolution (C -> C channels, H x W, batch 1) read
from a blocked value (a 1x1 convolution before it, so the 3x3 one sees the blocked layout it
sees inside a network) with a ReLU after it. Two plans of the same model are built, one with
GRAPHOPT_NATIVE_WINOGRAD=0 (direct) and one with =1 (Winograd), and the 3x3 step of each is
timed through ``NativeModule.profile`` in interleaved rounds (order reversed every other
round, medians). Accuracy: the largest error of the whole model's output relative to its
largest magnitude, against float64 torch, for both paths (Winograd must not be less exact
than the direct sum by more than rounding).

Usage: python benchmarks/bench_winograd.py [--threads 2] [--rounds 30] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch
import torch.nn as nn

import graphopt
from graphopt.bench.machine import machine_info
from graphopt.native.lower.blocked import WINOGRAD_ENV, winograd_pays

# ResNet-50's stride-1 3x3 layers, VGG-like wide early layers and narrow ones.
SHAPES = [(16, 56), (32, 56), (64, 56), (64, 112), (128, 28), (256, 14), (512, 7)]


def build(c: int, size: int, mode: str, threads: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, 1, 1), nn.ReLU()).eval()
    x = torch.randn(1, c, size, size)
    os.environ[WINOGRAD_ENV] = mode
    try:
        graph = graphopt.optimize(graphopt.trace(model, (x,)), "default")
        fn = graphopt.compile(graph, backend="native", fallback="error", threads=threads)
        fn(x)  # plans with this mode
    finally:
        os.environ.pop(WINOGRAD_ENV, None)
    step = max(graph.nodes, key=lambda n: n.op in ("conv", "fused_conv")
               and n.inputs[1].type.shape[-1] == 3).name
    return model, x, fn, step


@torch.no_grad()
def relative_error(model, x, fn) -> float:
    ref = model.double()(x.double())
    model.float()
    out = fn(x).double()
    return float((out - ref).abs().max() / ref.abs().max())


def measure(c: int, size: int, threads: int, rounds: int) -> dict:
    built = {mode: build(c, size, mode, threads) for mode in ("0", "1")}
    times = {mode: [] for mode in built}
    for r in range(rounds):
        for mode in (("0", "1") if r % 2 == 0 else ("1", "0")):
            _, x, fn, step = built[mode]
            times[mode].append(next(s for name, _, s in fn.profile(x) if name == step))
    direct, wino = (statistics.median(times[m]) * 1e6 for m in ("0", "1"))
    flops = 2.0 * c * c * 9 * size * size
    return {"c": c, "size": size, "direct_us": direct, "winograd_us": wino,
            "speedup": direct / wino, "direct_gflops": flops / direct / 1e3,
            "auto_uses_winograd": winograd_pays(c, c),
            "direct_max_rel_err": relative_error(*built["0"][:3]),
            "winograd_max_rel_err": relative_error(*built["1"][:3])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--json", default=None)
    opts = p.parse_args()
    torch.set_num_threads(opts.threads)
    info = machine_info()
    print(f"{info.get('cpu_model')}, {opts.threads} threads, {opts.rounds} interleaved rounds, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'C':>4} {'HxW':>7} {'direct us':>10} {'winograd us':>12} {'speedup':>8} "
          f"{'direct GF/s':>12} {'auto':>5} {'err direct':>11} {'err winograd':>13}")
    rows = []
    for c, size in SHAPES:
        row = measure(c, size, opts.threads, opts.rounds)
        rows.append(row)
        print(f"{c:>4} {size:>3}x{size:<3} {row['direct_us']:>10.1f} {row['winograd_us']:>12.1f} "
              f"{row['speedup']:>7.2f}x {row['direct_gflops']:>12.1f} "
              f"{'yes' if row['auto_uses_winograd'] else 'no':>5} "
              f"{row['direct_max_rel_err']:>11.1e} {row['winograd_max_rel_err']:>13.1e}",
              flush=True)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"machine": info, "threads": opts.threads, "rounds": opts.rounds,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
