"""Compression that pays (issue #24): every quantized and pruned model against its fp32 input.

For each model, the fp32 graph (traced, optimized) and its compressed forms, compiled for the
native runtime and for onnxruntime and timed in one interleaved run per model and backend
(rotated order, blocks of 4 samples with a pause between them so that no idle spinning thread
pool steals the next variant's cores, medians and IQR, batch 1):

* ``int8``: ``graphopt.quantize(fp32, mode, calibration, speed=True, target=<backend>)``:
  static int8 for CNNs, dynamic per-token int8 for the MLP and the transformers; the
  speed-aware plan keeps float whatever does not pay on that backend (per-layer measurements,
  then the whole graph), so it is decided per backend;
* ``pruned``: structured (``graphopt.prune(fp32, "channels", flops=...)``);
* ``sparse``: unstructured (``graphopt.prune(fp32, "magnitude", sparsity=0.8)``; the native
  runtime runs CSR kernels only where they measured faster on this machine,
  ``sparse="measure"``; onnxruntime stays dense);
* ``pruned + int8``: the pruned graph, quantized the same speed-aware way.

Accuracy beside every number: the digits models (trained here on scikit-learn's digits; pruned
forms recovered by distillation fine-tuning) on the test split, with scikit-learn's
``classification_report`` before and after in ``--verbose``; the zoo models (random weights:
their pruned forms cannot recover without training data, their accuracy is shown as it is) by
the cosine of their outputs to fp32 over several inputs, mean and worst.

Usage: python benchmarks/bench_compression_speed.py [--models digits-vgg,mlp,...]
       [--backends native,onnxruntime] [--rounds 30] [--out PATH] [--verbose] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

import graphopt
from graphopt import models_digits, zoo
from graphopt.bench.machine import machine_info
from graphopt.bench.report import write_results
from graphopt.timing import calibrate, percentile, run_interleaved

SCHEMA = "graphopt-compression-speed/1"
BACKENDS = ("native", "onnxruntime")
VARIANTS = ("fp32", "int8", "pruned", "sparse", "pruned + int8")


@dataclass
class Case:
    """One model: its fp32 graph, inputs, and how to prune, recover and score it."""

    name: str
    graph: graphopt.Graph
    args: tuple  # the timed input (batch 1)
    calibration: list[tuple]
    quant_mode: str
    quant_options: dict
    prune_options: dict
    score: Callable[[graphopt.Graph], dict]  # accuracy of a graph (see module docstring)
    recover: Callable[[graphopt.Graph], graphopt.Graph] = lambda g: g
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ the models
def digits_case(name: str, build, epochs: int, verbose: bool) -> Case:
    from sklearn.metrics import classification_report

    x_train, y_train, x_test, y_test = models_digits.load_digits_split()
    torch.manual_seed(0)
    model = models_digits.train(build(), x_train, y_train, epochs=epochs)
    batch = torch.export.Dim("batch", min=1, max=4096)
    graph = graphopt.optimize(graphopt.trace(model, (x_test[:8],),
                                             dynamic_shapes=({0: batch},)), "default")

    def score(g: graphopt.Graph) -> dict:
        predicted = graphopt.run(g, x_test).argmax(1).numpy()
        report = classification_report(y_test.numpy(), predicted, digits=3, zero_division=0)
        if verbose:
            print(report)
        return {"accuracy": float((predicted == y_test.numpy()).mean() * 100),
                "classification_report": report}

    def recover(g: graphopt.Graph) -> graphopt.Graph:  # distillation from the fp32 graph
        data = models_digits.batches(x_train, y_train, seed=3)
        return graphopt.finetune(g, data, loss=F.cross_entropy, teacher=graph, epochs=6,
                                 lr=1e-3, progress=False)

    return Case(name, graph, (x_test[:1],), [(x_train[i: i + 1],) for i in range(32)],
                "static", {}, {"flops": 0.5, "round_to": 8}, score, recover,
                ["trained on the digits; pruned forms recovered by 6 epochs of distillation"])


def zoo_case(name: str, options: dict, quant_mode: str, quant_options: dict,
             prune_options: dict, inputs: int) -> Case:
    model, args = zoo.get(name, **options)
    graph = graphopt.optimize(graphopt.trace(model, args), "default")
    variants = [args] + [_resampled(args, seed) for seed in range(1, inputs)]
    reference = [_flat(graphopt.run(graph, *a)) for a in variants]

    def score(g: graphopt.Graph) -> dict:
        cosines = [float(F.cosine_similarity(r.double().flatten(), o.double().flatten(), dim=0))
                   for a, ref in zip(variants, reference)
                   for r, o in zip(ref, _flat(graphopt.run(g, *a)))]
        return {"cosine_mean": statistics.fmean(cosines), "cosine_min": min(cosines)}

    return Case(name, graph, args, variants[:4], quant_mode, quant_options, prune_options,
                score, notes=["random weights: outputs compared with fp32 (cosine)"])


def _flat(out: Any) -> list[torch.Tensor]:
    import torch.utils._pytree as pytree

    return [t for t in pytree.tree_leaves(out) if torch.is_tensor(t) and t.is_floating_point()]


def _resampled(args: tuple, seed: int) -> tuple:
    """Another input like ``args``: floats redrawn, token ids redrawn, 0/1 masks kept."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for a in args:
        if not torch.is_tensor(a):
            out.append(a)
        elif a.is_floating_point():
            out.append(torch.randn(a.shape, generator=gen, dtype=a.dtype))
        elif a.numel() and int(a.max()) > 1:  # token ids
            out.append(torch.randint(0, int(a.max()) + 1, a.shape, generator=gen, dtype=a.dtype))
        else:
            out.append(a)
    return tuple(out)


def build_case(name: str, verbose: bool) -> Case:
    cnn_prune = {"flops": 0.3, "round_to": 8}
    if name == "digits-cnn":
        return digits_case(name, models_digits.cnn, 6, verbose)
    if name == "digits-vgg":
        return digits_case(name, models_digits.vgg, 10, verbose)
    if name == "mlp":
        return zoo_case("mlp", {}, "dynamic", {"per_token": True}, {"ratio": 0.5}, 4)
    if name in ("mobilenetv2", "resnet50"):
        return zoo_case(name, {}, "static", {}, cnn_prune, 4)
    if name == "bert":
        return zoo_case("bert", {"seq": 128, "masked": True}, "dynamic", {"per_token": True},
                        {"ratio": 0.25}, 3)
    if name == "gpt2":
        return zoo_case("gpt2", {"seq": 64, "masked": True}, "dynamic", {"per_token": True},
                        {"ratio": 0.25}, 3)
    raise SystemExit(f"unknown model {name!r}")


# ------------------------------------------------------------------------------ variants
def quantized(case: Case, graph: graphopt.Graph, backend: str) -> tuple[graphopt.Graph, dict]:
    """Speed-aware int8 of ``graph`` for ``backend``, and what it kept float."""
    q, report = graphopt.quantize(graph, case.quant_mode, calibration=case.calibration,
                                  speed=True, report=True,
                                  target=graphopt.Target(backend, threads=THREADS),
                                  **case.quant_options)
    return q, {"int8_layers": len(report.quantized), "layers": len(report.layers),
               "candidates_ms": report.speed}


def pruned_forms(case: Case) -> dict[str, graphopt.Graph]:
    channels = graphopt.prune(case.graph, "channels", **case.prune_options)
    sparse = graphopt.prune(case.graph, "magnitude", sparsity=0.8)
    return {"pruned": case.recover(channels), "sparse": case.recover(sparse)}


def measure(case: Case, graphs: dict[str, graphopt.Graph], backend: str, rounds: int) -> dict:
    """p50 / IQR ms per batch-1 call of each graph on ``backend``, interleaved and rotated, and
    (native ``sparse``) how many layers run the CSR kernel."""
    # native: the CSR kernel only where this machine measured it faster (sparse="measure")
    options = {"sparse": "measure"} if backend == "native" else {}
    modules = {k: graphopt.compile(g, backend=backend, threads=THREADS, **options)
               for k, g in graphs.items()}
    calls = {k: (lambda m=m: m(*case.args)) for k, m in modules.items()}
    per_sample = {k: calibrate(c, 5, 0.02, time.perf_counter) for k, c in calls.items()}
    # Blocks of 4 samples with a pause between them: an idle spinning thread pool (each
    # onnxruntime session has its own) must not take the cores of the next variant.
    samples, _ = run_interleaved(calls, per_sample, rounds, time.perf_counter, rotate=True,
                                 block=4, pause_s=0.1, block_warmup=1)
    kernels = {k: {"csr_layers": sum(s.kernel == "sparse_linear" for s in m.plan.steps)}
               if backend == "native" and k == "sparse" else {} for k, m in modules.items()}
    return {k: {"p50_ms": statistics.median(s) * 1e3,
                "iqr_ms": (percentile(s, 75) - percentile(s, 25)) * 1e3}
            for k, s in samples.items()}, kernels


def run_case(case: Case, backends: list[str], rounds: int) -> dict:
    print(f"== {case.name}", flush=True)
    started = time.perf_counter()
    shared = {"fp32": case.graph, **pruned_forms(case)}
    scores = {k: case.score(g) for k, g in shared.items()}
    sizes = {k: g.constant_bytes() for k, g in shared.items()}
    results = []
    for backend in backends:
        graphs, plans = dict(shared), {}
        graphs["int8"], plans["int8"] = quantized(case, case.graph, backend)
        graphs["pruned + int8"], plans["pruned + int8"] = quantized(case, shared["pruned"],
                                                                    backend)
        timing, kernels = measure(case, graphs, backend, rounds)
        rows = []
        for variant in VARIANTS:
            g = graphs[variant]
            score = scores.get(variant) or case.score(g)
            rows.append({"variant": variant, **timing[variant], **kernels[variant],
                         "speedup": timing["fp32"]["p50_ms"] / timing[variant]["p50_ms"],
                         "bytes": sizes.get(variant, g.constant_bytes()), **score,
                         **plans.get(variant, {})})
            shown = {k: v for k, v in score.items() if k != "classification_report"}
            print(f"  {backend:<12} {variant:<14} {timing[variant]['p50_ms']:9.3f} ms  "
                  f"{rows[-1]['speedup']:.2f}x  {shown}", flush=True)
        results.append({"backend": backend, "variants": rows})
    return {"name": case.name, "notes": case.notes, "quant_mode": case.quant_mode,
            "quant_options": case.quant_options, "prune_options": case.prune_options,
            "backends": results, "seconds": round(time.perf_counter() - started, 1)}


THREADS = 2


def main(argv: list[str] | None = None) -> int:
    global THREADS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="digits-cnn,digits-vgg,mlp,mobilenetv2,resnet50,bert,gpt2")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--rounds", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                 "compression_speed.json"))
    p.add_argument("--verbose", action="store_true",
                   help="print classification_report for every digits variant")
    p.add_argument("--quick", action="store_true", help="digits models only, 8 rounds")
    opts = p.parse_args(argv)
    THREADS = opts.threads
    torch.set_num_threads(THREADS)
    models = [m for m in opts.models.split(",") if m]
    if opts.quick:
        models, opts.rounds = [m for m in models if m.startswith("digits")], 8
    backends = [b for b in opts.backends.split(",") if b]
    out = {"schema": SCHEMA, "machine": machine_info(),
           "settings": {"rounds": opts.rounds, "threads": THREADS, "batch": 1,
                        "backends": backends},
           "models": [run_case(build_case(m, opts.verbose), backends, opts.rounds)
                      for m in models]}
    write_results(opts.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
