"""The per-layer mode choice table of bench_quant_auto.py (docs/quantization.md).

Block ``quant_auto`` renders ``published/quant_auto.json`` (schema ``graphopt-quant-auto/1``):
per model, fp32 and each quantization plan (every mode alone, speed-aware, and ``auto``), the
batch-1 latency on each backend with its speed-up over fp32, the accuracy (mean and worst), the
weight bytes and what each plan made of the layers; then whether ``auto`` was at least as fast
as the best single mode on each model and backend, within the run's noise.
"""

from __future__ import annotations

from typing import Any

from render_results import renderer
from results_compression_speed import TIE, accuracy_cell, check_models, rows_by_variant

SCHEMA = "graphopt-quant-auto/1"


def _check(data: Any) -> dict[str, Any]:
    return check_models(data, SCHEMA)


def _made(row: dict[str, Any]) -> str:
    """What the plan made of the layers: "dynamic 4", "static 6, dynamic 2", "all float"."""
    if "layers" not in row:
        return "-"
    if not row["layers"]:
        return "no candidate layers"
    modes = row.get("modes") or {}
    if not modes:
        return f"all {row['layers']} float"
    return ", ".join(f"{k} {v}" for k, v in modes.items()) + f" of {row['layers']}"


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    same = f", = {row['same_as']}" if row.get("same_as") else ""
    return f"{row['p50_ms']:.3f} ({row['speedup']:.2f}x{same})"


@renderer("quant_auto")
def render_quant_auto(data: Any) -> str:
    data = _check(data)
    backends = data["settings"]["backends"]
    lines = ["| model | plan | " + " | ".join(f"{b} p50 ms (vs fp32)" for b in backends) +
             " | accuracy | weights | layers (" + " / ".join(backends) + ") |",
             "|---|---|" + "---:|" * len(backends) + "---|---:|---|"]
    verdicts = []
    for model in data["models"]:
        by_variant = rows_by_variant(model)
        for variant, per_backend in by_variant.items():
            accuracy = " / ".join(dict.fromkeys(accuracy_cell(r) for r in per_backend.values()))
            made = " / ".join(dict.fromkeys(_made(r) for r in per_backend.values()))
            size = " / ".join(dict.fromkeys(f"{r['bytes'] / 1e6:.2f}"
                                            for r in per_backend.values()))
            lines.append(f"| {model['name']} | {variant} | "
                         + " | ".join(_cell(per_backend.get(b)) for b in backends)
                         + f" | {accuracy} | {size} MB | {made} |")
        verdicts += [_verdict(model["name"], b, by_variant) for b in backends]
    s = data["settings"]
    behind = [v for v in verdicts if v]
    lines += ["", f"Batch 1, {s['threads']} threads, {s['rounds']} interleaved rounds per model "
              f"and backend (rotated, in blocks of 4 with a pause between blocks), medians; "
              f"every plan within error budget {s['error_budget']:g} (mean 1 - cosine on the "
              "calibration inputs). \"= X\": the plan made the same graph as X (its time "
              "differs from X's by this run's noise only). "
              + ("auto behind the best single mode beyond the 2% tie: " + "; ".join(behind)
                 + "." if behind else "auto was at least as fast as the best single mode on "
                 "every model and backend, within the 2% tie.")]
    return "\n".join(lines)


def _verdict(model: str, backend: str, by_variant: dict) -> str:
    """'' when auto is within the tie of the fastest single mode on ``backend``, else why."""
    rows = {v: r[backend] for v, r in by_variant.items() if backend in r}
    if "auto" not in rows:
        return ""
    auto = rows["auto"]
    singles = {v: r for v, r in rows.items() if v not in ("fp32", "auto")}
    if not singles:
        return ""
    best, row = min(singles.items(), key=lambda kv: kv[1]["p50_ms"])
    if auto.get("same_as") in (best, row.get("same_as") or best):
        return ""  # the same graph as the fastest single mode: any gap is noise
    if auto["p50_ms"] <= row["p50_ms"] * (1 + TIE):
        return ""
    return f"{model} on {backend} ({auto['p50_ms']:.3f} vs {best} {row['p50_ms']:.3f} ms)"
