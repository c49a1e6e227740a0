"""GOP/s of the native runtime's int8 GEMM ("qlinear") against its fp32 GEMM and torch.mm.

Shapes: BERT-base linear layers ([M, K] x [N, K]^T) at M = 128 tokens and M = 1 (GEMV).
Variants, each one kernel step of the native runtime on the same operands
(``graphopt.native.kernel_call.KernelCall``), timed in interleaved rounds (medians):

* ``fp32``: the runtime's "gemm" kernel with the weight pre-packed (what ``linear`` runs);
* ``int8 dyn``: "qlinear" on f32 input: dynamic quantization of x in the kernel + the int8 GEMM
  + dequantize epilogue (what ``qlinear_dynamic`` runs);
* ``int8 static``: "qlinear" on a u8 input with a given scale (the static qlinear's kernel);
* ``w4`` / ``w8``: "linear_wo", block-wise int4 / int8 weights (block 32) decoded in the kernel;
* ``torch``: ``torch.mm(x, w.t())`` in fp32 at the same thread count.

GOP/s count 2 * M * N * K operations for every variant. The int8 kernel set is printed
(``avxvnni_quad_u8`` / ``avx2_pair_i16`` / ``portable_pair_i16``); run with
``GRAPHOPT_DISABLE_VNNI=1`` to measure the AVX2 kernels on an AVX-VNNI machine.

Usage: python benchmarks/bench_qgemm.py [--threads 2] [--rounds 9] [--min-time 0.1] [--json P]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics

import numpy as np
import torch
from bench_gemm import quiet_sample

from graphopt import _C
from graphopt.native.codes import ACTIVATION_CODES
from graphopt.native.kernel_call import KernelCall
from graphopt.quant.weight_only import quantize_blocks

SHAPES = [("attn-out", 768, 768), ("ffn-up", 768, 3072), ("ffn-down", 3072, 768)]
NONE = ACTIVATION_CODES["none"]


def operands(m: int, k: int, n: int):
    """Seeded (x f32 [M, K], x_q u8 [M, K], w f32 [N, K], w_scale f32 [N], w_q i8 [N, K]) with
    w ~= w_q * w_scale (symmetric per output channel)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), dtype=np.float32)
    xq = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.standard_normal((n, k), dtype=np.float32) * 0.05
    w_scale = (np.abs(w).max(1) / 127).astype(np.float32)
    w_q = np.clip(np.rint(w / w_scale[:, None]), -127, 127).astype(np.int8)
    return x, xq, w, w_scale, w_q


def variants(m: int, k: int, n: int, threads: int) -> dict[str, callable]:
    x, xq, w, w_scale, w_q = operands(m, k, n)
    rng = np.random.default_rng(1)
    bias = rng.standard_normal(n, dtype=np.float32)
    out = np.zeros((m, n), np.float32)
    common = [m, n, k, k, 1]
    calls = {
        "fp32": KernelCall("gemm", [out, x, w, bias, None], [0, *common, 1, k, NONE, 0, 0],
                           [1.0, 0.0, 0.0], threads, const=(2,)),
        "int8 dyn": KernelCall("qlinear", [out, x, w_q, w_scale, bias, None],
                               [*common, k, 1, 0, NONE, 0, 0], [0.0, 0.0], threads, const=(2,)),
        "int8 static": KernelCall(
            "qlinear", [out, xq, w_q, w_scale, bias, None, np.float32(0.02), np.uint8(128)],
            [*common, k, 1, 1, NONE, 0, 0], [0.0, 0.0], threads, const=(2,)),
    }
    for bits in (4, 8):
        codes, scales = quantize_blocks(w, bits, 32)
        calls[f"w{bits}"] = KernelCall("linear_wo", [out, x, codes, scales, bias, None],
                                       [m, n, k, k, bits, 32, NONE, 0], [0.0, 0.0], threads,
                                       const=(2, 3))
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    fns = {name: call.run for name, call in calls.items()}
    fns["torch"] = lambda: torch.mm(tx, tw.t())
    return fns


def interleaved_rates(fns: dict, ops: float, opts) -> dict[str, float]:
    """G(FL)OP/s of each call in ``fns`` doing ``ops`` operations: one warm-up call each
    (packing scratch, pool threads), then ``opts.rounds`` rounds, the order reversed every
    other round, medians (samples from ``quiet_sample`` with ``opts.min_time``,
    ``opts.max_foreign_load``, ``opts.retries``)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for r in range(opts.rounds):
        order = list(fns.items())
        if r % 2:
            order.reverse()
        for name, fn in order:
            secs, _ = quiet_sample(fn, opts.min_time, opts.max_foreign_load, opts.retries)
            times[name].append(secs)
    return {name: ops / statistics.median(t) / 1e9 for name, t in times.items()}


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
    load = os.getloadavg()[0]
    print(f"{datetime.date.today()}, int8 kernels {_C.native_qgemm_isa()}, threads "
          f"{opts.threads}, {opts.rounds} interleaved rounds, load avg (1 min) {load:.2f}")
    names = ["fp32", "int8 dyn", "int8 static", "w4", "w8", "torch"]
    print(f"{'shape':<10} {'M':>4} {'K':>5} {'N':>5} " + " ".join(f"{n:>11s}" for n in names)
          + "   (GOP/s; int8 dyn / fp32)")
    rows = []
    for m in (128, 1):
        for label, k, n in SHAPES:
            gops = interleaved_rates(variants(m, k, n, opts.threads), 2.0 * m * n * k, opts)
            rows.append({"shape": label, "m": m, "k": k, "n": n, "gops": gops})
            print(f"{label:<10} {m:>4} {k:>5} {n:>5} "
                  + " ".join(f"{gops[n_]:>11.1f}" for n_ in names)
                  + f"   x{gops['int8 dyn'] / gops['fp32']:.2f}", flush=True)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"isa": _C.native_qgemm_isa(), "threads": opts.threads, "load": load,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
