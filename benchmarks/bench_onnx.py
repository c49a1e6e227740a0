"""onnxruntime latency of three ONNX exports of the same model, measured interleaved.

Variants per model (batch 1, onnxruntime CPU, ORT_ENABLE_ALL, ``--threads`` intra-op threads;
each session timed with its thread pool spinning, onnxruntime's default, and not spinning, the
faster reported):

* ``torch.onnx``: ``torch.onnx.export`` as is (the dynamo exporter, falling back to the legacy
  TorchScript exporter when it fails; the table says which one produced the model);
* ``+onnxsim``: that export after ``onnxsim.simplify``;
* ``graphopt``: ``graphopt.trace`` -> ``graphopt.optimize`` (default pipeline) ->
  ``graphopt.to_onnx``.

Variants and settings are interleaved in rotated blocks with a pause between blocks
(``graphopt.timing.FAIR_SCHEDULE``), so machine drift hits all alike and an idle
spinning pool cannot slow the next variant; the latency is the median over rounds. Node counts are those of the saved ONNX model and, in
parentheses, after onnxruntime's own graph optimizations.

Usage::

    python benchmarks/bench_onnx.py [--models bert,gpt2,resnet50,mobilenetv2,mlp] [--rounds 30]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.utils._pytree as pytree

import graphopt
from graphopt import zoo
from graphopt.backends.onnxruntime_backend import session_options
from graphopt.bench.backends import ort_sessions
from graphopt.timing import time_at_best

MODELS = {
    "bert": dict(seq=128),  # BERT-base, 12 layers
    "gpt2": dict(seq=64),  # GPT-2 small, 12 layers
    "resnet50": {},
    "mobilenetv2": {},
    "mlp": {},
}


def tensor_args(args) -> list[torch.Tensor]:
    return [a for a in pytree.tree_leaves(args) if isinstance(a, torch.Tensor)]


def export_torch(model, args, path: str, exporter: str) -> str:
    """torch.onnx.export to ``path``; returns the exporter that succeeded."""
    names = [f"input_{i}" for i in range(len(tensor_args(args)))]
    order = ["dynamo", "legacy"] if exporter == "auto" else [exporter]
    errors = []
    for kind in order:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                if kind == "dynamo":
                    program = torch.onnx.export(model, args, dynamo=True, input_names=names,
                                                verbose=False)
                    program.save(path)
                else:
                    torch.onnx.export(model, args, path, dynamo=False, input_names=names,
                                      opset_version=17)
            return kind
        except Exception as exc:  # noqa: BLE001  (try the next exporter)
            errors.append(f"{kind}: {type(exc).__name__}: {str(exc)[:200]}")
    raise RuntimeError("torch.onnx.export failed: " + " | ".join(errors))


def simplify(src: str, dst: str) -> None:
    import onnxsim

    model = onnx.load(src)
    with contextlib.redirect_stdout(io.StringIO()):
        simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified model")
    onnx.save(simplified, dst)


def export_graphopt(model, args, path: str) -> dict:
    start = time.perf_counter()
    graph = graphopt.trace(model, args)
    traced = time.perf_counter()
    optimize = getattr(graphopt, "optimize", None)
    optimized = optimize(graph) if optimize is not None else graph
    done = time.perf_counter()
    graphopt.to_onnx(optimized, path)
    return {"trace_s": traced - start, "optimize_s": done - traced,
            "lower_s": time.perf_counter() - done, "optimized": optimize is not None}


def session(path: str, threads: int, optimized_path: str | None = None):
    """A session for node counting (saving onnxruntime's optimized model)."""
    so = session_options(threads)
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_node_count(path: str, threads: int) -> int | None:
    """Node count after onnxruntime's graph optimizations (None if it cannot be saved)."""
    out = path + ".ort-optimized.onnx"
    try:
        session(path, threads, out)
        return len(onnx.load(out, load_external_data=False).graph.node)
    except Exception:  # noqa: BLE001
        return None


def bench_model(name: str, rounds: int, threads: int, exporter: str, folder: str) -> list[dict]:
    model, args = zoo.get(name, **MODELS[name])
    inputs = tensor_args(args)
    with torch.no_grad():
        expected = tensor_args(model(*args))
    paths = {v: os.path.join(folder, f"{name}-{v}.onnx") for v in ("torch", "onnxsim",
                                                                   "graphopt")}
    rows = {}
    start = time.perf_counter()
    used = export_torch(model, args, paths["torch"], exporter)
    rows["torch.onnx"] = {"path": paths["torch"], "note": f"{used} exporter",
                          "export_s": time.perf_counter() - start}
    start = time.perf_counter()
    try:
        simplify(paths["torch"], paths["onnxsim"])
        rows["+onnxsim"] = {"path": paths["onnxsim"], "note": f"{used} + onnxsim",
                            "export_s": time.perf_counter() - start}
    except Exception as exc:  # noqa: BLE001
        print(f"  {name}: onnxsim failed: {exc}", file=sys.stderr)
    info = export_graphopt(model, args, paths["graphopt"])
    rows["graphopt"] = {"path": paths["graphopt"],
                        "note": "optimize+to_onnx" if info["optimized"] else "to_onnx",
                        "export_s": info["trace_s"] + info["optimize_s"] + info["lower_s"]}

    variants = {}
    for variant, row in rows.items():
        sessions = ort_sessions(row["path"], threads)  # spinning (the default) and not
        feeds = {i.name: t.numpy() for i, t in zip(sessions["spinning"].get_inputs(), inputs)}
        outs = sessions["spinning"].run(None, feeds)
        row["max_err"] = max(float(np.abs(o - e.numpy()).max()) for o, e in zip(outs, expected))
        row["nodes"] = len(onnx.load(row["path"], load_external_data=False).graph.node)
        row["ort_nodes"] = ort_node_count(row["path"], threads)
        variants[variant] = {setting: (lambda s=sess, f=feeds: s.run(None, f))
                             for setting, sess in sessions.items()}
    timed = time_at_best(variants, rounds, min_sample_s=0.02)
    base = None
    result = []
    for variant, row in rows.items():
        best = timed[variant]
        base = base if base is not None else best.p50_ms
        result.append({"model": name, "variant": variant, "p50_ms": best.p50_ms,
                       "iqr_ms": best.iqr_ms, "setting": best.setting,
                       "vs_torch": best.p50_ms / base, "rounds": rounds, **row})
    return result


def markdown(rows: list[dict], threads: int) -> str:
    lines = [f"onnxruntime {ort.__version__}, {threads} threads, batch 1, p50 of interleaved "
             "rounds", "",
             "| model | variant | exported by | nodes (after ORT opt) | p50 ms (iqr) | ORT setting "
             "| vs torch.onnx | max abs err vs eager |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ort_nodes = "?" if r["ort_nodes"] is None else r["ort_nodes"]
        lines.append(f"| {r['model']} | {r['variant']} | {r['note']} | {r['nodes']} "
                     f"({ort_nodes}) | {r['p50_ms']:.2f} ({r['iqr_ms']:.2f}) | {r['setting']} | "
                     f"{r['vs_torch']:.2f}x | "
                     f"{r['max_err']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import logging

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # torchvision-op registry noise
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds per model")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--exporter", choices=("auto", "dynamo", "legacy"), default="auto",
                        help="torch.onnx exporter (auto: dynamo, legacy if dynamo fails)")
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as folder:
        for name in [m.strip() for m in opts.models.split(",") if m.strip()]:
            if name not in MODELS:
                parser.error(f"unknown model '{name}'")
            print(f"benchmarking {name} ...", file=sys.stderr)
            rows += bench_model(name, opts.rounds, opts.threads, opts.exporter, folder)
    print(markdown(rows, opts.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
