"""The Deep Compression tables of bench_deep_compression.py (docs/compression.md).

Block ``deep_compression`` renders ``published/deep_compression.json`` (schema
``graphopt-deep-compression/1``): per model, the ratio of the float32 parameters to the ``.gcm``
file and the accuracy lost, mean and worst over the seeds (on the test digits, and on the
validation digits the settings were chosen on), then the paper's per-layer table of the first
seed (bytes after pruning, after weight sharing, after Huffman) and its accuracy after every
stage.
"""

from __future__ import annotations

import re
from typing import Any

from render_results import ResultsFormatError, plotter, renderer

SCHEMA = "graphopt-deep-compression/1"
STAGES = ("float32", "pruned", "shared", "shared_finetuned", "decoded_file")


def _check(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ResultsFormatError(f"expected schema {SCHEMA}")
    for name, model in data.get("models", {}).items():
        if not model.get("runs") or "summary" not in model:
            raise ResultsFormatError(f"{name}: no runs or no summary")
        missing = [s for s in STAGES if s not in model["runs"][0].get("accuracy", {})]
        if missing:
            raise ResultsFormatError(f"{name}: accuracy of stages {missing} missing")
    return data


def _layer_order(name: str) -> tuple:
    """Module order: "4.weight" before "10.weight" (numbers compare as numbers)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _settings(s: dict[str, Any], run: dict[str, Any]) -> str:
    sparsity = ", ".join(f"{name} {run['sparsity'][name]:.0%}"
                         for name in sorted(run["sparsity"], key=_layer_order))
    return (f"sparsity {sparsity} in {s['prune_steps']} rounds, codebooks {s['bits']} bits "
            f"(convolutions {s['conv_bits']}, biases {s['bias_bits'] or 'float'}), fine-tuning "
            f"{s['finetune_epochs']} + {s['centroid_epochs']} epochs"
            + (" with distillation" if s["distill"] else ""))


@renderer("deep_compression")
def render_deep_compression(data: Any) -> str:
    """Per model: ratio and accuracy loss over seeds, the per-layer stage table, accuracy."""
    data = _check(data)
    lines = ["| model | seeds | float32 / .gcm file | test accuracy lost (pt) | validation "
             "accuracy lost (pt) |", "|---|---:|---:|---:|---:|"]
    for name, model in data["models"].items():
        t = model["summary"]
        lines.append(f"| {name} | {len(model['runs'])} | {t['file_ratio']['mean']:.1f}x (worst "
                     f"{t['file_ratio']['worst']:.1f}x) | {t['accuracy_loss_pt']['mean']:.2f} "
                     f"(worst {t['accuracy_loss_pt']['worst']:.2f}) | "
                     f"{t['validation_loss_pt']['mean']:.2f} (worst "
                     f"{t['validation_loss_pt']['worst']:.2f}) |")
    for name, model in data["models"].items():
        run = model["runs"][0]
        lines += ["", f"**{name}** ({_settings(model['settings'], run)}; seed 0, "
                  f"{run['file_bytes']:,} bytes for {run['dense_bytes']:,} bytes of float32 "
                  f"parameters, decoded in {run['decode_s'] * 1e3:.0f} ms):", "",
                  "| layer | weights | kept | bits | float32 B | pruned B | shared B | "
                  "Huffman B | ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(run["layers"], key=lambda r: _layer_order(r["name"])):
            kept = 100 * r["kept"] / r["weights"]
            lines.append(f"| {r['name']} | {r['weights']:,} | {kept:.1f}% | {r['bits']} | "
                         f"{r['dense_bytes']:,} | {r['pruned_bytes']:,} | {r['shared_bytes']:,} | "
                         f"{r['huffman_bytes']:,} | {r['ratio']:.1f}x |")
        acc = run["accuracy"]
        lines += ["", "accuracy (test digits): " + ", ".join(
            f"{stage.replace('_', ' ')} {acc[stage]:.2f}%" for stage in STAGES)]
    return "\n".join(lines)


def _check_walkthrough(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("example") != "compress_vgg" or \
            not data.get("stages"):
        raise ResultsFormatError("expected the JSON of examples/compress_vgg.py")
    for row in data["stages"]:
        if not {"stage", "flops", "file_bytes", "accuracy", "native_ms"} <= set(row):
            raise ResultsFormatError(f"stage {row.get('stage')!r} lacks a field")
    return data


@renderer("compress_vgg")
def render_compress_vgg(data: Any) -> str:
    """The walkthrough's stage table: FLOPs, file, accuracy and native latency per stage."""
    rows = _check_walkthrough(data)["stages"]
    base = rows[0]
    lines = ["| stage | MFLOPs | .gcm file | smaller | test accuracy | native batch 1 | "
             "speed-up |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['flops'] / 1e6:.2f} | {r['file_bytes']:,} B | "
                     f"{base['file_bytes'] / r['file_bytes']:.1f}x | {r['accuracy']:.2f}% | "
                     f"{r['native_ms']:.3f} ms | {base['native_ms'] / r['native_ms']:.2f}x |")
    return "\n".join(lines)


@plotter("compress_vgg", "docs/img/compress_vgg.png")
def plot_compress_vgg(data: Any, path) -> None:
    from graphopt.bench.plot import plot_stages

    plot_stages(_check_walkthrough(data)["stages"], str(path),
                "VGG-16-layout CNN on digits: Deep Compression stage by stage")


@renderer("codebook_gemv")
def render_codebook_gemv(data: Any) -> str:
    """Native linear layers on shared weights: decoded vs read through the codebook."""
    if not isinstance(data, dict) or data.get("schema") != "graphopt-codebook-gemv/1":
        raise ResultsFormatError("expected schema graphopt-codebook-gemv/1")
    lines = ["| weight | rows | decoded (float32 GEMM) | lookup (linear_codebook) | speed-up | "
             "weight memory | max error |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        error = max(r["decode_max_error"], r["lookup_max_error"])
        lines.append(f"| {r['size']} x {r['size']} | {r['rows']} | {r['decode_ms']:.3f} ms | "
                     f"{r['lookup_ms']:.3f} ms | {r['speedup']:.2f}x | "
                     f"{r['decode_weight_bytes'] / 2**20:.1f} -> "
                     f"{r['lookup_weight_bytes'] / 2**20:.1f} MiB | {error:.1e} |")
    return "\n".join(lines)
