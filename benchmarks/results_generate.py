"""The decoding table of bench_generate.py (docs/generation.md).

Block ``generate`` renders ``published/generate.json`` (schema ``graphopt-generate/1``): per model
and variant, the decode rate (tokens/s after the first, median of the rounds) and its ratio to
transformers' eager ``generate``, the prefill time, whether the greedy tokens equal eager's, the
teacher-forced next-token accuracy against eager fp32 (cosine mean / min, top-1 agreement), the
weight bytes and the peak RSS of a generation in a fresh process. onnxruntime variants were timed
with spinning on and off; the faster is shown with its setting. A second table sets int4 with GPTQ
rounding beside round-to-nearest (accuracy only) where the run measured it.
"""

from __future__ import annotations

from typing import Any

from render_results import ResultsFormatError, renderer

SCHEMA = "graphopt-generate/1"


def _best_variants(timings: dict) -> list[tuple[str, str, dict]]:
    """(label, name, timing) per variant; onnxruntime's spin settings folded into the faster."""
    best: dict[str, tuple[str, dict]] = {}
    for name, row in timings.items():
        label, _, setting = name.partition(" spin=")
        kept = best.get(label)
        if kept is None or row["decode_tokens_per_s"] > kept[1]["decode_tokens_per_s"]:
            best[label] = (name, row)
    return [(label, name, row) for label, (name, row) in best.items()]


def _quality(model: dict, label: str) -> str:
    q = model["quality"].get(label) or model["quality"].get(f"{label} spin=1")
    if label == "eager":
        return "reference"
    if q is None:
        return "-"
    return (f"{q['cosine_mean']:.4f} / {q['cosine_min']:.4f} / "
            f"{100 * q['top1_agreement']:.1f}%")


def _rss(model: dict, label: str) -> str:
    r = model.get("rss", {}).get(label) or model.get("rss", {}).get(f"{label} spin=1")
    return f"{r['model_peak_mib']:.0f}" if r else "-"


def _rounding_table(data: Any) -> list[str]:
    """int4 round-to-nearest vs GPTQ (quality only: the same kernels) where the run has both."""
    models = [m for m in data["models"] if "native int4-gptq" in m["quality"]]
    if not models:
        return []
    lines = ["", "| model | int4 rounding | next-token cos mean / min / top-1 |", "|---|---|---|"]
    for model in models:
        for label, name in (("round to nearest", "native int4"), ("GPTQ", "native int4-gptq")):
            lines.append(f"| {model['model']} | {label} | {_quality(model, name)} |")
    calib = data["settings"].get("gptq_calibration_sequences")
    lines += ["", f"GPTQ calibrated on {calib} replayed greedy continuations of other random "
              "prompts (graphopt.decoding.calibration_steps)."]
    return lines


@renderer("generate")
def render_generate(data: Any) -> str:
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not data.get("models"):
        raise ResultsFormatError(f"expected schema {SCHEMA} with models")
    s = data["settings"]
    lines = ["| model | variant | decode tokens/s | vs eager | prefill ms | tokens = eager "
             "| next-token cos mean / min / top-1 | weights MiB | peak RSS MiB |",
             "|---|---|---:|---:|---:|---|---|---:|---:|"]
    for model in data["models"]:
        eager = model["timings"]["eager"]["decode_tokens_per_s"]
        for label, name, row in _best_variants(model["timings"]):
            setting = name.partition(" spin=")[2]
            shown = f"{label} (spin {setting})" if setting else label
            same = "yes" if row["tokens_equal_eager"] else f"first {row['agreeing_prefix']}"
            lines.append(
                f"| {model['model']} | {shown} | {row['decode_tokens_per_s']:.1f} | "
                f"{row['decode_tokens_per_s'] / eager:.2f}x | {row['prefill_ms']:.0f} | {same} | "
                f"{_quality(model, label)} | {row['weight_bytes'] / 2**20:.0f} | "
                f"{_rss(model, label)} |")
    lines += ["", f"Batch {s['batch']}, a {s['prompt']}-token prompt, {s['new_tokens']} new "
              f"tokens, greedy, {s['threads']} threads, median of {s['rounds']} interleaved "
              f"rounds. Next-token accuracy: {s['quality_positions']} teacher-forced positions "
              "against eager fp32 logits. Peak RSS: one generation in a fresh process, over "
              "that process's RSS after its imports. \"int4-a8\": int4 weights with int8 "
              "activations (act_bits=8; onnxruntime: MatMulNBits accuracy_level 4)."]
    return "\n".join(lines + _rounding_table(data))
