"""The static-int8 CNN tables of bench_quant.py (``--model digits|mobilenetv2|resnet50``).

Blocks ``quant_digits``, ``quant_mobilenetv2`` and ``quant_resnet50`` render
``published/quant_<model>.json`` (schema ``graphopt-quant-cnn/2``): latency with its IQR and
speed vs onnxruntime fp32, file size, and beside them the quality: test accuracy for the
trained digits CNN, for the random-weight zoo CNNs the cosine of the outputs vs fp32 (mean and
worst image).
"""

from __future__ import annotations

import textwrap
from typing import Any

from render_results import ResultsFormatError, renderer

CNN_SCHEMA = "graphopt-quant-cnn/2"
BASELINE = "ort fp32"
TITLES = {
    "digits": "digits CNN (trained on scikit-learn's digits), batch 1; accuracy on its 397 test "
              "images",
    "mobilenetv2": "MobileNetV2 224 (zoo, random weights, calibrated batch norms), batch 1; "
                   "cosine of the outputs vs fp32 on 8 random images",
    "resnet50": "ResNet-50 224 (zoo, random weights, calibrated batch norms), batch 1; cosine "
                "of the outputs vs fp32 on 8 random images",
}


def _check(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("schema") != CNN_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ResultsFormatError(f"expected schema {CNN_SCHEMA!r} (bench_quant.py --model "
                                 f"digits|mobilenetv2|resnet50), found {found!r}")
    return data


def _quality(row: dict[str, Any]) -> str:
    if row.get("quality") is None:
        return "–"
    if row.get("quality_min") is None:
        return f"{row['quality']:.4f}"
    return f"{row['quality']:.4f} / {row['quality_min']:.4f}"


def render_cnn(data: Any) -> str:
    data = _check(data)
    rows, machine = data["rows"], data["machine"]
    base = rows[BASELINE]["p50_ms"]
    digits = data["model"] == "digits"
    quality = "accuracy" if digits else "cosine vs fp32 mean / min"
    lines = [f"| variant | p50 ms (IQR) | vs `{BASELINE}` latency | MB | {quality} |",
             "|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['p50_ms']:.3f} ({row['iqr_ms']:.3f}) | "
                     f"{row['p50_ms'] / base:.2f}× | {row['size_mb']:.2f} | {_quality(row)} |")
    versions = machine.get("versions", {})
    caption = (
        f"{TITLES.get(data['model'], data['model'])}. {machine.get('cpu_model')} "
        f"({'/'.join(machine.get('cpu_flags', []))}), onnxruntime {versions.get('onnxruntime')};"
        f" {data['threads']} threads, {data['rounds']} interleaved rounds, observer "
        f"{data.get('observer')}; run {data.get('created')}, load {machine.get('load_avg_1m')},"
        f" other processes {machine.get('competing_cpus')} CPUs at the start.")
    if digits and "reference fp32" in data.get("quality", {}):
        caption += (f" Reference interpreter: fp32 {data['quality']['reference fp32']:.4f}, "
                    f"static int8 {data['quality']['reference static int8']:.4f}.")
    return "\n".join(lines) + "\n\n" + textwrap.fill(caption, width=100,
                                                     break_long_words=False,
                                                     break_on_hyphens=False)


@renderer("quant_digits")
def render_quant_digits(data: Any) -> str:
    """Static int8 of the trained digits CNN."""
    return render_cnn(data)


@renderer("quant_mobilenetv2")
def render_quant_mobilenetv2(data: Any) -> str:
    """Static int8 of MobileNetV2."""
    return render_cnn(data)


@renderer("quant_resnet50")
def render_quant_resnet50(data: Any) -> str:
    """Static int8 of ResNet-50."""
    return render_cnn(data)
