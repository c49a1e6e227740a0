"""Time and peak memory per stage of the graphopt chain on GPT-2 models built from their configs.

Stages, in one process, each on the previous one's result: ``trace`` -> ``optimize``
("default") -> ``native`` (``graphopt.compile(..., backend="native")`` and one call, which
packs the weights) -> ``to_onnx`` (weights streamed to an external data file in a temporary
folder). With ``--int8`` the optimized graph is then quantized (dynamic int8) and compiled
natively (``quantize`` -> ``native int8``, the fp32 native module released first). With
``--torch-onnx`` a second run in the same process measures ``torch.onnx.export`` (dynamo
exporter, external data) on the same model for comparison.

With ``--load`` the chain's results are saved (native artifact, ``.graphopt`` bundle, and a
``torch.save`` state dict for comparison) and each is loaded in a fresh process, as is the
``to_onnx`` output (``graphopt.from_onnx``, run on the interpreter): load time,
first-call time, and the memory the process gained, split into anonymous memory (private to
the process) and file-backed memory (page cache of the file, shared by every process that maps
it). With ``--scaling`` trace and optimize run on GPT-2-small-wide models of 3 to 48 layers:
seconds per node should stay flat (no super-linear pass).

Peak memory is the process's peak RSS (``VmHWM``, reset before each stage through
``/proc/self/clear_refs``) minus the RSS after the model was built: what the stage holds on
top of the torch model. The target of issue #23 is a whole chain within 1.2x the fp32 weight
bytes above the model.

Usage: python benchmarks/bench_memory.py [--models medium large xl] [--seq 32]
    [--int8] [--torch-onnx] [--load] [--scaling] [--json PATH]

Models: GPT2Model (no LM head) with GPT-2's published sizes; random weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

import graphopt
from graphopt.bench.machine import machine_info
from graphopt.stagereport import measure, rss_mib, status_mib

SIZES = {
    "small": {"n_embd": 768, "n_layer": 12, "n_head": 12},
    "medium": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
    "large": {"n_embd": 1280, "n_layer": 36, "n_head": 20},
    "xl": {"n_embd": 1600, "n_layer": 48, "n_head": 25},
}
GIB = 2.0**30


def _status_kib(key: str) -> int:
    return round(status_mib(key) * 1024)


def rss_bytes() -> int:
    return round(rss_mib() * 2**20)


def stage(rows: list, name: str, base: int, fn):
    """Runs fn, records seconds, peak and retained memory above ``base``; returns fn's value."""
    gc.collect()
    with measure(name) as cost:  # graphopt.stagereport: VmHWM reset at the start
        out = fn()
    seconds = cost.seconds
    gc.collect()
    row = {"stage": name, "seconds": round(seconds, 2),
           "peak_above_model_gib": round((cost.peak_mib * 2**20 - base) / GIB, 3),
           "retained_above_model_gib": round((rss_bytes() - base) / GIB, 3)}
    rows.append(row)
    print(f"  {name:12s} {seconds:7.1f} s   peak {row['peak_above_model_gib']:+.2f} GiB   "
          f"held {row['retained_above_model_gib']:+.2f} GiB", flush=True)
    return out


def build(size: str):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    return GPT2Model(GPT2Config(use_cache=False, **SIZES[size])).eval()


def run_chain(size: str, seq: int, folder: str, int8: bool = False,
              load: bool = False) -> dict:
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
        # (after to_onnx: writing three more copies of the weights first would slow its
        # writes down while the kernel flushes them)
        saved = save_for_loading(model, optimized, compiled, folder) if load else {}
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
    if saved:
        del compiled, optimized, graph, model
        gc.collect()
        saved["graphopt.from_onnx"] = path  # the to_onnx output (external data)
        result["loads"] = [load_in_child(kind, path, size, seq) for kind, path in saved.items()]
    return result


# ------------------------------------------------------------------------- lazy loading
def save_for_loading(model, optimized, compiled, folder: str) -> dict[str, str]:
    """The chain's saved forms (and torch's own) in ``folder``: {kind: path}."""
    from graphopt.backends.torch_bundle import save_module

    paths = {"native artifact": os.path.join(folder, "model.npz"),
             "graphopt bundle": os.path.join(folder, "model.graphopt"),
             "torch.load": os.path.join(folder, "model.pt")}
    compiled.save(paths["native artifact"])
    save_module(optimized, paths["graphopt bundle"])
    torch.save(model.state_dict(), paths["torch.load"])
    paths["torch.load mmap"] = paths["torch.load"]
    return paths


def load_in_child(kind: str, path: str, size: str, seq: int) -> dict:
    """Load ``path`` in a fresh process (this script with --child): its time and memory.
    The file is read once first, so every kind loads from a warm page cache (the files of
    the XL chain together exceed memory: the one read last would otherwise be cold)."""
    for name in (path, path + ".data"):
        if os.path.exists(name):
            with open(name, "rb") as f:
                while f.read(64 << 20):
                    pass
    out = subprocess.run([sys.executable, __file__, "--child", kind, path, "--models", size,
                          "--seq", str(seq)], check=True, capture_output=True, text=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  load {kind:17s} {row['load_s']:6.2f} s  first call {row['first_call_s']:6.2f} s"
          f"  anon +{row['anon_gib']:.2f} GiB  file-backed +{row['file_gib']:.2f} GiB",
          flush=True)
    return row


def child_load(kind: str, path: str, size: str, seq: int) -> None:
    """In the child: load, call once, print one JSON line. torch's state dict is loaded into
    a model built on the meta device (``assign=True``: no second copy), as fast as torch
    goes; ``torch.load mmap`` maps the file (``mmap=True``) instead of reading it."""
    args = (torch.randint(0, 50257, (1, seq)),)
    if kind.startswith("torch.load"):
        from transformers import GPT2Config, GPT2Model

        with torch.device("meta"):
            model = GPT2Model(GPT2Config(use_cache=False, **SIZES[size]))
    gc.collect()
    anon0, file0 = _status_kib("RssAnon"), _status_kib("RssFile")
    start = time.perf_counter()
    if kind == "native artifact":
        from graphopt.native import load

        fn = load(path)
    elif kind == "graphopt bundle":
        from graphopt.backends.torch_bundle import load_module

        fn = load_module(path)
    elif kind == "graphopt.from_onnx":
        graph = graphopt.from_onnx(path, check=False)  # runs on the reference interpreter

        def fn(*inputs):
            return graphopt.run(graph, *inputs)
    else:
        state = torch.load(path, weights_only=True, mmap=kind.endswith("mmap"))
        model.load_state_dict(state, assign=True)
        fn = model.eval()
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        fn(*args)
    first_call_s = time.perf_counter() - start
    anon, file = _status_kib("RssAnon") - anon0, _status_kib("RssFile") - file0
    print(json.dumps({"kind": kind, "load_s": round(load_s, 3),
                      "first_call_s": round(first_call_s, 3),
                      "anon_gib": round(anon * 1024 / GIB, 3),
                      "file_gib": round(file * 1024 / GIB, 3),
                      "file_gib_on_disk": round(sum(os.path.getsize(name) for name in
                                                    (path, path + ".data")
                                                    if os.path.exists(name)) / GIB, 3)}))


# ------------------------------------------------------------------------------ scaling
def run_scaling(layers: list[int], seq: int) -> list[dict]:
    """trace + optimize seconds per node for growing depth (GPT-2 small's width)."""
    from transformers import GPT2Config, GPT2Model

    rows = []
    for n_layer in layers:
        torch.manual_seed(0)
        model = GPT2Model(GPT2Config(use_cache=False, n_embd=768, n_head=12,
                                     n_layer=n_layer)).eval()
        args = (torch.randint(0, 50257, (1, seq)),)
        with torch.no_grad():
            start = time.perf_counter()
            graph = graphopt.trace(model, args)
            trace_s = time.perf_counter() - start
            start = time.perf_counter()
            optimized = graphopt.optimize(graph, "default")
            optimize_s = time.perf_counter() - start
        nodes = len(graph.nodes)
        row = {"layers": n_layer, "nodes": nodes, "nodes_after": len(optimized.nodes),
               "trace_s": round(trace_s, 3), "optimize_s": round(optimize_s, 3),
               "trace_ms_per_node": round(1000 * trace_s / nodes, 3),
               "optimize_ms_per_node": round(1000 * optimize_s / nodes, 3)}
        rows.append(row)
        print(f"  {n_layer:3d} layers  {nodes:6d} nodes  trace {trace_s:6.2f} s "
              f"({row['trace_ms_per_node']:.2f} ms/node)  optimize {optimize_s:6.2f} s "
              f"({row['optimize_ms_per_node']:.2f} ms/node)", flush=True)
        del model, graph, optimized
        gc.collect()
    return rows


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
    p.add_argument("--load", action="store_true",
                   help="save the results and load each in a fresh process (lazy loading)")
    p.add_argument("--scaling", action="store_true",
                   help="trace + optimize seconds per node for 3..48 layers")
    p.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--json")
    opts = p.parse_args()
    if opts.child:
        child_load(opts.child[0], opts.child[1], opts.models[0], opts.seq)
        return
    results = {"schema": "graphopt-memory/1", "created": time.strftime("%Y-%m-%d"),
               "machine": machine_info(), "seq": opts.seq, "graphopt": [], "torch_onnx": []}
    for size in opts.models:
        with tempfile.TemporaryDirectory() as folder:
            results["graphopt"].append(run_chain(size, opts.seq, folder, opts.int8,
                                                 opts.load))
        gc.collect()
        if opts.torch_onnx:
            with tempfile.TemporaryDirectory() as folder:
                results["torch_onnx"].append(run_torch_onnx(size, opts.seq, folder))
            gc.collect()
    if opts.scaling:
        results["scaling"] = run_scaling([3, 6, 12, 24, 48], opts.seq)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
