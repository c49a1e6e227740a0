"""Dynamic int8: latency, size and accuracy of graphopt.quantize vs onnxruntime and torch.ao.

Model: all-MiniLM-L6-v2 with its real weights (``--model minilm``, batch 1, seq 128), or
BERT-base with random weights (``--model bert``, latency and size only). Variants, all timed in
interleaved rounds in one process (medians, ms, ``--threads`` intra-op threads):

* ``fp32 eager`` / ``torch.ao int8``: torch eager, and ``torch.ao.quantization.quantize_dynamic``
  (qint8 nn.Linear; per-tensor weights);
* ``ort fp32``: graphopt's fp32 graph (``default`` pipeline) on onnxruntime;
* ``ort quantize_dynamic``: onnxruntime's own ``quantize_dynamic(per_channel=True)`` on
  graphopt's standard-op fp32 export;
* ``graphopt int8``: ``graphopt.quantize`` (all 36 linears) -> DynamicQuantizeMatMul;
  ``graphopt int8 (MatMulInteger)``: the same graph lowered without contrib ops;
  ``graphopt int8 budget``: with ``error_budget`` (sensitive layers kept in float);
* ``native fp32`` / ``native int8`` / ``native int8 budget``: graphopt's native runtime on the
  fp32 graph and on the two int8 graphs (the int8 GEMM, see docs/native.md); MiniLM's
  attention-mask indexing runs as a reference step (``fallback="reference"``) in all three.

Accuracy (MiniLM only): cosine of mean-pooled sentence embeddings vs fp32 eager on the 60
``EVAL_SENTENCES``, mean / min. Size: the ONNX file on disk.

ORT sessions run with ``allow_spinning=0``: with spinning, an idle session's pool keeps the two
cores busy and slows whichever variant runs next (it made int8 look no faster than fp32).

Usage: python benchmarks/bench_quant.py [--model minilm|bert] [--rounds 40] [--threads 2]
    [--budget 0.005]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import onnx
import onnxruntime as ort
import torch

import graphopt
from graphopt import _C, zoo

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CALIBRATION = (
    "Graph compilers rewrite neural networks to run faster.",
    "The weather was sunny with a light breeze all afternoon.",
)


def _session(model: onnx.ModelProto, path: str, threads: int):
    onnx.save(model, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # spinning pool threads would steal the cores from the next interleaved variant
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def call(*args):
        feeds = {n: a.numpy() for n, a in zip(names, args)}
        return torch.from_numpy(sess.run(None, feeds)[0])

    return call, os.path.getsize(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm", choices=["minilm", "bert"])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=0.005)
    opts = p.parse_args()
    load = os.getloadavg()[0]
    torch.set_num_threads(opts.threads)
    model, args = zoo.get(opts.model)
    model.eval()
    graph = graphopt.optimize(graphopt.trace(model, args), "default")
    if opts.model == "minilm":
        from graphopt.models_minilm import encode

        calib = [encode([s]) for s in CALIBRATION]
    else:
        calib = [tuple(torch.randint(0, 30000, a.shape) for a in args) for _ in range(2)]
    q_all, rep_all = graphopt.quantize(graph, report=True)
    q_budget, rep_budget = graphopt.quantize(
        graph, calibration=calib, error_budget=opts.budget, report=True
    )
    print(rep_budget)
    tmp = tempfile.mkdtemp()
    calls, sizes = {}, {}
    calls["fp32 eager"] = lambda *a: model(*a)
    calls["ort fp32"], sizes["ort fp32"] = _session(
        graphopt.to_onnx(graph), f"{tmp}/fp32.onnx", opts.threads)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    std = f"{tmp}/fp32_std.onnx"
    onnx.save(graphopt.to_onnx(graph, contrib_ops=False), std)
    quantize_dynamic(std, f"{tmp}/ort_q.onnx", per_channel=True, weight_type=QuantType.QInt8)
    calls["ort quantize_dynamic"], sizes["ort quantize_dynamic"] = _session(
        onnx.load(f"{tmp}/ort_q.onnx"), f"{tmp}/ort_q2.onnx", opts.threads)
    calls["graphopt int8"], sizes["graphopt int8"] = _session(
        graphopt.to_onnx(q_all), f"{tmp}/q.onnx", opts.threads)
    calls["graphopt int8 (MatMulInteger)"], sizes["graphopt int8 (MatMulInteger)"] = _session(
        graphopt.to_onnx(q_all, contrib_ops=False), f"{tmp}/q_std.onnx", opts.threads)
    calls["graphopt int8 budget"], sizes["graphopt int8 budget"] = _session(
        graphopt.to_onnx(q_budget), f"{tmp}/qb.onnx", opts.threads)
    native = {"native fp32": graph, "native int8": q_all, "native int8 budget": q_budget}
    for name, g in native.items():
        calls[name] = graphopt.compile(g, backend="native", threads=opts.threads,
                                       fallback="reference")
    try:
        tq = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        calls["torch.ao int8"] = lambda *a: tq(*a)
    except Exception as e:  # noqa: BLE001  (deprecated / missing engines on some builds)
        print(f"torch.ao dynamic quantization unavailable: {e}")
    times: dict[str, list[float]] = {k: [] for k in calls}
    with torch.no_grad():
        for fn in calls.values():
            for _ in range(3):
                fn(*args)
        for _ in range(opts.rounds):
            for name, fn in calls.items():
                t = time.perf_counter()
                fn(*args)
                times[name].append((time.perf_counter() - t) * 1e3)
    accuracy = {}
    if opts.model == "minilm":
        from graphopt.models_minilm import EVAL_SENTENCES, embed

        ref = embed(list(EVAL_SENTENCES), model)
        for name, fn in calls.items():
            if name == "fp32 eager":
                continue
            cos = (embed(list(EVAL_SENTENCES), fn) * ref).sum(-1)
            accuracy[name] = (float(cos.mean()), float(cos.min()))
    rows = {}
    print(f"\n{opts.model}, batch 1, {opts.threads} threads, {opts.rounds} interleaved rounds, "
          f"load avg (1 min) at start {load:.2f}, int8 kernels {_C.native_qgemm_isa()}")
    print(f"{'variant':32s} {'p50 ms':>8s} {'size MB':>8s} {'cos mean':>9s} {'cos min':>8s}")
    for name in calls:
        med = statistics.median(times[name])
        size = sizes.get(name)
        acc = accuracy.get(name, (float("nan"), float("nan")))
        rows[name] = {"p50_ms": med, "size_mb": size / 1e6 if size else None,
                      "cos_mean": acc[0], "cos_min": acc[1]}
        size_s = f"{size / 1e6:8.1f}" if size else f"{'-':>8s}"
        print(f"{name:32s} {med:8.2f} {size_s} {acc[0]:9.4f} {acc[1]:8.4f}")
    print(f"budget run: {len(rep_budget.quantized)}/{len(rep_budget.layers)} int8, "
          f"fallback {rep_budget.fallback}")
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"quant_{opts.model}.json"), "w") as f:
        json.dump({"rows": rows, "fallback": rep_budget.fallback, "load_avg_1m": load,
                   "threads": opts.threads, "rounds": opts.rounds}, f, indent=1)


if __name__ == "__main__":
    main()
