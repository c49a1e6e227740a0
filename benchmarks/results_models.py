"""The "models" tables and plot: p50 per model and backend from bench_models.py's reports.

Registered with benchmarks/render_results.py (which loads every ``results_*.py`` next to it).
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from render_results import (
    ResultsFormatError,
    plotter,
    renderer,
    report_from_dict,
)

from graphopt.bench.report import SCHEMA


def _reports(data: Any) -> list[dict[str, Any]]:
    if not isinstance(data, dict) or not isinstance(data.get("reports"), list):
        raise ResultsFormatError('expected {"reports": [report, ...]} '
                                 "(benchmarks/bench_models.py's all.json)")
    for rep in data["reports"]:
        if rep.get("schema") != SCHEMA:
            raise ResultsFormatError(f"report {rep.get('model', {}).get('name')!r} has schema "
                                     f"{rep.get('schema')!r}, expected {SCHEMA!r}")
    return data["reports"]


BACKEND_LABELS = {"eager": "eager", "torch-compile": "torch.compile",
                  "onnxruntime": "onnxruntime (torch.onnx.export)",
                  "graphopt-onnxruntime": "graphopt → onnxruntime",
                  "graphopt-native": "graphopt → native", "graphopt-torch": "graphopt → torch"}
# zoo name -> (label given the first input's shape); the shape makes seq / size / width exact
_MODEL_LABELS: dict[str, Callable[[list[int]], str]] = {
    "mlp": lambda s: f"MLP 4×Linear({s[1] if len(s) > 1 else 1024})",
    "mobilenetv2": lambda s: f"MobileNetV2 {s[-1] if len(s) == 4 else 224}",
    "resnet50": lambda s: f"ResNet-50 {s[-1] if len(s) == 4 else 224}",
    "resnext50": lambda s: f"ResNeXt-50 32x4d {s[-1] if len(s) == 4 else 224}",
    "bert": lambda s: f"BERT-base, seq {s[1] if len(s) > 1 else 128}",
    "gpt2": lambda s: f"GPT-2 small, seq {s[1] if len(s) > 1 else 64}",
}
_BATCH_TOKEN = re.compile(r"b(?:atch)?(\d+)")
# name tokens the label already shows (from the input shapes): not repeated as "(...)"
_SHAPE_TOKEN = re.compile(r"(?:s|seq|size|w|width)\d+|masked?")


def model_label(model: dict[str, Any]) -> str:
    """'bert-b8-masked' with inputs [8, 128] x2 -> 'BERT-base, seq 128, batch 8, masked'."""
    name = str(model.get("name", "?"))
    base, *suffix = name.split("-")
    inputs = model.get("inputs") or []
    shape = list(inputs[0].get("shape", [])) if inputs else []
    if base not in _MODEL_LABELS:
        described = ", ".join(f"{i.get('dtype')}{list(i.get('shape', []))}" for i in inputs)
        return f"{name} ({described})" if described else name
    parts = [_MODEL_LABELS[base](shape)]
    batch = shape[0] if shape else None
    extra = []
    for token in suffix:
        matched = _BATCH_TOKEN.fullmatch(token)
        if matched and batch is None:
            batch = int(matched[1])
        elif not matched and not _SHAPE_TOKEN.fullmatch(token):
            extra.append(token)
    if batch not in (None, 1):
        parts.append(f"batch {batch}")
    # the zoo's masked transformers take (ids, attention mask): a second input is the mask
    if {"mask", "masked"} & set(suffix) or (base in ("bert", "gpt2") and len(inputs) > 1):
        parts.append("masked")
    return ", ".join(parts) + (f" ({'-'.join(extra)})" if extra else "")


def sig3(value: float) -> str:
    """Three significant figures without exponents: 0.522, 29.5, 143, 1230 (for 1234)."""
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    rounded = float(f"{value:.3g}")
    decimals = max(0, 2 - math.floor(math.log10(abs(rounded))))
    return f"{rounded:.{decimals}f}"


def _backends(reports: list[dict[str, Any]]) -> list[str]:
    order: list[str] = []
    for rep in reports:
        order += [r["backend"] for r in rep["results"] if r["backend"] not in order]
    return order


def _p50(result: dict[str, Any] | None) -> float | None:
    if result is None or result.get("status") != "ok" or not result.get("latency_ms"):
        return None
    return result["latency_ms"]["p50"]


# The bar for fp32: outputs within 1e-4 of eager, relative to the output's scale
# (max |out - ref| / max |ref|). The harness's elementwise rtol/atol check is stricter on large
# outputs and flags even onnxruntime's own ResNet-50 export; this is what the table marks.
REL_TOL = 1e-4


def _wrong(result: dict[str, Any]) -> bool:
    """Outputs too far from the reference: max_rel_err above REL_TOL (numerics_ok without it)."""
    if result.get("max_rel_err") is not None:
        return result["max_rel_err"] > REL_TOL
    return result.get("numerics_ok") is False


def _cell(result: dict[str, Any] | None, fastest: float | None) -> str:
    if result is None:
        return "–"
    p50 = _p50(result)
    if p50 is None:
        return str(result.get("status", "?"))
    speedup = result.get("speedup_vs_eager")
    text = sig3(p50)
    if speedup is not None and result["backend"] != "eager":
        text += f" ({speedup:.2f}×)"
    if _wrong(result):
        text += " †"
    # a result with wrong outputs never counts as the fastest
    return f"**{text}**" if p50 == fastest and not _wrong(result) else text


@renderer("models")
def render_models(data: Any) -> str:
    """p50 ms (speedup vs eager) per model and backend, then the run's conditions and errors."""
    reports = _reports(data)
    backends = _backends(reports)
    lines = ["| model | " + " | ".join(BACKEND_LABELS.get(b, b) for b in backends) + " |",
             "|---" * (len(backends) + 1) + "|"]
    for rep in reports:
        by_backend = {r["backend"]: r for r in rep["results"]}
        valid = [_p50(r) for r in rep["results"] if not _wrong(r)]
        fastest = min((p for p in valid if p is not None), default=None)
        cells = [_cell(by_backend.get(b), fastest) for b in backends]
        lines.append(f"| {model_label(rep['model'])} | " + " | ".join(cells) + " |")
    notes = [_caption(reports), _accuracy(reports, backends)]
    notes += [_settings(reports, backends), _failures(reports), _busy(reports)]
    return "\n".join(lines) + "\n\n" + "\n\n".join(_wrap(n) for n in notes if n)


def _wrap(paragraph: str) -> str:
    # the documents keep prose under 100 columns; words (and model labels) are never split
    return textwrap.fill(paragraph, width=100, break_long_words=False, break_on_hyphens=False)


def _distinct(values: list[Any]) -> str:
    unique = list(dict.fromkeys(v for v in values if v not in (None, "", [])))
    if all(isinstance(v, (int, float)) for v in unique) and len(unique) > 1:
        return f"{min(unique)}–{max(unique)}"
    return " / ".join(str(v) for v in unique) or "?"


def _caption(reports: list[dict[str, Any]]) -> str:
    machines = [rep["machine"] for rep in reports]
    configs = [rep["config"] for rep in reports]
    flags = _distinct(["/".join(m.get("cpu_flags", [])) for m in machines])
    flags = "no SIMD flags recorded" if flags == "?" else flags
    versions = [f"{pkg} {_distinct([m.get('versions', {}).get(pkg) for m in machines])}"
                for pkg in ("torch", "onnxruntime", "graphopt")
                if any(m.get("versions", {}).get(pkg) for m in machines)]
    load = max((m["load_avg_1m"] for m in machines if m.get("load_avg_1m") is not None),
               default=None)
    others = max((m["competing_cpus"] for m in machines
                  if m.get("competing_cpus") is not None), default=None)
    quiet = f"load average ≤ {load}" if load is not None else "load not recorded"
    if others is not None:
        quiet += f", other processes ≤ {others} CPUs"
    return (f"p50 ms per call (speedup vs eager); bold: fastest per model. "
            f"{_distinct([m.get('cpu_model') for m in machines])} ({flags}), "
            f"{', '.join(versions)}; {_distinct([c.get('threads') for c in configs])} threads, "
            f"{_distinct([c.get('rounds_done') for c in configs])} interleaved rounds; "
            f"run {_distinct([str(rep.get('created', ''))[:10] for rep in reports])}; "
            f"{quiet} at the start.")


def _accuracy(reports: list[dict[str, Any]], backends: list[str]) -> str:
    worst: dict[str, float] = {}
    for rep in reports:
        reference = rep["config"].get("reference", "eager")
        for r in rep["results"]:
            # the reference's error against itself is 0 by construction: not worth a column
            if r.get("max_rel_err") is not None and r["backend"] != reference:
                worst[r["backend"]] = max(worst.get(r["backend"], 0.0), r["max_rel_err"])
    if not worst:
        return ""
    config = reports[0]["config"]
    cells = [f"{BACKEND_LABELS.get(b, b)} {_error(worst[b])}" for b in backends if b in worst]
    text = (f"Max relative error vs {config.get('reference', 'eager')} (worst over models, "
            f"scaled by max |reference|): {', '.join(cells)}.")
    if any(_wrong(r) for rep in reports for r in rep["results"]):
        text += (f" † max relative error above {REL_TOL:g} (never bold).")
    return text


def _error(value: float) -> str:
    return "0" if value == 0 else f"{value:.2e}"  # two digits: 1.02e-04 is above 1e-4


def _settings(reports: list[dict[str, Any]], backends: list[str]) -> str:
    """Which setting (e.g. spinning / no spinning) each backend chose per model, if recorded."""
    parts = []
    for backend in backends:
        chosen = []
        for rep in reports:
            r = next((r for r in rep["results"] if r["backend"] == backend), None)
            if r is None or not r.get("setting"):
                continue
            tried = (r.get("settings_p50_ms") or {}).items()
            others = [f"{name} {sig3(p50)}" for name, p50 in tried
                      if name != r["setting"] and p50 is not None]
            tried = f" (vs {', '.join(others)})" if others else ""
            chosen.append(f"{model_label(rep['model'])}: {r['setting']}{tried}")
        if chosen:
            parts.append(f"{BACKEND_LABELS.get(backend, backend)} — {'; '.join(chosen)}")
    return ("Settings (the faster of those tried, per model; p50 ms): " + ". ".join(parts) + "."
            if parts else "")


def _failures(reports: list[dict[str, Any]]) -> str:
    lines = []
    for rep in reports:
        for r in rep["results"]:
            if r.get("status") != "ok":
                reason = " ".join(str(r.get("reason", "")).split())
                reason = reason if len(reason) <= 120 else reason[:117] + "..."
                lines.append(f"{BACKEND_LABELS.get(r['backend'], r['backend'])} on "
                             f"{model_label(rep['model'])}: {r.get('status')}"
                             + (f" ({reason})" if reason else ""))
    return "Not measured: " + "; ".join(lines) + "." if lines else ""


def _busy(reports: list[dict[str, Any]]) -> str:
    warnings = [(model_label(rep["model"]), report_from_dict(rep).busy_warning())
                for rep in reports]
    return "\n\n".join(f"**{label}: {text}**" for label, text in warnings if text)


@plotter("models", "docs/img/bench_models.png")
def plot_models(data: Any, path: Path) -> None:
    """Speedup vs eager per model and backend (graphopt.bench.plot.plot_summary)."""
    from graphopt.bench.plot import plot_summary

    reports = []
    for raw in _reports(data):
        report = report_from_dict(raw)
        # axis labels as in the table, one part per line so five models fit side by side
        report.model["name"] = model_label(raw["model"]).replace(", ", "\n")
        reports.append(report)
    plot_summary(reports, str(path))


