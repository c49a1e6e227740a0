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
  ``graphopt int8 per-token``: all 36 linears with per-token activation scales
  (``per_token=True``; standard ops: MatMulInteger and the per-row quantize chain);
  ``graphopt int8 budget``: with ``error_budget`` (sensitive layers kept in float);
* ``native fp32`` / ``native int8`` / ``native int8 per-token`` / ``native int8 budget``:
  graphopt's native runtime on the fp32 graph and on the three int8 graphs (the int8 GEMM,
  see docs/native.md); every node runs natively.

Accuracy (MiniLM only): cosine of mean-pooled sentence embeddings vs fp32 eager on the 60
``EVAL_SENTENCES``, mean / min. Size: the ONNX file on disk.

ORT sessions run with ``allow_spinning=0``: with spinning, an idle session's pool keeps the two
cores busy and slows whichever variant runs next (it made int8 look no faster than fp32).

CNNs (``--model digits|resnet50|mobilenetv2``, static int8, batch 1): the digits CNN trained
on scikit-learn's digits (graphopt/models_digits.py; accuracy on its 397 test images, reference
interpreter and onnxruntime), ResNet-50 / MobileNetV2 from the zoo at 224x224 (random weights,
batch-norm statistics calibrated by the zoo; cosine of the outputs vs fp32). Variants: ORT fp32,
graphopt static int8 lowered as QDQ and as QLinearConv/QGemm, onnxruntime's own
``quantize_static`` (QDQ, per-channel, MinMax) on the same float export, graphopt dynamic int8
(``qconv_dynamic``: ConvInteger), fp16 weight storage. Size: the ONNX file on disk.

Usage: python benchmarks/bench_quant.py [--model minilm|bert|digits|resnet50|mobilenetv2]
    [--rounds 40] [--threads 2] [--budget 0.005] [--observer minmax]
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
    p.add_argument("--model", default="minilm",
                   choices=["minilm", "bert", "digits", "resnet50", "mobilenetv2"])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=0.005)
    p.add_argument("--observer", default="minmax")
    opts = p.parse_args()
    load = os.getloadavg()[0]
    torch.set_num_threads(opts.threads)
    if opts.model in ("digits", "resnet50", "mobilenetv2"):
        return cnn_main(opts)
    model, args = zoo.get(opts.model)
    model.eval()
    graph = graphopt.optimize(graphopt.trace(model, args), "default")
    if opts.model == "minilm":
        from graphopt.models_minilm import encode

        calib = [encode([s]) for s in CALIBRATION]
    else:
        calib = [tuple(torch.randint(0, 30000, a.shape) for a in args) for _ in range(2)]
    q_all, rep_all = graphopt.quantize(graph, report=True)
    q_token = graphopt.quantize(graph, per_token=True)
    q_int4 = graphopt.quantize(graph, "weight-only", bits=4, block_size=32)
    q_fp16 = graphopt.quantize(graph, "fp16")
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
    calls["graphopt int8 per-token"], sizes["graphopt int8 per-token"] = _session(
        graphopt.to_onnx(q_token), f"{tmp}/qt.onnx", opts.threads)
    calls["graphopt int8 budget"], sizes["graphopt int8 budget"] = _session(
        graphopt.to_onnx(q_budget), f"{tmp}/qb.onnx", opts.threads)
    calls["graphopt int4 weight-only"], sizes["graphopt int4 weight-only"] = _session(
        graphopt.to_onnx(q_int4), f"{tmp}/q4.onnx", opts.threads)
    calls["graphopt fp16 weights"], sizes["graphopt fp16 weights"] = _session(
        graphopt.to_onnx(q_fp16), f"{tmp}/f16.onnx", opts.threads)
    native = {"native fp32": graph, "native int8": q_all, "native int8 per-token": q_token,
              "native int8 budget": q_budget}
    for name, g in native.items():
        calls[name] = graphopt.compile(g, backend="native", threads=opts.threads)
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


def _first(out):
    return out if torch.is_tensor(out) else out[0]


def _interleaved(calls: dict, args: tuple, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in calls}
    with torch.no_grad():
        for fn in calls.values():
            for _ in range(3):
                fn(*args)
        for _ in range(rounds):
            for name, fn in calls.items():
                t = time.perf_counter()
                fn(*args)
                times[name].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def cnn_main(opts) -> None:
    """Static int8 CNNs on onnxruntime vs fp32 (see the module docstring)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static
    from torch.export import Dim

    from graphopt.onnx.lower_quant_int import quant_format

    if opts.model == "digits":
        from graphopt.models_digits import load_digits_split, trained_cnn

        x_train, _, x_test, y_test = load_digits_split()
        model = trained_cnn()
        args = (x_test[:1],)
        graph = graphopt.trace(model, (x_test[:4],), dynamic_shapes=({0: Dim("batch")},))
        calib = [(x_train[i: i + 64],) for i in range(0, 512, 64)]
    else:
        model, args = zoo.get(opts.model)
        graph = graphopt.trace(model, args)
        gen = torch.Generator().manual_seed(1)
        calib = [(torch.randn(args[0].shape, generator=gen),) for _ in range(8)]
    model.eval()
    graph = graphopt.optimize(graph, "default")
    t = time.perf_counter()
    q, rep = graphopt.quantize(graph, "static", calibration=calib, observer=opts.observer,
                               report=True)
    print(rep, f"\nstatic quantize: {time.perf_counter() - t:.1f} s")
    tmp = tempfile.mkdtemp()
    calls, sizes = {}, {}
    calls["ort fp32"], sizes["ort fp32"] = _session(graphopt.to_onnx(graph), f"{tmp}/f.onnx",
                                                    opts.threads)
    with quant_format("qdq"):
        calls["graphopt static int8 (QDQ)"], sizes["graphopt static int8 (QDQ)"] = _session(
            graphopt.to_onnx(q), f"{tmp}/q.onnx", opts.threads)
    with quant_format("qlinear"):
        calls["graphopt static int8 (QLinear)"], sizes["graphopt static int8 (QLinear)"] = \
            _session(graphopt.to_onnx(q), f"{tmp}/ql.onnx", opts.threads)
    std = f"{tmp}/std.onnx"
    onnx.save(graphopt.to_onnx(graph, contrib_ops=False), std)
    names = [i.name for i in onnx.load(std).graph.input]

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{n: a.numpy() for n, a in zip(names, item)} for item in calib])

        def get_next(self):
            return next(self.items, None)

    ort_q = f"{tmp}/ort_q.onnx"
    ort_quantize_static(std, ort_q, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    calls["ort quantize_static"], sizes["ort quantize_static"] = _session(
        onnx.load(ort_q), f"{tmp}/ort_q2.onnx", opts.threads)
    dyn = graphopt.quantize(graph, "dynamic", convs=True)
    calls["graphopt dynamic int8"], sizes["graphopt dynamic int8"] = _session(
        graphopt.to_onnx(dyn), f"{tmp}/d.onnx", opts.threads)
    half = graphopt.quantize(graph, "fp16")
    calls["graphopt fp16 weights"], sizes["graphopt fp16 weights"] = _session(
        graphopt.to_onnx(half), f"{tmp}/h.onnx", opts.threads)
    p50 = _interleaved(calls, args, opts.rounds)
    quality = {}
    if opts.model == "digits":
        quality["reference fp32"] = float((graphopt.run(graph, x_test).argmax(-1) == y_test)
                                          .float().mean())
        quality["reference static int8"] = float(
            (graphopt.run(q, x_test).argmax(-1) == y_test).float().mean())
        for name, fn in calls.items():
            logits = torch.cat([_first(fn(x_test[i: i + 1])) for i in range(len(x_test))])
            quality[name] = float((logits.argmax(-1) == y_test).float().mean())
    else:
        ref = _first(calls["ort fp32"](*args)).flatten().double()
        for name, fn in calls.items():
            out = _first(fn(*args)).flatten().double()
            quality[name] = float(torch.nn.functional.cosine_similarity(ref, out, dim=0))
    metric = "accuracy" if opts.model == "digits" else "cos vs fp32"
    load = os.getloadavg()[0]
    print(f"\n{opts.model}, batch 1, {opts.threads} threads, {opts.rounds} interleaved rounds, "
          f"load {load:.2f}, {time.strftime('%Y-%m-%d')}")
    print(f"{'variant':32s} {'p50 ms':>8s} {'vs fp32':>8s} {'size MB':>8s} {metric:>12s}")
    rows = {}
    for name in calls:
        rows[name] = {"p50_ms": p50[name], "size_mb": sizes[name] / 1e6,
                      "quality": quality.get(name)}
        print(f"{name:32s} {p50[name]:8.3f} {p50[name] / p50['ort fp32']:7.2f}x "
              f"{sizes[name] / 1e6:8.2f} {quality.get(name, float('nan')):12.4f}")
    for name in ("reference fp32", "reference static int8"):
        if name in quality:
            print(f"{name:32s} {'':8s} {'':8s} {'':8s} {quality[name]:12.4f}")
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"quant_{opts.model}.json"), "w") as f:
        json.dump({"rows": rows, "quality": quality, "metric": metric, "load": load,
                   "threads": opts.threads, "rounds": opts.rounds,
                   "observer": opts.observer}, f, indent=1)


if __name__ == "__main__":
    main()
