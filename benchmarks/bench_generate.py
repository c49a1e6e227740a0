"""Decoding benchmark (issue #20): greedy generation with a KV cache, graphopt vs transformers.

Models: GPT-2 small (124M) and a Llama-style model of the same width (12 layers, RMSNorm, rotary,
SwiGLU, 4 key/value heads), random weights (seed 0), built from their transformers config
classes. A ``--prompt``-token prompt (64) and ``--new`` new tokens (128), batch 1, 2 threads.

Variants, each at its own best settings:

* ``eager``: transformers' ``model.generate`` (greedy, its dynamic KV cache), torch 2 threads;
* ``native`` fp32 / weight-only int8 / weight-only int4 (block 32) with float activations, and
  int4 with int8 activations (``act_bits=8``): ``graphopt.trace_decoder`` -> ``optimize`` ->
  (``quantize(..., "weight-only")``) -> ``compile(native)`` -> ``generate``;
* ``onnxruntime`` fp32, int4 and int4 with int8 activations: the same graphs lowered to
  onnxruntime (``MatMulNBits`` accuracy_level 0, resp. 4: its fastest CPU path), each with
  intra-op spinning on and off (the faster is reported).

Timing: ``--rounds`` interleaved rounds in rotated order with a pause between variants; per run
the time to the first token (prefill) and the decode rate ((new - 1) tokens after the first);
medians. Accuracy beside speed: the generated tokens against eager's (fp32 must be identical),
and teacher-forced next-token logits over ``--quality-seqs`` x new positions (eager's own greedy
continuations) against eager's logits: cosine mean / min and top-1 agreement. Memory: weights
and cache bytes, and the peak RSS during one generation measured in a fresh process per variant
(after the traced model and float graphs are dropped), minus that process's RSS after imports.
Rounding: int4 with GPTQ (``rounding="gptq"``, accuracy only: its kernels are int4's), calibrated
on ``--calib-seqs`` replayed eager continuations of other random prompts, against
round-to-nearest.

Usage: python benchmarks/bench_generate.py [--models gpt2,llama] [--rounds 5] [--out PATH]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import time
import warnings

import torch

import graphopt
from graphopt.bench.machine import machine_info
from graphopt.bench.report import write_results
from graphopt.decoding import CompiledDecoder
from graphopt.stagereport import PeakMeter, rss_mib
from graphopt.timing import rotated
from graphopt.zoo import causal_lm

SCHEMA = "graphopt-generate/1"
THREADS = 2
SPIN = "session.intra_op.allow_spinning"
# name -> (backend, precision, compile options); onnxruntime names carry their settings.
# Precisions: weight-only bits and activation bits (0: float activations).
PRECISIONS = {"fp32": None, "int8": (8, 0), "int4": (4, 0), "int4-a8": (4, 8)}
# Measured for accuracy only (the same kernels as int4): GPTQ rounding, calibrated on
# --calib-seqs replayed sequences (graphopt.decoding.calibration_steps) of other prompts.
GPTQ = "native int4-gptq"
VARIANTS = {
    **{f"native {p}": ("native", p, {}) for p in PRECISIONS},
    **{f"onnxruntime {p} spin={s}": ("onnxruntime", p, {"session_config": {SPIN: s}})
       for p in ("fp32", "int4", "int4-a8") for s in "10"},
}
RSS_VARIANTS = ("eager", "native fp32", "native int4", "native int4-a8",
                "onnxruntime fp32 spin=1", "onnxruntime int4-a8 spin=1")


class Clock:
    """A streamer (transformers' put/end protocol) noting when each step's tokens arrive."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, _value):
        self.times.append(time.perf_counter())

    def end(self):
        pass

    def summary(self, start: float) -> tuple[float, float]:
        """(ms to the first new token, decode tokens/s after it); times[0] is the prompt."""
        first, last = self.times[1], self.times[-1]
        return (first - start) * 1e3, (len(self.times) - 2) / (last - first)


def quantized_graph(graph, precision: str):
    if PRECISIONS[precision] is None:
        return graph
    bits, act_bits = PRECISIONS[precision]
    return graphopt.quantize(graph, "weight-only", bits=bits, block_size=32, act_bits=act_bits)


def gptq_variant(decoder, fp32: CompiledDecoder, args, gen) -> CompiledDecoder:
    """int4 weights rounded by GPTQ on ``args.calib_seqs`` greedy continuations of random
    prompts, longer than the measured ones: every layer needs several times as many input rows
    as inputs (gptq.py), the LM head one row a step."""
    from graphopt.decoding import calibration_steps

    prompt = decoder.max_length - args.new // 2
    prompts = torch.randint(0, decoder.vocab_size, (args.calib_seqs, prompt), generator=gen)
    # fp32 native greedy is token-identical to eager (checked above), and twice as fast
    seqs = [graphopt.generate(fp32, p[None], args.new // 2, eos_token_id=[]) for p in prompts]
    graph = graphopt.quantize(decoder.graph, "weight-only", bits=4, block_size=32,
                              rounding="gptq", calibration=calibration_steps(fp32, seqs, prompt))
    return decoder.with_graph(graph).compile(backend="native", threads=THREADS)


def build(arch: str, prompt: int, new: int):
    model = causal_lm(arch, "small")
    decoder = graphopt.trace_decoder(model, max_length=prompt + new)
    return model, decoder.with_graph(graphopt.optimize(decoder.graph))


def compile_variants(decoder, names) -> dict[str, CompiledDecoder]:
    graphs = {}
    compiled = {}
    for name in names:
        backend, precision, options = VARIANTS[name]
        if precision not in graphs:
            graphs[precision] = decoder.with_graph(quantized_graph(decoder.graph, precision))
        compiled[name] = graphs[precision].compile(backend=backend, threads=THREADS, **options)
    return compiled


def eager_generate(model, ids, new, streamer=None):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.generate(ids, max_new_tokens=new, do_sample=False, eos_token_id=None,
                              pad_token_id=0, streamer=streamer)


def runner(name, model, compiled, ids, new):
    if name == "eager":
        return lambda streamer=None: eager_generate(model, ids, new, streamer)
    c = compiled[name]
    return lambda streamer=None: graphopt.generate(c, ids, new, eos_token_id=[],
                                                   streamer=streamer)


def time_variants(calls: dict, rounds: int) -> dict[str, dict]:
    """Interleaved rounds in rotated order; medians of prefill ms and decode tokens/s."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    outputs = {}
    for turn in range(rounds):
        for name in rotated(list(calls), turn):
            time.sleep(0.3)  # an idle spinning pool must not steal the next variant's cores
            clock = Clock()
            start = time.perf_counter()
            outputs[name] = calls[name](clock)
            samples[name].append(clock.summary(start))
        print(f"  round {turn + 1}/{rounds}", file=sys.stderr)
    return {name: {"prefill_ms": statistics.median(s[0] for s in runs),
                   "decode_tokens_per_s": statistics.median(s[1] for s in runs),
                   "decode_tokens_per_s_runs": [round(s[1], 2) for s in runs],
                   "tokens": outputs[name][0].tolist()}
            for name, runs in samples.items()}


def teacher_forced_logits(compiled: CompiledDecoder, seq: torch.Tensor, prompt: int):
    """Logits predicting tokens prompt..end of ``seq[1, T]``, one decode step per token."""
    decoder = compiled.decoder
    cache = compiled.new_cache(1)
    slots = torch.zeros((1, decoder.max_length), dtype=torch.long)
    mask = torch.cat([slots, torch.ones((1, prompt), dtype=torch.long)], 1)
    logits, new = compiled.step(seq[:, :prompt], torch.arange(prompt)[None], mask, cache)
    compiled.write(cache, new, 0)
    slots[:, :prompt] = 1
    rows = [logits]
    for pos in range(prompt, seq.shape[1] - 1):
        mask = torch.cat([slots, torch.ones((1, 1), dtype=torch.long)], 1)
        logits, new = compiled.step(seq[:, pos:pos + 1], torch.tensor([[pos]]), mask, cache)
        compiled.write(cache, new, pos)
        slots[:, pos] = 1
        rows.append(logits)
    return torch.cat(rows)


def quality(model, compiled: dict, seqs, prompt: int) -> dict[str, dict]:
    with torch.no_grad():
        reference = torch.cat([model(s).logits[0, prompt - 1:-1] for s in seqs])
    out = {}
    for name, c in compiled.items():
        got = torch.cat([teacher_forced_logits(c, s, prompt) for s in seqs])
        cos = torch.nn.functional.cosine_similarity(got, reference, dim=-1)
        out[name] = {"positions": int(cos.numel()), "cosine_mean": float(cos.mean()),
                     "cosine_min": float(cos.min()),
                     "top1_agreement": float((got.argmax(-1) == reference.argmax(-1))
                                             .float().mean())}
    return out


def rss_probe(arch: str, name: str, prompt: int, new: int) -> dict:
    """Run in a fresh process: peak RSS of one generation with only ``name``'s model alive."""
    torch.set_num_threads(THREADS)
    baseline = rss_mib()
    model, decoder = build(arch, prompt, new)
    ids = torch.randint(0, decoder.vocab_size, (1, prompt),
                        generator=torch.Generator().manual_seed(1))
    if name == "eager":
        call = runner("eager", model, {}, ids, new)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
    else:
        compiled = compile_variants(decoder, [name])
        weights = compiled[name].decoder.weight_bytes()
        call = runner(name, None, compiled, ids, new)
        del model, decoder
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    call()  # warm: plans and packed weights exist before the measured run
    meter = PeakMeter()
    meter.start()
    call()
    return {"variant": name, "baseline_mib": baseline, "peak_mib": meter.peak_mib(),
            "model_peak_mib": meter.peak_mib() - baseline, "weight_bytes": weights,
            "method": meter.method}


def measure_rss(arch: str, prompt: int, new: int) -> dict[str, dict]:
    out = {}
    for name in RSS_VARIANTS:
        proc = subprocess.run([sys.executable, __file__, "--rss-probe", f"{arch}:{name}",
                               "--prompt", str(prompt), "--new", str(new)],
                              capture_output=True, text=True, check=True)
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  rss {name}: {out[name]['model_peak_mib']:.0f} MiB", file=sys.stderr)
    return out


def bench_model(arch: str, args) -> dict:
    print(f"{arch}: trace + optimize + quantize", file=sys.stderr)
    model, decoder = build(arch, args.prompt, args.new)
    compiled = compile_variants(decoder, VARIANTS)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, decoder.vocab_size, (1, args.prompt), generator=gen)
    calls = {"eager": runner("eager", model, compiled, ids, args.new)}
    calls.update({name: runner(name, model, compiled, ids, args.new) for name in compiled})
    for call in calls.values():
        call()  # warm-up: plans, sessions, packed weights
    timings = time_variants(calls, args.rounds)
    timings["eager"]["weight_bytes"] = sum(p.numel() * p.element_size()
                                           for p in model.parameters())
    for name, c in compiled.items():
        timings[name]["weight_bytes"] = c.decoder.weight_bytes()
    eager_tokens = timings["eager"]["tokens"]
    for row in timings.values():
        same = [a == b for a, b in zip(row["tokens"], eager_tokens)]
        row["tokens_equal_eager"] = all(same)
        row["agreeing_prefix"] = (same + [False]).index(False) - args.prompt
    prompts = torch.randint(0, decoder.vocab_size, (args.quality_seqs, args.prompt), generator=gen)
    seqs = [eager_generate(model, p[None], args.new) for p in prompts]
    measured = {n: compiled[n] for n in compiled if "spin=0" not in n}
    if args.calib_seqs:
        print(f"{arch}: gptq calibration", file=sys.stderr)
        measured[GPTQ] = gptq_variant(decoder, compiled["native fp32"], args, gen)
    acc = quality(model, measured, seqs, args.prompt)
    result = {"model": model.__class__.__name__, "arch": arch,
              "parameters": sum(p.numel() for p in model.parameters()),
              "cache_bytes": decoder.cache_bytes(1), "timings": timings, "quality": acc}
    del model, decoder, compiled, calls
    gc.collect()
    result["rss"] = measure_rss(arch, args.prompt, args.new) if not args.no_rss else {}
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2,llama")
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quality-seqs", type=int, default=4)
    parser.add_argument("--calib-seqs", type=int, default=48,
                        help="GPTQ calibration sequences (0: no GPTQ variant)")
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--rss-probe", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/generate.json")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.rss_probe:
        arch, name = args.rss_probe.split(":", 1)
        print(json.dumps(rss_probe(arch, name, args.prompt, args.new)))
        return
    torch.set_num_threads(THREADS)
    data = {"schema": SCHEMA, "machine": machine_info(),
            "settings": {"prompt": args.prompt, "new_tokens": args.new, "batch": 1,
                         "threads": THREADS, "rounds": args.rounds,
                         "quality_positions": args.quality_seqs * args.new,
                         "gptq_calibration_sequences": args.calib_seqs},
            "models": [bench_model(arch, args) for arch in args.models.split(",")]}
    write_results(args.out, data)


if __name__ == "__main__":
    main()
