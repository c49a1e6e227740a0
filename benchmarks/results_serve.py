"""The load-test table of bench_serve.py (docs/serving.md).

Block ``serve_load`` renders ``published/serve_load.json`` (schema ``graphopt-serve-load/1``):
per run (dynamic batching on, off, and a malformed-request mix), throughput, p50 / p99
latency, the mean rows per model call, the status counts, the errors (connection failures,
5xx, a wrong status) and the worst cosine of a served embedding to eager PyTorch's.
"""

from __future__ import annotations

from typing import Any

from render_results import ResultsFormatError, renderer

SCHEMA = "graphopt-serve-load/1"


@renderer("serve_load")
def render_serve_load(data: Any) -> str:
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not data.get("runs"):
        raise ResultsFormatError(f"expected schema {SCHEMA} with runs")
    s = data["settings"]
    lines = ["| run | server | answered | throughput (req/s) | p50 ms | p99 ms | rows per call "
             "| statuses | errors | worst cosine vs eager |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    base = next((r for r in data["runs"] if r["config"] == "no batching"), None)
    for r in data["runs"]:
        ratio = (f" ({r['throughput_rps'] / base['throughput_rps']:.2f}x)"
                 if base is not None and r is not base else "")
        statuses = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
        lines.append(f"| {r['config']} | {' '.join(r['server_args'])} | {r['good_requests']} | "
                     f"{r['throughput_rps']:.1f}{ratio} | {r['p50_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {r.get('mean_batch_rows', 1.0):.1f} | {statuses} | "
                     f"{r['errors']} | {r['worst_cosine_vs_eager']:.6f} |")
    lines += ["", f"{s['clients']} concurrent clients for {s['seconds']:g} s per run, "
              f"{s['model']}, sequence length {s['seq']}, {s['backend']} backend, "
              f"{s['threads']} threads; the clients run on the same machine as the server. "
              "\"answered\": good requests answered 200 (the malformed mix sends one in five "
              "broken; each got its 4xx)."]
    return "\n".join(lines)
