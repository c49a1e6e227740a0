"""Does pruning turn into speed? Latency of structurally pruned models, and sparse vs dense GEMM.

Part 1 (models): ResNet-50, MobileNetV2 (224x224) and BERT-base (seq 128) pruned to 0%, 30% and
50% fewer FLOPs (``graphopt.prune(graph, flops=..., round_to=8, scope=...)``, L1 importance),
optimized (``--pipeline``, default "default") and run on onnxruntime and the native backend (no
fallback: a backend that cannot run a variant is reported). All variants of one model are timed
in interleaved rounds (v0 v30 v50 v0 v30 v50 ... over both backends); medians in ms.

Part 1b (unstructured, native): BERT-base (seq 128) with 80% / 90% of its linear weights zeroed
(``graphopt.prune(graph, "magnitude", sparsity=...)``) on the native backend, the CSR kernel
chosen by the plan's cost model (``sparse="auto"``) against the same graph on the dense GEMM
(``sparse="never"``) and the unpruned model, interleaved.

Part 2 (kernels): ``graphopt._C.sparse_linear`` (CSR) against the dense ``graphopt._C.sgemm`` and
``torch.nn.functional.linear`` on BERT-base linears (in x out = 768x768, 768x3072, 3072x768,
M = 128 tokens) at 50/80/90/95% unstructured sparsity, interleaved; the density where CSR starts
to win is what ``graphopt.prune.sparse.SPARSE_KERNEL_MAX_DENSITY`` should say.

Part 2b (plan kernels): the native plan's "sparse_linear" step against its packed dense "gemm"
step on the same linears for M = 1 and 128 rows (``--plan-rows``): what the cost model in
``graphopt.native.lower.sparse`` is fitted on.

Writes benchmarks/results/prune_latency.png (latency vs pruning ratio, one line per backend),
prune_sparse_gemm.png, prune_sparse_plan.png and prune.json.

Usage:
    python benchmarks/bench_prune.py [--models resnet50,mobilenetv2,bert] [--threads 2]
        [--backends onnxruntime,native] [--rounds 15] [--size 224] [--seq 128] [--layers 12]
        [--scope layer|global] [--pipeline default] [--sparsities 0.8,0.9]
        [--skip-models] [--skip-sparse-models] [--skip-kernels] [--skip-plan-kernels]
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
from graphopt.timing import calibrate, run_interleaved
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
            pruned = graph if cut == 0 else graphopt.prune(graph, flops=cut, round_to=8,
                                                            scope=opts.scope)
            flops = count_flops(pruned).total
            if opts.pipeline:
                pruned = graphopt.optimize(pruned, opts.pipeline)
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


def bench_sparse_models(opts) -> dict:
    """BERT-base, unstructured: native with the CSR kernel chosen automatically vs dense."""
    t0 = time.perf_counter()
    model, args = zoo.get("bert", layers=opts.layers, seq=opts.seq)
    graph = graphopt.trace(model, args)
    if opts.pipeline:
        graph = graphopt.optimize(graph, opts.pipeline)
    calls, info = {}, {}
    base = graphopt.compile(graph, backend="native", threads=opts.threads)
    calls["dense (unpruned)"] = (lambda fn=base: fn(*args))
    for s in opts.sparsities:
        pruned = graphopt.prune(graph, "magnitude", sparsity=s)
        for mode in ("auto", "never"):
            fn = graphopt.compile(pruned, backend="native", threads=opts.threads, sparse=mode)
            chosen = sum(st.kernel == "sparse_linear" for st in fn.plan.steps)
            linears = sum(n.op in ("linear", "fused_linear") for n in pruned.nodes)
            key = f"{s:.0%} sparse, {'CSR auto' if mode == 'auto' else 'dense'}"
            info[key] = {"sparsity": s, "mode": mode, "csr_steps": chosen, "linears": linears}
            calls[key] = (lambda fn=fn: fn(*args))
        out = calls[f"{s:.0%} sparse, CSR auto"]()
        info[f"{s:.0%} sparse, CSR auto"]["max_abs_diff_vs_dense_same_graph"] = float(max(
            (a - b).abs().max() for a, b in zip(_leaves(out), _leaves(calls[
                f"{s:.0%} sparse, dense"]()))))
    per = {k: calibrate(c, 2, 0.05, time.perf_counter) for k, c in calls.items()}
    samples, rounds = run_interleaved(calls, per, opts.rounds, time.perf_counter,
                                      max_time_s=opts.max_time)
    med = {k: 1e3 * statistics.median(v) for k, v in samples.items()}
    dense = med["dense (unpruned)"]
    print(f"\nbert unstructured, native ({rounds} rounds, {time.perf_counter() - t0:.0f} s)")
    for key, t in med.items():
        extra = info.get(key, {})
        steps = (f"  {extra['csr_steps']}/{extra['linears']} linears on CSR" if extra else "")
        print(f"  {key:<22} {t:8.2f} ms  {dense / t:.2f}x vs unpruned{steps}")
    return {"median_ms": med, "info": info, "rounds": rounds}


def _leaves(out) -> list:
    import torch.utils._pytree as pytree

    return [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]


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
    graphopt.native.lower.sparse.use_sparse_kernel is set from."""
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


def plot(models: dict, kernels: dict, sparse: dict, plan_kernels: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    panels = len(models) + bool(sparse)
    if panels:
        fig, axes = plt.subplots(1, panels, figsize=(4.0 * panels, 3.6), squeeze=False)
        for ax, (name, res) in zip(axes[0], models.items()):
            backends = sorted({v["backend"] for v in res["variants"].values()})
            for backend in backends:
                pts = [(100 * c, res["variants"][f"{backend} -{c:.0%}"]["median_ms"])
                       for c in CUTS if "median_ms" in res["variants"].get(
                           f"{backend} -{c:.0%}", {})]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=backend)
                for x, y in pts[1:]:
                    ax.annotate(f"{pts[0][1] / y:.2f}x", (x, y), textcoords="offset points",
                                xytext=(0, 6), ha="center", fontsize=7)
            ax.set_xticks([100 * c for c in CUTS])
            ax.set_xlabel("FLOPs removed (%)")
            ax.set_ylabel("median latency (ms)")
            ax.set_title(f"{name}, structured")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7)
        if sparse:
            ax = axes[0][-1]
            med = sparse["median_ms"]
            levels = sorted({v["sparsity"] for v in sparse["info"].values()})
            for mode, label in (("auto", "native, CSR chosen (auto)"),
                                ("never", "native, dense GEMM")):
                ys = [med["dense (unpruned)"]] + [
                    med[f"{s:.0%} sparse, {'CSR auto' if mode == 'auto' else 'dense'}"]
                    for s in levels]
                ax.plot([0] + [100 * s for s in levels], ys, marker="o", label=label)
            ax.set_xlabel("weights zeroed (%)")
            ax.set_ylabel("median latency (ms)")
            ax.set_title("bert, unstructured (native)")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7)
        fig.suptitle("pruning: latency vs pruning ratio (interleaved medians)")
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
    if plan_kernels:
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        for key, med in plan_kernels.items():
            sparsities = [k for k in med if k.startswith("csr")]
            ax.plot([int(k.split()[1][:-1]) for k in sparsities],
                    [med["dense"] / med[k] for k in sparsities], marker="o", label=key)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("speedup of sparse_linear vs gemm step")
        ax.set_title("native plan: CSR step vs packed dense step")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(RESULTS, "prune_sparse_plan.png")
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
    p.add_argument("--scope", choices=("layer", "global"), default="layer",
                   help="structured pruning's ranking (graphopt.prune scope=)")
    p.add_argument("--pipeline", default="default",
                   help="optimize every variant with this pipeline before compiling ('' = none)")
    p.add_argument("--sparsities", default="0.8,0.9",
                   help="unstructured sparsities of the BERT native comparison")
    p.add_argument("--skip-models", action="store_true")
    p.add_argument("--skip-sparse-models", action="store_true")
    p.add_argument("--skip-kernels", action="store_true")
    p.add_argument("--plan-rows", default="1,128",
                   help="M values of the plan-kernel (CSR vs dense step) comparison")
    p.add_argument("--skip-plan-kernels", action="store_true")
    opts = p.parse_args(argv)
    opts.models = [m for m in opts.models.split(",") if m]
    opts.backends = [b for b in opts.backends.split(",") if b]
    opts.plan_rows = [int(m) for m in opts.plan_rows.split(",") if m]
    opts.sparsities = [float(x) for x in opts.sparsities.split(",") if x]
    torch.set_num_threads(opts.threads)
    os.makedirs(RESULTS, exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    models = {} if opts.skip_models else bench_models(opts)
    sparse = {} if opts.skip_sparse_models or "native" not in BACKENDS else \
        bench_sparse_models(opts)
    kernels = {}
    if not opts.skip_kernels:
        from graphopt.prune.sparse import native_available

        if native_available():
            kernels = bench_kernels(opts)
        else:
            print("graphopt._C.sparse_linear is not built: skipping the kernel benchmark")
    plan_kernels = {} if opts.skip_plan_kernels or "native" not in BACKENDS else \
        bench_plan_kernels(opts)
    path = os.path.join(RESULTS, "prune.json")
    saved = {}
    if os.path.exists(path):  # a partial run (--skip-*) keeps the other part's results
        with open(path) as f:
            saved = json.load(f)
    models = models or saved.get("models", {})
    kernels = kernels or saved.get("kernels_ms", {})
    plan_kernels = plan_kernels or saved.get("plan_kernels_ms", {})
    sparse = sparse or saved.get("sparse_models", {})
    with open(path, "w") as f:
        json.dump({"load_avg_1m": os.getloadavg()[0], "threads": opts.threads,
                   "models": models, "kernels_ms": kernels,
                   "plan_kernels_ms": plan_kernels, "sparse_models": sparse,
                   "date": time.strftime("%Y-%m-%d %H:%M"), "scope": opts.scope,
                   "pipeline": opts.pipeline}, f, indent=1)
    for path in plot(models, kernels, sparse, plan_kernels):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
