"""Time and peak memory per stage of the graphopt chain on GPT-2 models built from their configs.

Stages, in one process, each on the previous one's result: ``trace`` -> ``optimize``
("default") -> ``native`` (``graphopt.compile(..., backend="native")`` and one call, which
packs the weights) -> ``to_onnx`` (weights streamed to an external data file in a temporary
folder). With ``--int8`` the optimized graph is then quantized (dynamic int8) and compiled
natively (``quantize`` -> ``native int8``, the fp32 native module released first). With
``--torch-onnx`` a second run in the same process measures ``torch.onnx.export`` (dynamo
exporter, external data) on the same model for comparison.

Peak memory is the process's peak RSS (``VmHWM``, reset before each stage through
``/proc/self/clear_refs``) minus the RSS after the model was built: what the stage holds on
top of the torch model. The target of issue #23 is a whole chain within 1.2x the fp32 weight
bytes above the model.

Usage: python benchmarks/bench_memory.py [--models medium large xl] [--seq 32]
    [--int8] [--torch-onnx] [--json PATH]

Models: GPT2Model (no LM head) with GPT-2's published sizes; random weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time

import torch

import graphopt
from graphopt.bench.machine import machine_info

SIZES = {
    "small": {"n_embd": 768, "n_layer": 12, "n_head": 12},
    "medium": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
    "large": {"n_embd": 1280, "n_layer": 36, "n_head": 20},
    "xl": {"n_embd": 1600, "n_layer": 48, "n_head": 25},
}
GIB = 2.0**30


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def reset_peak() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def stage(rows: list, name: str, base: int, fn):
    """Runs fn, records seconds, peak and retained memory above ``base``; returns fn's value."""
    gc.collect()
    reset_peak()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    gc.collect()
    row = {"stage": name, "seconds": round(seconds, 2),
           "peak_above_model_gib": round((peak_bytes() - base) / GIB, 3),
           "retained_above_model_gib": round((rss_bytes() - base) / GIB, 3)}
    rows.append(row)
    print(f"  {name:12s} {seconds:7.1f} s   peak +{row['peak_above_model_gib']:.2f} GiB   "
          f"held +{row['retained_above_model_gib']:.2f} GiB", flush=True)
    return out


def build(size: str):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    return GPT2Model(GPT2Config(use_cache=False, **SIZES[size])).eval()


def run_chain(size: str, seq: int, folder: str, int8: bool = False) -> dict:
    model = build(size)
    args = (torch.randint(0, 50257, (1, seq)),)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gc.collect()
    base = rss_bytes()
    print(f"GPT-2 {size}: {weight_bytes / GIB:.2f} GiB of fp32 weights", flush=True)
    rows: list = []
    with torch.no_grad():
        graph = stage(rows, "trace", base, lambda: graphopt.trace(model, args))
        optimized = stage(rows, "optimize", base, lambda: graphopt.optimize(graph, "default"))

        def native():
            fn = graphopt.compile(optimized, backend="native")
            fn(*args)
            return fn

        compiled = stage(rows, "native", base, native)
        path = os.path.join(folder, f"gpt2_{size}.onnx")
        stage(rows, "to_onnx", base,
              lambda: graphopt.to_onnx(optimized, path, external_data=True, check=False))
        int8_rows: list = []
        if int8:
            del compiled  # the int8 chain starts from the optimized graph alone
            quantized = stage(int8_rows, "quantize", base, lambda: graphopt.quantize(optimized))

            def native_int8():
                fn = graphopt.compile(quantized, backend="native")
                fn(*args)
                return fn

            compiled = stage(int8_rows, "native int8", base, native_int8)
    peak = max(r["peak_above_model_gib"] for r in rows)
    result = {"model": f"gpt2-{size}", "weights_gib": round(weight_bytes / GIB, 3),
              "stages": rows, "chain_peak_over_weights": round(peak * GIB / weight_bytes, 2)}
    if int8_rows:
        int8_peak = max(r["peak_above_model_gib"] for r in int8_rows)
        result["int8_stages"] = int8_rows
        result["int8_peak_over_weights"] = round(int8_peak * GIB / weight_bytes, 2)
    return result


def run_torch_onnx(size: str, seq: int, folder: str) -> dict:
    model = build(size)
    args = (torch.randint(0, 50257, (1, seq)),)
    gc.collect()
    base = rss_bytes()
    rows: list = []
    path = os.path.join(folder, f"torch_gpt2_{size}.onnx")
    with torch.no_grad():
        stage(rows, "torch.onnx", base,
              lambda: torch.onnx.export(model, args, path, dynamo=True, external_data=True))
    return {"model": f"gpt2-{size}", "stages": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["medium"], choices=sorted(SIZES))
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--torch-onnx", action="store_true")
    p.add_argument("--int8", action="store_true",
                   help="also dynamic int8: quantize the optimized graph, compile it natively")
    p.add_argument("--json")
    opts = p.parse_args()
    results = {"schema": "graphopt-memory/1", "created": time.strftime("%Y-%m-%d"),
               "machine": machine_info(), "seq": opts.seq, "graphopt": [], "torch_onnx": []}
    for size in opts.models:
        with tempfile.TemporaryDirectory() as folder:
            results["graphopt"].append(run_chain(size, opts.seq, folder, opts.int8))
        gc.collect()
        if opts.torch_onnx:
            with tempfile.TemporaryDirectory() as folder:
                results["torch_onnx"].append(run_torch_onnx(size, opts.seq, folder))
            gc.collect()
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
