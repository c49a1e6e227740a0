"""Does pruning turn into speed? Latency of structurally pruned models, and sparse vs dense GEMM.

Part 1 (models): ResNet-50, MobileNetV2 (224x224) and BERT-base (seq 128) pruned to 0%, 30% and
50% fewer FLOPs (``graphopt.prune(graph, flops=..., round_to=8)``, L1 importance), then run on
onnxruntime and, when the native backend exists and covers the model, on it. All variants of
one model are timed in interleaved rounds (v0 v30 v50 v0 v30 v50 ...); medians in ms.

Part 2 (kernels): ``graphopt._C.sparse_linear`` (CSR) against the dense ``graphopt._C.sgemm`` and
``torch.nn.functional.linear`` on BERT-base linears (in x out = 768x768, 768x3072, 3072x768,
M = 128 tokens) at 50/80/90/95% unstructured sparsity, interleaved; the density where CSR starts
to win is what ``graphopt.prune.sparse.SPARSE_KERNEL_MAX_DENSITY`` should say.

Writes benchmarks/results/prune_latency.png, prune_sparse_gemm.png and prune.json.

Usage:
    python benchmarks/bench_prune.py [--models resnet50,mobilenetv2,bert] [--threads 2]
        [--backends onnxruntime,native] [--rounds 15] [--size 224] [--seq 128] [--layers 12]
        [--skip-models] [--skip-kernels]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

import graphopt
from graphopt import zoo
from graphopt.bench.timing import calibrate, run_interleaved
from graphopt.compile import BACKENDS
from graphopt.prune import count_flops

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CUTS = (0.0, 0.3, 0.5)


def _load(name: str, opts) -> tuple[torch.nn.Module, tuple]:
    if name == "bert":
        return zoo.get("bert", layers=opts.layers, seq=opts.seq)
    return zoo.get(name, size=opts.size)


def _compile(graph, backend: str, threads: int):
    if backend == "native":
        return graphopt.compile(graph, backend="native", threads=threads)  # no silent fallback
    return graphopt.compile(graph, backend=backend, threads=threads)


def bench_models(opts) -> dict:
    results = {}
    for name in opts.models:
        t0 = time.perf_counter()
        model, args = _load(name, opts)
        graph = graphopt.trace(model, args)
        variants, calls, info = {}, {}, {}
        for cut in CUTS:
            pruned = graph if cut == 0 else graphopt.prune(graph, flops=cut, round_to=8)
            flops = count_flops(pruned).total
            for backend in [b for b in opts.backends if b in BACKENDS]:
                key = f"{backend} -{cut:.0%}"
                try:
                    fn = _compile(pruned, backend, opts.threads)
                    fn(*args)
                    start = time.perf_counter()
                    fn(*args)
                    once = time.perf_counter() - start
                except Exception as exc:  # a backend that cannot run the model is reported
                    info[key] = f"unavailable: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                    continue
                if once > opts.slow:
                    info[key] = f"skipped: {once:.1f} s per call (> --slow {opts.slow} s)"
                    continue
                calls[key] = (lambda fn=fn, args=args: fn(*args))
                variants[key] = {"backend": backend, "cut": cut, "gflops": flops / 1e9}
        per = {k: calibrate(c, 2, 0.05, time.perf_counter) for k, c in calls.items()}
        samples, rounds = run_interleaved(calls, per, opts.rounds, time.perf_counter,
                                          max_time_s=opts.max_time)
        for key, s in samples.items():
            variants[key]["median_ms"] = 1e3 * statistics.median(s)
            variants[key]["min_ms"] = 1e3 * min(s)
        results[name] = {"variants": variants, "unavailable": info, "rounds": rounds}
        print(f"\n{name} ({rounds} rounds, {time.perf_counter() - t0:.0f} s)")
        for key, v in variants.items():
            base = variants.get(f"{v['backend']} -0%", v)
            print(f"  {key:<22} {v['gflops']:7.2f} GFLOP  {v['median_ms']:8.2f} ms  "
                  f"{base['median_ms'] / v['median_ms']:.2f}x")
        for key, why in info.items():
            print(f"  {key:<22} {why[:110]}")
    return results


def bench_kernels(opts) -> dict:
    from graphopt import _C
    from graphopt.prune.sparse import SparseWeight

    torch.set_num_threads(opts.threads)
    rng = np.random.default_rng(0)
    out = {}
    for k, n in ((768, 768), (768, 3072), (3072, 768)):
        m = 128
        x = rng.standard_normal((m, k)).astype(np.float32)
        w0 = rng.standard_normal((n, k)).astype(np.float32)
        tx, tw = torch.from_numpy(x), torch.from_numpy(w0)
        calls = {"dense sgemm": lambda x=x, w=w0: _C.sgemm(x, w, None, True, "none",
                                                           opts.threads),
                 "dense torch": lambda tx=tx, tw=tw: torch.nn.functional.linear(tx, tw)}
        for s in (0.5, 0.8, 0.9, 0.95):
            w = w0.copy()
            w[rng.random(w.shape) < s] = 0
            sw = SparseWeight.from_dense(w)
            calls[f"csr {s:.0%}"] = (lambda sw=sw, x=x, k=k: _C.sparse_linear(
                x, sw.indptr, sw.indices, sw.values, k, None, "none", opts.threads))
        per = {key: calibrate(c, 3, 0.02, time.perf_counter) for key, c in calls.items()}
        samples, rounds = run_interleaved(calls, per, opts.kernel_rounds, time.perf_counter)
        med = {key: 1e3 * statistics.median(s) for key, s in samples.items()}
        shape = f"{k}x{n}"
        out[shape] = med
        dense = med["dense sgemm"]
        print(f"\nM=128, {shape} ({rounds} rounds): dense sgemm {dense:.3f} ms, "
              f"torch {med['dense torch']:.3f} ms")
        for key, t in med.items():
            if key.startswith("csr"):
                print(f"  {key:<10} {t:7.3f} ms  {dense / t:5.2f}x vs dense sgemm, "
                      f"{med['dense torch'] / t:5.2f}x vs torch")
    return out


def _linear_graph(m: int, w: np.ndarray):
    from graphopt.ir.dtypes import DType
    from graphopt.ir.graph import Graph
    from graphopt.ir.types import TensorType

    g = Graph("linear")
    x = g.add_input("x", TensorType((m, w.shape[1]), DType.float32))
    node = g.create_node("linear", [x, g.add_constant(w, "w"), None])
    g.set_outputs(node.outputs)
    return g


def bench_plan_kernels(opts) -> dict:
    """The native plan's "sparse_linear" (CSR) step against its packed dense "gemm" step (GEMV
    for M <= 4) on one linear, per M / shape / sparsity: what the cost model in
    graphopt.prune.sparse.use_sparse_kernel is set from."""
    rng = np.random.default_rng(0)
    out = {}
    for m in opts.plan_rows:
        for k, n in ((768, 768), (768, 3072), (3072, 768)):
            w0 = rng.standard_normal((n, k)).astype(np.float32)
            x = torch.randn(m, k)
            dense = graphopt.compile(_linear_graph(m, w0), backend="native",
                                     threads=opts.threads, sparse="never").plan
            calls = {"dense": lambda p=dense, x=x: p.run([x])}
            for s in (0.5, 0.7, 0.8, 0.9, 0.95):
                w = w0.copy()
                w[rng.random(w.shape) < s] = 0
                plan = graphopt.compile(_linear_graph(m, w), backend="native",
                                        threads=opts.threads, sparse="always").plan
                calls[f"csr {s:.0%}"] = (lambda p=plan, x=x: p.run([x]))
            per = {key: calibrate(c, 3, 0.02, time.perf_counter) for key, c in calls.items()}
            samples, rounds = run_interleaved(calls, per, opts.kernel_rounds, time.perf_counter)
            med = {key: 1e3 * statistics.median(s) for key, s in samples.items()}
            key = f"M={m} {k}x{n}"
            out[key] = med
            print(f"plan {key} ({rounds} rounds): dense {med['dense']:.4f} ms; CSR speedup " +
                  ", ".join(f"{c.split()[1]} {med['dense'] / t:.2f}x" for c, t in med.items()
                            if c.startswith("csr")), flush=True)
    return out


def plot(models: dict, kernels: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if models:
        fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
        for ax, (name, res) in zip(axes[0], models.items()):
            backends = sorted({v["backend"] for v in res["variants"].values()})
            width = 0.8 / max(len(backends), 1)
            for i, backend in enumerate(backends):
                ys = [res["variants"].get(f"{backend} -{c:.0%}", {}).get("median_ms", np.nan)
                      for c in CUTS]
                xs = np.arange(len(CUTS)) + i * width
                bars = ax.bar(xs, ys, width, label=backend)
                for bar, y in zip(bars, ys):
                    if np.isfinite(y):
                        ax.annotate(f"{y:.1f}", (bar.get_x() + bar.get_width() / 2, y),
                                    ha="center", va="bottom", fontsize=7)
            ax.set_xticks(np.arange(len(CUTS)) + width * (len(backends) - 1) / 2)
            ax.set_xticklabels([f"-{c:.0%} FLOPs" for c in CUTS])
            ax.set_title(name)
            ax.set_ylabel("median latency (ms)")
            ax.legend(fontsize=7)
        fig.suptitle("structured pruning (graphopt.prune flops=...): latency, interleaved medians")
        fig.tight_layout()
        path = os.path.join(RESULTS, "prune_latency.png")
        fig.savefig(path, dpi=120)
        written.append(path)
    if kernels:
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        for shape, med in kernels.items():
            sparsities = [k for k in med if k.startswith("csr")]
            ax.plot([int(k.split()[1][:-1]) for k in sparsities],
                    [med["dense sgemm"] / med[k] for k in sparsities], marker="o",
                    label=f"M=128, {shape}")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("speedup of CSR vs dense sgemm")
        ax.set_title("graphopt._C.sparse_linear vs dense (interleaved medians)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(RESULTS, "prune_sparse_gemm.png")
        fig.savefig(path, dpi=120)
        written.append(path)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50,mobilenetv2,bert")
    p.add_argument("--backends", default="onnxruntime,native",
                   help="backends to time (those not registered are skipped)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--kernel-rounds", type=int, default=30)
    p.add_argument("--max-time", type=float, default=120.0, help="timing budget per model (s)")
    p.add_argument("--slow", type=float, default=2.0,
                   help="skip a backend whose call takes longer than this (s)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--skip-models", action="store_true")
    p.add_argument("--skip-kernels", action="store_true")
    p.add_argument("--plan-rows", default="1,128",
                   help="M values of the plan-kernel (CSR vs dense step) comparison")
    p.add_argument("--skip-plan-kernels", action="store_true")
    opts = p.parse_args(argv)
    opts.models = [m for m in opts.models.split(",") if m]
    opts.backends = [b for b in opts.backends.split(",") if b]
    opts.plan_rows = [int(m) for m in opts.plan_rows.split(",") if m]
    torch.set_num_threads(opts.threads)
    os.makedirs(RESULTS, exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    models = {} if opts.skip_models else bench_models(opts)
    kernels = {}
    if not opts.skip_kernels:
        from graphopt.prune.sparse import native_available

        if native_available():
            kernels = bench_kernels(opts)
        else:
            print("graphopt._C.sparse_linear is not built: skipping the kernel benchmark")
    plan_kernels = {} if opts.skip_plan_kernels else bench_plan_kernels(opts)
    path = os.path.join(RESULTS, "prune.json")
    saved = {}
    if os.path.exists(path):  # a partial run (--skip-*) keeps the other part's results
        with open(path) as f:
            saved = json.load(f)
    models = models or saved.get("models", {})
    kernels = kernels or saved.get("kernels_ms", {})
    plan_kernels = plan_kernels or saved.get("plan_kernels_ms", {})
    with open(path, "w") as f:
        json.dump({"load_avg_1m": os.getloadavg()[0], "threads": opts.threads,
                   "models": models, "kernels_ms": kernels,
                   "plan_kernels_ms": plan_kernels}, f, indent=1)
    for path in plot(models, kernels):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
