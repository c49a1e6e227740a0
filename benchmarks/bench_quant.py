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
  see docs/native.md); every node runs natively. ``native bf16``: the fp32 graph compiled with
  ``precision="bf16"`` (weight GEMMs and attention in bf16 with fp32 sums, on AMX tiles where
  present); ``native int8 + bf16 attention``: the int8 graph compiled the same way (its int8
  linears unchanged, attention's products in bf16).

Inputs: MiniLM a real sentence padded to 128 tokens; BERT-base random ids with an attention
mask (right padding, ``zoo.get("bert", masked=True)``). Accuracy: per-token cosine of the
hidden states vs fp32 eager over the real tokens (MiniLM: 16 eval sentences; BERT: 4 random
inputs), mean / min; MiniLM also the cosine of mean-pooled sentence embeddings on the 60
``EVAL_SENTENCES``, mean / min. Size: the ONNX file on disk.

Every onnxruntime variant is timed with its thread pool spinning (onnxruntime's default) and
not spinning, the faster reported; variants and settings run interleaved in rotated blocks
with a 0.1 s pause after each block (``graphopt.timing.FAIR_SCHEDULE``), so that an idle
spinning pool (onnxruntime's spins ~50 ms after a run) cannot slow the variant timed next.

CNNs (``--model digits|resnet50|mobilenetv2``, static int8, batch 1): the digits CNN trained
on scikit-learn's digits (graphopt/models_digits.py; accuracy on its 397 test images, reference
interpreter and onnxruntime), ResNet-50 / MobileNetV2 from the zoo at 224x224 (random weights,
batch-norm statistics calibrated by the zoo; cosine of the outputs vs fp32 on 8 random images,
mean and worst). Variants: ORT fp32,
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
import tempfile
import time

import onnx
import torch

import graphopt
from graphopt import _C, zoo
from graphopt.bench.backends import ort_sessions
from graphopt.bench.machine import machine_info
from graphopt.timing import FAIR_SCHEDULE, time_at_best

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CALIBRATION = (
    "Graph compilers rewrite neural networks to run faster.",
    "The weather was sunny with a light breeze all afternoon.",
)


def _session(model: onnx.ModelProto, path: str, threads: int):
    """onnxruntime on ``model`` saved to ``path``: ({setting: call(*args)}, bytes on disk),
    one call per spinning setting (onnxruntime's default, spinning, and not spinning)."""
    onnx.save(model, path)
    calls = {}
    for setting, sess in ort_sessions(path, threads).items():
        names = [i.name for i in sess.get_inputs()]

        def call(*args, sess=sess, names=names):
            feeds = {n: a.numpy() for n, a in zip(names, args)}
            return torch.from_numpy(sess.run(None, feeds)[0])

        calls[setting] = call
    return calls, os.path.getsize(path)


def _timed(calls: dict, args: tuple, rounds: int) -> dict:
    """Every variant (and each of its settings) timed interleaved, at its best setting."""
    variants = {}
    for name, fn in calls.items():
        settings = fn if isinstance(fn, dict) else {"default": fn}
        variants[name] = {s: (lambda f=f: f(*args)) for s, f in settings.items()}
    with torch.no_grad():
        return time_at_best(variants, rounds, warmup=3)


def _call(fn):
    """The variant's call at its first setting (for accuracy: settings do not change outputs)."""
    return next(iter(fn.values())) if isinstance(fn, dict) else fn


def _transformer_variants(model, graph, calib, opts, tmp: str):
    """The dynamic-int8 variants of a transformer: ({name: call or {setting: call}}, sizes,
    the budget run's report)."""
    q_all = graphopt.quantize(graph)
    q_token = graphopt.quantize(graph, per_token=True)
    q_int4 = graphopt.quantize(graph, "weight-only", bits=4, block_size=32)
    q_fp16 = graphopt.quantize(graph, "fp16")
    q_budget, rep_budget = graphopt.quantize(graph, calibration=calib,
                                             error_budget=opts.budget, report=True)
    print(rep_budget)
    calls, sizes = {"fp32 eager": lambda *a: model(*a)}, {}
    from onnxruntime.quantization import QuantType, quantize_dynamic

    std = f"{tmp}/fp32_std.onnx"
    onnx.save(graphopt.to_onnx(graph, contrib_ops=False), std)
    quantize_dynamic(std, f"{tmp}/ort_q.onnx", per_channel=True, weight_type=QuantType.QInt8)
    onnx_variants = {
        "ort fp32": graphopt.to_onnx(graph),
        "ort quantize_dynamic": onnx.load(f"{tmp}/ort_q.onnx"),
        "graphopt int8": graphopt.to_onnx(q_all),
        "graphopt int8 (MatMulInteger)": graphopt.to_onnx(q_all, contrib_ops=False),
        "graphopt int8 per-token": graphopt.to_onnx(q_token),
        "graphopt int8 budget": graphopt.to_onnx(q_budget),
        "graphopt int4 weight-only": graphopt.to_onnx(q_int4),
        "graphopt fp16 weights": graphopt.to_onnx(q_fp16),
    }
    for i, (name, proto) in enumerate(onnx_variants.items()):
        calls[name], sizes[name] = _session(proto, f"{tmp}/v{i}.onnx", opts.threads)
    native = {"native fp32": graph, "native int8": q_all, "native int8 per-token": q_token,
              "native int8 budget": q_budget}
    for name, g in native.items():
        calls[name] = graphopt.compile(g, backend="native", threads=opts.threads)
    calls["native bf16"] = graphopt.compile(graph, backend="native", threads=opts.threads,
                                            precision="bf16")
    calls["native int8 + bf16 attention"] = graphopt.compile(
        q_all, backend="native", threads=opts.threads, precision="bf16")
    try:
        tq = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        calls["torch.ao int8"] = lambda *a: tq(*a)
    except Exception as e:  # noqa: BLE001  (deprecated / missing engines on some builds)
        print(f"torch.ao dynamic quantization unavailable: {e}")
    return calls, sizes, rep_budget


def _token_cosines(calls: dict, inputs: list[tuple]) -> dict[str, tuple[float, float]]:
    """Per-token cosine of each variant's hidden states vs fp32 eager, over the real (unmasked)
    tokens of ``inputs``: (mean, min)."""
    out = {}
    with torch.no_grad():
        refs = [_first(calls["fp32 eager"](*a)).double() for a in inputs]
        for name, fn in calls.items():
            cos = []
            for a, ref in zip(inputs, refs):
                got = _first(_call(fn)(*a)).double()
                keep = a[1].bool()  # the attention mask: padding outputs are not used
                cos.append(torch.nn.functional.cosine_similarity(got, ref, dim=-1)[keep])
            every = torch.cat(cos)
            out[name] = (float(every.mean()), float(every.min()))
    return out


def _sentence_cosines(model, calls: dict) -> dict[str, tuple[float, float]]:
    """MiniLM: cosine of mean-pooled sentence embeddings vs fp32 eager (mean, min)."""
    from graphopt.models_minilm import EVAL_SENTENCES, embed

    ref = embed(list(EVAL_SENTENCES), model)
    out = {}
    for name, fn in calls.items():
        cos = (embed(list(EVAL_SENTENCES), _call(fn)) * ref).sum(-1)
        out[name] = (float(cos.mean()), float(cos.min()))
    return out


def _accuracy_inputs(name: str, args: tuple) -> list[tuple]:
    if name == "minilm":
        from graphopt.models_minilm import EVAL_SENTENCES, encode

        return [encode([s]) for s in EVAL_SENTENCES[:16]]
    gen = torch.Generator().manual_seed(3)
    ids, mask = args
    return [(torch.randint(1000, 30000, ids.shape, generator=gen), mask) for _ in range(4)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm",
                   choices=["minilm", "bert", "digits", "resnet50", "mobilenetv2"])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=0.005)
    p.add_argument("--observer", default="minmax")
    opts = p.parse_args()
    machine = machine_info()
    torch.set_num_threads(opts.threads)
    if opts.model in ("digits", "resnet50", "mobilenetv2"):
        return cnn_main(opts)
    model, args = zoo.get(opts.model, masked=True) if opts.model == "bert" else \
        zoo.get(opts.model)
    model.eval()
    graph = graphopt.optimize(graphopt.trace(model, args), "default")
    if opts.model == "minilm":
        from graphopt.models_minilm import encode

        calib = [encode([s]) for s in CALIBRATION]
    else:
        calib = [(torch.randint(1000, 30000, args[0].shape), args[1]) for _ in range(2)]
    calls, sizes, rep_budget = _transformer_variants(model, graph, calib, opts,
                                                     tempfile.mkdtemp())
    timed = _timed(calls, args, opts.rounds)
    tokens = _token_cosines(calls, _accuracy_inputs(opts.model, args))
    sentences = _sentence_cosines(model, calls) if opts.model == "minilm" else {}
    rows = {name: _row(timed[name], sizes.get(name), tokens.get(name), sentences.get(name))
            for name in calls}
    _print_rows(opts, rows, machine)
    print(f"budget run: {len(rep_budget.quantized)}/{len(rep_budget.layers)} int8, "
          f"fallback {rep_budget.fallback}")
    _write(opts, machine, rows, {"fallback": rep_budget.fallback,
                                 "inputs": [list(a.shape) for a in args]})


def _row(best, size, token_cos, sentence_cos) -> dict:
    row = {"p50_ms": best.p50_ms, "iqr_ms": best.iqr_ms, "setting": best.setting,
           "settings_p50_ms": best.settings_p50_ms,
           "size_mb": size / 1e6 if size else None}
    if token_cos is not None:
        row["token_cos_mean"], row["token_cos_min"] = token_cos
    if sentence_cos is not None:
        row["cos_mean"], row["cos_min"] = sentence_cos
    return row


def _print_rows(opts, rows: dict, machine: dict) -> None:
    print(f"\n{opts.model}, {opts.threads} threads, {opts.rounds} interleaved rounds, "
          f"{machine['cpu_model']}, load {machine['load_avg_1m']}, int8 kernels "
          f"{_C.native_qgemm_isa()}")
    print(f"{'variant':32s} {'p50 ms':>8s} {'iqr':>6s} {'size MB':>8s} {'tok cos mean/min':>17s}"
          f" {'sent cos mean/min':>17s}  ORT setting")
    for name, r in rows.items():
        size = f"{r['size_mb']:8.1f}" if r["size_mb"] else f"{'-':>8s}"
        tok = f"{r.get('token_cos_mean', float('nan')):.4f}/{r.get('token_cos_min', float('nan')):.4f}"
        sent = f"{r.get('cos_mean', float('nan')):.4f}/{r.get('cos_min', float('nan')):.4f}"
        setting = r["setting"] if r["setting"] != "default" else ""
        print(f"{name:32s} {r['p50_ms']:8.2f} {r['iqr_ms']:6.2f} {size} {tok:>17s} "
              f"{sent:>17s}  {setting}")


def _write(opts, machine: dict, rows: dict, extra: dict) -> None:
    """results/quant_<model>.json: the rows with the machine, thread and timing settings."""
    os.makedirs(RESULTS, exist_ok=True)
    data = {"schema": "graphopt-quant/2", "model": opts.model,
            "created": time.strftime("%Y-%m-%d"), "machine": machine,
            "config": {"threads": opts.threads, "rounds": opts.rounds,
                       "schedule": FAIR_SCHEDULE, "budget": opts.budget,
                       "observer": opts.observer,
                       "int8_kernels": _C.native_qgemm_isa(),
                       "int8_tiles": _C.cpu_features()["int8_gemm_tiles"],
                       "bf16_kernel": _C.cpu_features()["bf16_gemm_kernel"]},
            "rows": rows, **extra}
    with open(os.path.join(RESULTS, f"quant_{opts.model}.json"), "w") as f:
        json.dump(data, f, indent=1)


def _cnn_cosines(calls: dict, args: tuple, inputs: int = 8):
    """Cosine of each variant's output vs onnxruntime fp32 on ``inputs`` random images:
    ({name: mean}, {name: worst})."""
    gen = torch.Generator().manual_seed(2)
    images = [(torch.randn(args[0].shape, generator=gen),) for _ in range(inputs)]
    refs = [_first(_call(calls["ort fp32"])(*x)).flatten().double() for x in images]
    mean, worst = {}, {}
    for name, fn in calls.items():
        cos = [float(torch.nn.functional.cosine_similarity(
            ref, _first(_call(fn)(*x)).flatten().double(), dim=0)) for x, ref in zip(images, refs)]
        mean[name], worst[name] = sum(cos) / len(cos), min(cos)
    return mean, worst


def _first(out):
    return out if torch.is_tensor(out) else out[0]


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
    timed = _timed(calls, args, opts.rounds)
    p50 = {name: best.p50_ms for name, best in timed.items()}
    quality, worst = {}, {}
    if opts.model == "digits":
        quality["reference fp32"] = float((graphopt.run(graph, x_test).argmax(-1) == y_test)
                                          .float().mean())
        quality["reference static int8"] = float(
            (graphopt.run(q, x_test).argmax(-1) == y_test).float().mean())
        for name, fn in calls.items():
            logits = torch.cat([_first(_call(fn)(x_test[i: i + 1]))
                                for i in range(len(x_test))])
            quality[name] = float((logits.argmax(-1) == y_test).float().mean())
    else:
        quality, worst = _cnn_cosines(calls, args)
    metric = "accuracy" if opts.model == "digits" else "cos vs fp32"
    machine = machine_info()
    load = machine["load_avg_1m"]
    print(f"\n{opts.model}, batch 1, {opts.threads} threads, {opts.rounds} interleaved rounds, "
          f"load {load:.2f}, {time.strftime('%Y-%m-%d')}")
    print(f"{'variant':32s} {'p50 ms':>8s} {'vs fp32':>8s} {'size MB':>8s} {metric:>12s}")
    rows = {}
    for name in calls:
        rows[name] = {"p50_ms": p50[name], "iqr_ms": timed[name].iqr_ms,
                      "setting": timed[name].setting, "size_mb": sizes[name] / 1e6,
                      "quality": quality.get(name), "quality_min": worst.get(name)}
        print(f"{name:32s} {p50[name]:8.3f} {p50[name] / p50['ort fp32']:7.2f}x "
              f"{sizes[name] / 1e6:8.2f} {quality.get(name, float('nan')):12.4f}")
    for name in ("reference fp32", "reference static int8"):
        if name in quality:
            print(f"{name:32s} {'':8s} {'':8s} {'':8s} {quality[name]:12.4f}")
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"quant_{opts.model}.json"), "w") as f:
        json.dump({"schema": "graphopt-quant-cnn/2", "model": opts.model,
                   "created": time.strftime("%Y-%m-%d"), "machine": machine,
                   "schedule": FAIR_SCHEDULE, "rows": rows, "quality": quality,
                   "metric": metric, "load": load,
                   "threads": opts.threads, "rounds": opts.rounds,
                   "observer": opts.observer}, f, indent=1)


if __name__ == "__main__":
    main()
