"""GEMM throughput at transformer shapes: graphopt's native fp32 / bf16 / int8 against torch.

Shapes: M = 1, 16, 128, 512 rows against the linear layers of BERT-base (K x N = 768 x 768,
768 x 3072, 3072 x 768) and GPT-2 small's fused QKV (768 x 2304). Variants, timed in
interleaved rounds (the order reverses every round; medians), all at ``--threads``:

* ``native fp32``: the runtime's "gemm" kernel, weight pre-packed (what ``linear`` runs);
* ``native bf16``: the same kernel with ``precision="bf16"`` (csrc/rt_bf16.h; AMX tiles where
  the CPU has them): fp32 activations rounded to bf16 inside the call, fp32 output;
* ``native int8``: "qlinear" static (u8 activations with a zero point, s8 weights, fp32
  dequantized output) and ``native int8 dyn`` (dynamic quantization of the fp32 input inside
  the call, what ``qlinear_dynamic`` runs);
* ``torch fp32`` / ``torch bf16``: ``torch.mm`` on fp32 / bf16 operands (oneDNN; bf16 on AMX);
* ``torch int8``: ``torch._int_mm`` (s8 x s8 -> s32, no dequantization; M >= 17 only).

GFLOP/s (GOP/s for int8) count 2 * M * N * K for every variant. Results: printed, and with
``--json`` written with the machine description (benchmarks/results/ is scratch; published
numbers are copied to benchmarks/results/published/).

Usage: python benchmarks/bench_amx_gemm.py [--threads 2] [--rounds 9] [--min-time 0.1]
    [--json PATH]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from bench_qgemm import interleaved_rates, operands

from graphopt import _C
from graphopt.bench.machine import machine_info
from graphopt.native.codes import ACTIVATION_CODES
from graphopt.native.kernel_call import KernelCall

SHAPES = [("attn-out", 768, 768), ("ffn-up", 768, 3072), ("ffn-down", 3072, 768),
          ("gpt2-qkv", 768, 2304)]
ROWS = (1, 16, 128, 512)
NONE = ACTIVATION_CODES["none"]
NAMES = ["native fp32", "native bf16", "native int8", "native int8 dyn", "torch fp32",
         "torch bf16", "torch int8"]


def variants(m: int, k: int, n: int, threads: int) -> dict[str, callable]:
    x, xq, w, w_scale, w_q = operands(m, k, n)
    out = np.zeros((m, n), np.float32)
    dims = [m, n, k, k, 1]

    def gemm(bf16: int) -> KernelCall:  # B = W^T read through strides (1, k)
        return KernelCall("gemm", [out, x, w, None, None], [0, *dims, 1, k, NONE, 0, bf16],
                          [1.0, 0.0, 0.0], threads, const=(2,))

    calls = {
        "native fp32": gemm(0), "native bf16": gemm(1),
        "native int8": KernelCall(
            "qlinear", [out, xq, w_q, w_scale, None, None, np.float32(0.02), np.uint8(128)],
            [*dims, k, 1, 1, NONE, 0, 0], [0.0, 0.0], threads, const=(2,)),
        "native int8 dyn": KernelCall("qlinear", [out, x, w_q, w_scale, None, None],
                                      [*dims, k, 1, 0, NONE, 0, 0], [0.0, 0.0], threads,
                                      const=(2,)),
    }
    fns = {name: call.run for name, call in calls.items()}
    tx, tw = torch.from_numpy(x), torch.from_numpy(w).t().contiguous()
    bx, bw = tx.bfloat16(), tw.bfloat16()
    fns["torch fp32"] = lambda: torch.mm(tx, tw)
    fns["torch bf16"] = lambda: torch.mm(bx, bw)
    if m > 16:  # torch._int_mm's CPU kernel wants M > 16
        ix = torch.from_numpy(xq.astype(np.int16) - 128).to(torch.int8)
        iw = torch.from_numpy(w_q).t().contiguous()
        fns["torch int8"] = lambda: torch._int_mm(ix, iw)
    return fns


def measure(m: int, k: int, n: int, opts) -> dict[str, float]:
    return interleaved_rates(variants(m, k, n, opts.threads), 2.0 * m * n * k, opts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--min-time", type=float, default=0.1)
    p.add_argument("--max-foreign-load", type=float, default=0.3)
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--json", default=None)
    opts = p.parse_args()
    torch.set_num_threads(opts.threads)
    features = _C.cpu_features()
    print(f"bf16 kernel {features['bf16_gemm_kernel']}, int8 tiles "
          f"{features['int8_gemm_tiles']} ({_C.native_qgemm_isa()}), threads {opts.threads}, "
          f"{opts.rounds} interleaved rounds; GFLOP/s (GOP/s for int8)")
    print(f"{'shape':<9} {'M':>4} {'K':>5} {'N':>5} " + " ".join(f"{n:>15s}" for n in NAMES))
    rows = []
    for m in ROWS:
        for label, k, n in SHAPES:
            rate = measure(m, k, n, opts)
            rows.append({"shape": label, "m": m, "k": k, "n": n, "gflops": rate})
            print(f"{label:<9} {m:>4} {k:>5} {n:>5} "
                  + " ".join(f"{rate[x]:>15.0f}" if x in rate else f"{'-':>15s}"
                             for x in NAMES), flush=True)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"schema": "graphopt-amx-gemm/1", "machine": machine_info(),
                       "features": features, "int8_kernels": _C.native_qgemm_isa(),
                       "threads": opts.threads, "rounds": opts.rounds, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
