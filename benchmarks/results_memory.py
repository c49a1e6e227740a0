"""The per-stage memory table of bench_memory.py.

Block ``memory`` renders ``published/memory.json`` (schema ``graphopt-memory/1``): for each
GPT-2 size, each stage's time, its peak RSS and what it still holds afterwards, both above the
RSS of the built torch model, and the whole chain's peak as a multiple of the fp32 weight bytes
(issue #23's bound: 1.2x); beside it ``torch.onnx.export`` of the same model; with
``--int8`` runs a second table: dynamic int8 quantization and its native compile; with
``--load`` a table of fresh-process loads (native artifact, ``.graphopt`` bundle, ``torch.load``
with and without ``mmap``); with ``--scaling`` trace and optimize seconds per node by depth.
"""

from __future__ import annotations

import textwrap
from typing import Any

from render_results import ResultsFormatError, renderer

MEMORY_SCHEMA = "graphopt-memory/1"
STAGES = ("trace", "optimize", "native", "to_onnx")
INT8_STAGES = ("quantize", "native int8")


def _check(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("schema") != MEMORY_SCHEMA:
        raise ResultsFormatError(f"expected schema {MEMORY_SCHEMA}")
    for run in data.get("graphopt", []):
        names = [row.get("stage") for row in run.get("stages", [])]
        if names != list(STAGES):
            raise ResultsFormatError(f"{run.get('model')}: stages {names}, expected {STAGES}")
        int8 = [row.get("stage") for row in run.get("int8_stages", [])]
        if int8 and int8 != list(INT8_STAGES):
            raise ResultsFormatError(f"{run.get('model')}: int8 stages {int8}, expected "
                                     f"{INT8_STAGES}")
    return data


def _cell(row: dict[str, Any]) -> str:
    return (f"{row['seconds']:.1f} s / {row['peak_above_model_gib']:+.2f}"
            f" ({row['retained_above_model_gib']:+.2f})")


@renderer("memory")
def render_memory(data: Any) -> str:
    """Time and memory per stage, GPT-2 medium / large / XL."""
    data = _check(data)
    torch_onnx = {run["model"]: run["stages"][0] for run in data.get("torch_onnx", [])}
    lines = ["| model | fp32 weights | " + " | ".join(STAGES) + " | chain peak / weights "
             "| torch.onnx.export |",
             "|---|---:|" + "---:|" * len(STAGES) + "---:|---:|"]
    for run in data["graphopt"]:
        other = torch_onnx.get(run["model"])
        lines.append(
            f"| {run['model']} | {run['weights_gib']:.2f} GiB | "
            + " | ".join(_cell(row) for row in run["stages"])
            + f" | {run['chain_peak_over_weights']:.2f}x | "
            + (_cell(other) if other else "-") + " |")
    int8 = [run for run in data["graphopt"] if run.get("int8_stages")]
    if int8:
        lines += ["", "| model | quantize (dynamic int8) | native int8 | int8 chain peak / "
                  "weights |", "|---|---:|---:|---:|"]
        for run in int8:
            cells = " | ".join(_cell(row) for row in run["int8_stages"])
            lines.append(f"| {run['model']} | {cells} | {run['int8_peak_over_weights']:.2f}x |")
    lines += _load_lines(data) + _scaling_lines(data)
    machine = data.get("machine", {})
    caption = (f"Each cell: seconds / peak GiB above the built model (GiB still held after the "
               f"stage), one process, stages in order on the previous stage's result; "
               f"sequence length {data.get('seq')}. "
               + ("Second table: the optimized graph quantized (dynamic int8) and compiled "
                  "natively, after the fp32 native module was released. " if int8 else "")
               + ("Loads: a fresh process loads the saved model and calls it once; anon is memory "
                  "private to the process, file-backed the page cache of the file (shared "
                  "between processes, reclaimable). " if any("loads" in r for r in
                                                                data["graphopt"]) else "")
               + ("Scaling: GPT-2 small's width, growing depth; flat ms per node means linear "
                  "time. " if data.get("scaling") else "")
               + f"{machine.get('cpu_model', 'unknown CPU')}, "
               f"run {data.get('created')}.")
    return "\n".join(lines) + "\n\n" + textwrap.fill(caption, width=100,
                                                     break_long_words=False,
                                                     break_on_hyphens=False)


def _load_lines(data: dict[str, Any]) -> list[str]:
    runs = [run for run in data["graphopt"] if run.get("loads")]
    if not runs:
        return []
    lines = ["", "| model | saved as | on disk | load | first call | anon | file-backed |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for run in runs:
        for row in run["loads"]:
            disk = row.get("file_gib_on_disk")  # (absent: not recorded by that run)
            disk = "-" if disk is None else f"{disk:.2f} GiB"
            lines.append(f"| {run['model']} | {row['kind']} | {disk} "
                         f"| {row['load_s']:.2f} s | {row['first_call_s']:.2f} s "
                         f"| {row['anon_gib']:+.2f} GiB | {row['file_gib']:+.2f} GiB |")
    return lines


def _scaling_lines(data: dict[str, Any]) -> list[str]:
    rows = data.get("scaling") or []
    if not rows:
        return []
    lines = ["", "| layers | nodes | trace | ms/node | optimize | ms/node |",
             "|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['layers']} | {row['nodes']} | {row['trace_s']:.2f} s "
                     f"| {row['trace_ms_per_node']:.2f} | {row['optimize_s']:.2f} s "
                     f"| {row['optimize_ms_per_node']:.2f} |")
    return lines
