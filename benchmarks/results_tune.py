"""The tuning result of bench_tune.py (docs/tuning.md).

Block ``tune_digits`` renders ``published/tune_digits.json`` (schema ``graphopt-tune-digits/1``):
the search (trials, seconds), the chosen pipeline, its speed-up over the float graph on native
(measured in the search) and over fp32 eager (timed interleaved afterwards), and the
accuracies, then the Pareto front.
"""

from __future__ import annotations

from typing import Any

from render_results import ResultsFormatError, renderer

SCHEMA = "graphopt-tune-digits/1"


def _pipeline(params: dict) -> str:
    parts = []
    if params.get("prune", "none") != "none":
        parts.append(f"prune {params['prune']} "
                     f"{params.get('prune_flops', params.get('sparsity')):.2f}")
    if params.get("quantize", "none") != "none":
        parts.append(params["quantize"] + (" per-token" if params.get("per_token") else "")
                     + (f" (budget {params['error_budget']:.1e})"
                        if params.get("error_budget") is not None else ""))
    return ", ".join(parts or ["float"]) + f" on {params['backend']}"


@renderer("tune_digits")
def render_tune_digits(data: Any) -> str:
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not data.get("chosen"):
        raise ResultsFormatError(f"expected schema {SCHEMA} with a chosen trial")
    s, c, e = data["settings"], data["chosen"], data["versus_eager"]
    lines = [f"{s['trials']} trials in {data['search_seconds']:.0f} s (accuracy loss <= "
             f"{s['max_accuracy_drop']} pt). Chosen: trial #{c['number']}, "
             f"**{_pipeline(c['params'])}**: {c['speedup']:.2f}x the float graph on native, "
             f"**{e['speedup']:.2f}x fp32 eager** ({e['chosen_ms']:.3f} vs {e['eager_ms']:.3f} "
             f"ms, batch {s['batch']}, {s['threads']} threads, interleaved), test accuracy "
             f"{data['chosen_accuracy']:.2f}% (eager {data['eager_accuracy']:.2f}%).", "",
             *_front_table(data, "accuracy", lambda m: f"{m:.2f}%", 3)]
    lines += ["", "The Pareto front (speed-up, accuracy) of the run; "
              f"{len(data['trials'])} trials completed, {len(data['failed'])} failed."]
    return "\n".join(lines)


@renderer("tune_workers")
def render_tune_workers(data: Any) -> str:
    """1 vs 2 workers on PostgreSQL (bench_tune_workers.py): trials per hour and scaling."""
    if not isinstance(data, dict) or data.get("schema") != "graphopt-tune-workers/1" \
            or len(data.get("runs", [])) != 2:
        raise ResultsFormatError("expected schema graphopt-tune-workers/1 with two runs")
    s = data["settings"]
    lines = ["| workers | trials | seconds | trials per hour | processes that ran trials |",
             "|---:|---:|---:|---:|---:|"]
    for r in data["runs"]:
        lines.append(f"| {r['workers']} | {r['trials']} | {r['seconds']:.1f} | "
                     f"{r['trials_per_hour']:.0f} | {r['distinct_workers']} |")
    lines += ["", f"{s['model']}, {s['threads_per_worker']} thread per worker, study on a "
              f"throwaway {s['storage']} server; scaling 1 -> 2 workers: "
              f"**{data['scaling']:.2f}x**."]
    return "\n".join(lines)


@renderer("tune_minilm")
def render_tune_minilm(data: Any) -> str:
    """The MiniLM search (bench_tune.py --model minilm): per-token cosine as the metric."""
    if not isinstance(data, dict) or data.get("schema") != "graphopt-tune-minilm/1" \
            or not data.get("chosen"):
        raise ResultsFormatError("expected schema graphopt-tune-minilm/1 with a chosen trial")
    s, c, e = data["settings"], data["chosen"], data["versus_eager"]
    lines = [f"{s['trials']} trials in {data['search_seconds']:.0f} s (mean per-token cosine "
             f">= {1 - s['max_accuracy_drop']:.2f}, seq {s['seq']}). Chosen: trial "
             f"#{c['number']}, **{_pipeline(c['params'])}**: {c['speedup']:.2f}x the float "
             f"graph on native, **{e['speedup']:.2f}x fp32 eager** ({e['chosen_ms']:.1f} vs "
             f"{e['eager_ms']:.1f} ms, batch {s['batch']}, {s['threads']} threads, "
             f"interleaved), per-token cosine mean {data['chosen_metric']:.4f} over "
             f"{s['sentences']} sentences.", "",
             *_front_table(data, "per-token cosine", lambda m: f"{m:.4f}", 1)]
    return "\n".join(lines)


def _front_table(data: dict, metric: str, shown, mb_digits: int) -> list[str]:
    """The Pareto front's trials, fastest first: pipeline, speed-up, metric, weights."""
    lines = [f"| trial | pipeline | speed-up vs float graph | {metric} | weights |",
             "|---:|---|---:|---:|---:|"]
    front = [t for t in data["trials"] if t["number"] in data["front"]]
    for t in sorted(front, key=lambda t: -t["speedup"]):
        lines.append(f"| {t['number']} | {_pipeline(t['params'])} | {t['speedup']:.2f}x | "
                     f"{shown(t['metric'])} | {t['bytes'] / 1e6:.{mb_digits}f} MB |")
    return lines
