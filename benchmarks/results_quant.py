"""The int8 tables: latency, size and accuracy of the transformer variants of bench_quant.py.

Blocks ``quant_minilm`` and ``quant_bert`` render ``published/quant_minilm.json`` and
``published/quant_bert.json`` (``benchmarks/results/quant_<model>.json`` of a
``bench_quant.py --model <model>`` run, schema ``graphopt-quant/2``). Every speed figure has its
accuracy beside it: the per-token cosine of the hidden states vs fp32 eager (mean and worst
token), and for MiniLM the sentence-embedding cosine (mean and worst sentence).
"""

from __future__ import annotations

import textwrap
from typing import Any

from render_results import ResultsFormatError, renderer

QUANT_SCHEMA = "graphopt-quant/2"
# the variant every int8 speedup is measured against: onnxruntime's own dynamic int8 tool
REFERENCE = "ort quantize_dynamic"
LABELS = {
    "fp32 eager": "eager fp32",
    "ort fp32": "onnxruntime fp32 (graphopt's graph)",
    "ort quantize_dynamic": "onnxruntime `quantize_dynamic(per_channel)`",
    "graphopt int8": "graphopt int8 → onnxruntime",
    "graphopt int8 (MatMulInteger)": "graphopt int8 → onnxruntime, standard ops",
    "graphopt int8 per-token": "graphopt int8 per-token → onnxruntime",
    "graphopt int8 budget": "graphopt int8 `error_budget` → onnxruntime",
    "graphopt int4 weight-only": "graphopt int4 weight-only → onnxruntime",
    "graphopt fp16 weights": "graphopt fp16 weights → onnxruntime",
    "native fp32": "graphopt → native fp32",
    "native int8": "graphopt int8 → native",
    "native int8 per-token": "graphopt int8 per-token → native",
    "native int8 budget": "graphopt int8 `error_budget` → native",
    "native bf16": "graphopt → native bf16 (`precision=\"bf16\"`)",
    "native int8 + bf16 attention": "graphopt int8 → native, bf16 attention",
    "torch.ao int8": "torch.ao dynamic qint8",
}
MODEL_TITLES = {"minilm": "MiniLM (real weights), seq 128, batch 1",
                "bert": "BERT-base, seq 128, batch 1, masked"}


def _check(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("schema") != QUANT_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ResultsFormatError(f"expected schema {QUANT_SCHEMA!r} (bench_quant.py's "
                                 f"quant_<model>.json), found {found!r}")
    return data


def _pair(row: dict[str, Any], key: str) -> str:
    mean, worst = row.get(f"{key}_mean"), row.get(f"{key}_min")
    return "–" if mean is None else f"{mean:.4f} / {worst:.4f}"


def _row(name: str, row: dict[str, Any], reference_ms: float | None, sentences: bool) -> str:
    p50 = row["p50_ms"]
    speed = f"{reference_ms / p50:.2f}×" if reference_ms else "–"
    size = "–" if row.get("size_mb") is None else f"{row['size_mb']:.1f}"
    cells = [LABELS.get(name, name), f"{p50:.2f} ({row['iqr_ms']:.2f})", speed, size,
             _pair(row, "token_cos")]
    if sentences:
        cells.append(_pair(row, "cos"))
    return "| " + " | ".join(cells) + " |"


def _settings(rows: dict[str, Any]) -> str:
    chosen = [f"{LABELS.get(name, name)} {row['setting']}" for name, row in rows.items()
              if len(row.get("settings_p50_ms") or {}) > 1]
    return "; ".join(chosen)


def _tiles(config: dict[str, Any]) -> str:
    """The AMX use of the native int8 / bf16 GEMMs, for runs that recorded it."""
    if "int8_tiles" not in config:
        return ""
    return (f" (AMX tiles: int8 {config['int8_tiles']}, bf16 GEMM "
            f"{config.get('bf16_kernel')})")


def render_quant(data: Any) -> str:
    data = _check(data)
    rows, machine, config = data["rows"], data["machine"], data["config"]
    sentences = any("cos_mean" in row for row in rows.values())
    reference_ms = rows.get(REFERENCE, {}).get("p50_ms")
    header = ["variant", "p50 ms (IQR)", f"speed vs `{REFERENCE}`", "MB",
              "token cosine mean / min"] + (["sentence cosine mean / min"] if sentences else [])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += [_row(name, row, reference_ms, sentences) for name, row in rows.items()]
    versions = machine.get("versions", {})
    caption = (
        f"{MODEL_TITLES.get(data['model'], data['model'])}; {machine.get('cpu_model')} "
        f"({'/'.join(machine.get('cpu_flags', []))}), torch {versions.get('torch')}, "
        f"onnxruntime {versions.get('onnxruntime')}; {config['threads']} threads, "
        f"{config['rounds']} interleaved rounds, native int8 kernels "
        f"{config.get('int8_kernels')}{_tiles(config)}; run {data.get('created')}, load "
        f"{machine.get('load_avg_1m')}, other processes {machine.get('competing_cpus')} CPUs "
        f"at the start. onnxruntime variants at the faster of spinning / not spinning: "
        f"{_settings(rows) or 'one setting'}.")
    # prose under 100 columns, as in the rest of the documents
    return "\n".join(lines) + "\n\n" + textwrap.fill(caption, width=100, break_long_words=False,
                                                    break_on_hyphens=False)


@renderer("quant_minilm")
def render_quant_minilm(data: Any) -> str:
    """MiniLM dynamic int8 (bench_quant.py --model minilm)."""
    return render_quant(data)


@renderer("quant_bert")
def render_quant_bert(data: Any) -> str:
    """BERT-base dynamic int8 (bench_quant.py --model bert)."""
    return render_quant(data)
