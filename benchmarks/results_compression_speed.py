"""The "compression that pays" table of bench_compression_speed.py (docs/compression.md).

Block ``compression_speed`` renders ``published/compression_speed.json`` (schema
``graphopt-compression-speed/1``): per model and compressed form, the batch-1 latency on native
and on onnxruntime with its speed-up over the fp32 optimized graph, the accuracy (digits: test
accuracy; zoo models with random weights: output cosine to fp32, mean and worst), the weight
bytes and how many layers the speed-aware quantization kept int8 on each backend; then every
result slower than its fp32 input beyond the 2% tie, if any.
"""

from __future__ import annotations

from typing import Any

from render_results import ResultsFormatError, renderer

SCHEMA = "graphopt-compression-speed/1"
TIE = 0.02  # graphopt.quant.speed.TIE: medians this close count as equally fast
FIELDS = {"variant", "p50_ms", "iqr_ms", "speedup", "bytes"}


def _check(data: Any) -> dict[str, Any]:
    return check_models(data, SCHEMA)


def check_models(data: Any, schema: str) -> dict[str, Any]:
    """``data`` if it is ``{"schema": schema, "models": [{"backends": [{"variants": rows}]}]}``
    with every row holding ``FIELDS``; else ``ResultsFormatError`` naming what is wrong."""
    if not isinstance(data, dict) or data.get("schema") != schema or not data.get("models"):
        raise ResultsFormatError(f"expected schema {schema} with models")
    for model in data["models"]:
        for backend in model.get("backends", []):
            for row in backend.get("variants", []):
                if not FIELDS <= set(row):
                    raise ResultsFormatError(f"{model.get('name')} {backend.get('backend')}: "
                                             f"a variant lacks {sorted(FIELDS - set(row))}")
    return data


def accuracy_cell(row: dict[str, Any]) -> str:
    if "accuracy" in row:
        return f"{row['accuracy']:.2f}%"
    return f"cos {row['cosine_mean']:.4f} (worst {row['cosine_min']:.4f})"


def rows_by_variant(model: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """variant -> backend -> row."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for backend in model["backends"]:
        for row in backend["variants"]:
            out.setdefault(row["variant"], {})[backend["backend"]] = row
    return out


@renderer("compression_speed")
def render_compression_speed(data: Any) -> str:
    data = _check(data)
    backends = data["settings"]["backends"]
    head = "| model | form | " + " | ".join(f"{b} p50 ms (vs fp32)" for b in backends) + \
        " | accuracy | weights | int8 layers (" + " / ".join(backends) + ") |"
    lines = [head, "|---|---|" + "---:|" * len(backends) + "---|---:|---|"]
    slower: list[str] = []
    noise: list[float] = []
    for model in data["models"]:
        for variant, per_backend in rows_by_variant(model).items():
            cells = []
            for b in backends:
                row = per_backend.get(b)
                if row is None:
                    cells.append("-")
                    continue
                same, as_fp32 = _same_computation(row, b)
                cells.append(f"{row['p50_ms']:.3f} ({row['speedup']:.2f}x" +
                             (f", {same})" if same else ")"))
                if as_fp32:
                    noise.append(row["speedup"])
                elif row["speedup"] < 1 / (1 + TIE):
                    slower.append(f"{model['name']} {variant} on {b} ({row['speedup']:.2f}x)")
            accuracies = {b: accuracy_cell(r) for b, r in per_backend.items()}
            accuracy = " / ".join(dict.fromkeys(accuracies.values()))
            first = next(iter(per_backend.values()))
            layers = " / ".join(f"{r['int8_layers']}/{r['layers']}" for r in per_backend.values()
                                if "int8_layers" in r) or "-"
            lines.append(f"| {model['name']} | {variant} | " + " | ".join(cells) +
                         f" | {accuracy} | {first['bytes'] / 1e6:.2f} MB | {layers} |")
    s = data["settings"]
    lines += ["", f"Batch 1, {s['threads']} threads, {s['rounds']} interleaved rounds per model "
              "and backend (rotated, in blocks of 4 with a pause between blocks), medians. "
              "Accuracy: where the backends' int8 plans "
              "differ, native's / onnxruntime's. "
              + ("Slower than fp32 beyond the 2% tie: " + "; ".join(slower) + "."
                 if slower else "No compressed form that computes differently from its fp32 "
                 "input is slower than it beyond the 2% tie.")]
    if noise:
        lines[-1] += (f" Rows marked as computing what fp32 computes (every layer kept float "
                      f"by the speed-aware plan; dense kernels for a sparse model) measured "
                      f"{min(noise):.2f}x to {max(noise):.2f}x: this run's noise between "
                      f"identical computations.")
    return "\n".join(lines)


def _same_computation(row: dict[str, Any], backend: str) -> tuple[str, bool]:
    """Why this form runs the kernels of a less compressed one ('' if it does not), and
    whether that one is the fp32 graph (then its time differs from fp32's by noise only)."""
    if row.get("int8_layers") == 0:
        return ("all kept float" + (" = pruned" if row["variant"] == "pruned + int8" else ""),
                row["variant"] == "int8")
    if row["variant"] == "sparse" and backend != "native":
        return "dense kernels", True
    if row["variant"] == "sparse" and row.get("csr_layers") == 0:
        return "CSR measured slower: dense", True
    return "", False


@renderer("compression_speed_reports", source="compression_speed.json")
def render_classification_reports(data: Any) -> str:
    """scikit-learn's classification_report of each digits model, fp32 and pruned + int8."""
    data = _check(data)
    blocks = []
    for model in data["models"]:
        rows = rows_by_variant(model)
        if "classification_report" not in rows.get("fp32", {}).get("native", {}):
            continue
        for variant in ("fp32", "pruned + int8"):
            for backend, row in rows.get(variant, {}).items():
                if variant == "fp32" and backend != "native":
                    continue  # one fp32 report: the same graph on every backend
                blocks += [f"**{model['name']}, {variant}" +
                           (f" ({backend} plan)" if variant != "fp32" else "") +
                           f"**: {row['accuracy']:.2f}%", "", "```",
                           row["classification_report"].rstrip(), "```", ""]
    return "\n".join(blocks).rstrip()
