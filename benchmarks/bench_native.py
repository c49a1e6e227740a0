"""graphopt's native runtime against eager, onnxruntime and graphopt-onnxruntime, plus memory.

For each model (batch 1): mlp (4 x Linear(1024)), bert (BERT-base, seq 128), gpt2 (GPT-2
small, seq 64), resnet50 (224), mobilenetv2 (224):

* latency: ``graphopt.benchmark`` with backends eager, onnxruntime (torch.onnx.export),
  graphopt-onnxruntime, graphopt-native (and torch-compile with ``--torch-compile``: slow).
  Same thread count everywhere, warm-up, then interleaved rounds; p50 in ms.
* memory: the native plan's arena (``plan.peak_bytes``: every intermediate activation, planned
  with liveness-based reuse) and arena + returned outputs, against eager's peak of live
  activation bytes (tensors created during the forward, outputs included; weights and inputs
  excluded), measured with a dispatch mode that follows every storage until it is freed.

Writes benchmarks/results/native/{summary.md, all.json} and prints the summary table. The
machines are shared: the 1-minute load average before and after each model is recorded; read
the numbers of one run together only.

Usage:
    python benchmarks/bench_native.py                      # all models (~5-10 min on 2 cores)
    python benchmarks/bench_native.py --models mlp,bert --rounds 10
    python benchmarks/bench_native.py --torch-compile       # adds torch.compile (minutes more)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import graphopt
from graphopt import zoo

MODELS: dict[str, dict] = {
    "mlp": {},
    "bert": {"seq": 128},
    "gpt2": {"seq": 64},
    "resnet50": {},
    "mobilenetv2": {},
}
BACKENDS = ["eager", "onnxruntime", "graphopt-onnxruntime", "graphopt-native"]


class ActivationPeak(TorchDispatchMode):
    """Peak bytes of storages created by ops during the forward, alive at the same time."""

    def __init__(self, preexisting: set[int]):
        super().__init__()
        self.preexisting = preexisting
        self.refs: dict[int, list] = {}  # storage data_ptr -> [nbytes, live tensor count]
        self.live = 0
        self.peak = 0

    def _release(self, ptr: int) -> None:
        entry = self.refs.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self.refs[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if ptr == 0 or ptr in self.preexisting:
                continue
            entry = self.refs.get(ptr)
            if entry is None:
                self.refs[ptr] = [nbytes, 1]
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            else:
                entry[1] += 1
            weakref.finalize(t, self._release, ptr)
        return out


def eager_activation_peak(model: torch.nn.Module, args: tuple) -> int:
    known = {p.untyped_storage().data_ptr() for p in model.parameters()}
    known |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    known |= {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
    gc.collect()
    with torch.no_grad(), ActivationPeak(known) as probe:
        out = model(*args)
        del out
    return probe.peak


def _load() -> float:
    return os.getloadavg()[0]


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def bench_model(name: str, opts: argparse.Namespace, backends: list[str]) -> dict:
    model, args = zoo.get(name, **MODELS[name])
    load_before = _load()
    report = graphopt.benchmark(model, args, backends=backends, threads=opts.threads,
                                rounds=opts.rounds, warmup=opts.warmup,
                                max_time_s=opts.max_time, progress=False, name=name)
    load_after = _load()
    p50 = {}
    for r in report.results:
        p50[r.backend] = r.latency.p50 if (r.ok and r.latency) else None
        if not r.ok:
            print(f"  {name}/{r.backend}: {r.status}: {r.reason}", file=sys.stderr)
    # Memory: the native plan vs eager.
    graph = graphopt.optimize(graphopt.trace(model, args), "default")
    fn = graphopt.compile(graph, backend="native", threads=opts.threads)
    plan = fn.plan
    out_bytes = sum(b.nbytes for b in plan.output_buffers)
    eager_peak = eager_activation_peak(model, args)
    return {
        "model": name, "p50_ms": p50, "load_avg_before": load_before,
        "load_avg_after": load_after, "native_arena_bytes": plan.peak_bytes,
        "native_arena_no_reuse_bytes": plan.memory.total_bytes,
        "native_output_bytes": out_bytes, "eager_peak_activation_bytes": eager_peak,
        "native_steps": len(plan.steps),
        "numerics_ok": {r.backend: r.numerics_ok for r in report.results if r.ok},
    }


def summary_table(rows: list[dict], backends: list[str]) -> str:
    head = ["model", *(f"{b} p50 ms" for b in backends), "native vs eager",
            "native vs ORT", "arena MiB", "arena+out MiB", "no-reuse MiB", "eager peak MiB",
            "load"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        p = r["p50_ms"]
        nat, eag, ort = p.get("graphopt-native"), p.get("eager"), p.get("onnxruntime")
        cells = [r["model"], *(f"{p[b]:.2f}" if p.get(b) else "-" for b in backends),
                 f"{eag / nat:.2f}x" if nat and eag else "-",
                 f"{ort / nat:.2f}x" if nat and ort else "-",
                 _mib(r["native_arena_bytes"]),
                 _mib(r["native_arena_bytes"] + r["native_output_bytes"]),
                 _mib(r["native_arena_no_reuse_bytes"]), _mib(r["eager_peak_activation_bytes"]),
                 f"{r['load_avg_before']:.1f}/{r['load_avg_after']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-time", type=float, default=60.0,
                        help="timing budget per model in seconds (default: %(default)s)")
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "native"))
    opts = parser.parse_args(argv)
    backends = list(BACKENDS)
    if opts.torch_compile:
        backends.insert(1, "torch-compile")
    rows = []
    for name in opts.models.split(","):
        start = time.perf_counter()
        rows.append(bench_model(name, opts, backends))
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        gc.collect()
    table = summary_table(rows, backends)
    print(table)
    os.makedirs(opts.out, exist_ok=True)
    with open(os.path.join(opts.out, "all.json"), "w") as f:
        json.dump({"threads": opts.threads, "rows": rows}, f, indent=2)
    with open(os.path.join(opts.out, "summary.md"), "w") as f:
        f.write(f"threads={opts.threads}, batch 1, p50 of interleaved rounds\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
