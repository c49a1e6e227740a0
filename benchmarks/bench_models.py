"""End-to-end latency of the zoo models on every backend, with graphopt.benchmark.

Models: mlp (4 x Linear(1024)), mobilenetv2 (224), resnet50 (224), bert (BERT-base, seq 128)
and gpt2 (GPT-2 small, seq 64) with attention masks and right padding, at batch 1 and, as
bert-b8 / gpt2-b8, batch 8 (rows padded to different lengths). Backends: eager, torch-compile,
onnxruntime (on torch.onnx.export), graphopt-onnxruntime, graphopt-native, graphopt-torch;
unavailable ones are listed with the reason. Per model: same thread count for all backends,
warm-up, 40 samples per backend in rotated blocks with a pause between blocks, onnxruntime at
the faster of spinning / not spinning (see graphopt/bench/harness.py for the method).

Writes, under --out (default benchmarks/results/):
    models/<model>.json, .md, .png   one report per model (JSON schema graphopt-bench/1)
    models/summary.md                all models in one markdown file
    models/summary.png               speedup vs eager per model and backend
    models/all.json                  {"reports": [...]} with every report

Usage:
    python benchmarks/bench_models.py                       # everything (~40-60 min on 2 cores)
    python benchmarks/bench_models.py --models mlp,mobilenetv2 --rounds 10
    python benchmarks/bench_models.py --quick               # mlp + mobilenetv2, no torch-compile
    python benchmarks/bench_models.py --skip torch-compile --per-pass
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import torch

import graphopt
from graphopt import zoo
from graphopt.bench import DEFAULT_BACKENDS
from graphopt.bench.machine import load_text
from graphopt.bench.plot import plot_summary

# name -> (zoo model, options)
MODELS: dict[str, tuple[str, dict]] = {
    "mlp": ("mlp", {}),
    "mobilenetv2": ("mobilenetv2", {}),
    "resnet50": ("resnet50", {}),
    "resnext50": ("resnext50", {}),
    "bert": ("bert", {"seq": 128, "masked": True}),
    "gpt2": ("gpt2", {"seq": 64, "masked": True}),
    "bert-b8": ("bert", {"seq": 128, "batch": 8, "masked": True}),
    "gpt2-b8": ("gpt2", {"seq": 64, "batch": 8, "masked": True}),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated zoo models (default: %(default)s)")
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS))
    parser.add_argument("--skip", default="", help="backends to leave out, comma-separated")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pipeline", default="default")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-time", type=float, default=600.0,
                        help="timing budget per model in seconds (default: %(default)s)")
    parser.add_argument("--per-pass", action="store_true",
                        help="also attribute the speedup to passes (graphopt-onnxruntime)")
    parser.add_argument("--quick", action="store_true",
                        help="mlp and mobilenetv2, 8 rounds, no torch-compile")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    opts = parser.parse_args(argv)

    models = [m.strip() for m in opts.models.split(",") if m.strip()]
    skip = {b.strip() for b in opts.skip.split(",") if b.strip()}
    rounds = opts.rounds
    if opts.quick:
        models, rounds = ["mlp", "mobilenetv2"], min(rounds, 8)
        skip.add("torch-compile")
    backends = [b for b in opts.backends.split(",") if b.strip() and b not in skip]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(MODELS)}")
    folder = os.path.join(opts.out, "models")
    os.makedirs(folder, exist_ok=True)

    reports = []
    start = time.perf_counter()
    for name in models:
        print(f"\n=== {name} ===", flush=True)
        zoo_name, options = MODELS[name]
        model, args = zoo.get(zoo_name, **options)
        report = graphopt.benchmark(model, args, backends=backends, pipeline=opts.pipeline,
                                    threads=opts.threads, warmup=opts.warmup, rounds=rounds,
                                    max_time_s=opts.max_time, per_pass=opts.per_pass,
                                    name=name)
        print(report, flush=True)
        base = os.path.join(folder, name)
        report.to_json(base + ".json")
        report.to_markdown(base + ".md")
        report.plot(base + ".png")
        reports.append(report)
        del model, args
        gc.collect()

    if reports:
        with open(os.path.join(folder, "all.json"), "w") as f:
            json.dump({"reports": [r.to_dict() for r in reports]}, f, indent=1)
        with open(os.path.join(folder, "summary.md"), "w") as f:
            f.write(summary_markdown(reports) + "\n\n" + "\n".join(r.to_markdown()
                                                                  for r in reports))
        plot_summary(reports, os.path.join(folder, "summary.png"))
        print("\n" + summary_markdown(reports))
    threads = reports[0].config["threads"] if reports else opts.threads
    print(f"\nwrote {folder}/ ({time.perf_counter() - start:.0f} s, torch "
          f"{torch.__version__}, {threads} threads)", file=sys.stderr)
    return 0


def summary_markdown(reports) -> str:
    """One table: p50 ms (speedup vs eager) per model and backend."""
    backends: list[str] = []
    for rep in reports:
        for r in rep.results:
            if r.backend not in backends:
                backends.append(r.backend)
    lines = ["| model | " + " | ".join(backends) + " |", "|---" * (len(backends) + 1) + "|"]
    for rep in reports:
        cells = []
        for backend in backends:
            r = next((r for r in rep.results if r.backend == backend), None)
            if r is None:
                cells.append("")
            elif r.latency is None:
                cells.append(r.status)
            else:
                speed = f" ({r.speedup_vs_eager:.2f}x)" if r.speedup_vs_eager else ""
                cells.append(f"{r.latency.p50:.3g}{speed}")
        lines.append(f"| {rep.model['name']} | " + " | ".join(cells) + " |")
    m = reports[0].machine
    lines.append(f"\np50 ms (speedup vs eager), {reports[0].config['threads']} threads, "
                 f"{m.get('cpu_model')} ({', '.join(m.get('cpu_flags', []))}), "
                 f"{load_text(m)} at the start.")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
