"""Figures of benchmark reports (matplotlib, headless Agg backend).

``plot_report``: left, p50 latency per backend with a p10-p90 whisker and the IQR as a thicker
bar; right, speedup vs eager (1.0 marked). With a per-pass attribution a third panel shows the
latency after each pipeline stage. ``plot_summary``: speedup vs eager of several reports
(models) grouped by backend. ``plot_stages``: a compression chain stage by stage (file size,
latency, accuracy; examples/compress_vgg.py).
"""

from __future__ import annotations

import os
from typing import Sequence

from graphopt.bench.machine import load_text
from graphopt.bench.report import BenchmarkReport

_COLORS = {"eager": "#7f7f7f", "torch-compile": "#ff7f0e", "onnxruntime": "#1f77b4",
           "graphopt-onnxruntime": "#2ca02c", "graphopt-native": "#d62728",
           "graphopt-torch": "#9467bd"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _color(name: str) -> str:
    return _COLORS.get(name, "#17becf")


def plot_report(report: BenchmarkReport, path: str) -> str:
    """Write the latency / speedup figure of ``report`` to ``path``; returns the path."""
    plt = _pyplot()
    ok = [r for r in report.results if r.latency is not None]
    stages = report.per_pass.stages if report.per_pass is not None else []
    panels = 3 if sum(s.p50_ms is not None for s in stages) > 1 else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 0.55 * max(4, len(ok)) + 2.2))
    names = [r.backend for r in ok]
    ys = list(range(len(ok)))[::-1]

    _plot_latency(axes[0], ok, ys, names)
    _plot_speedup(axes[1], ok, ys, names)
    if panels == 3:
        _plot_per_pass(axes[2], report)

    fig.suptitle(_title(report), fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _plot_latency(ax, ok, ys: list[int], names: list[str]) -> None:
    """Panel: p50 latency per backend with the IQR as a bar and p10-p90 as a line."""
    for y, r in zip(ys, ok):
        lat = r.latency
        ax.plot([lat.p10, lat.p90], [y, y], color=_color(r.backend), lw=1.2)
        q1, q3 = _quartiles(lat.samples)
        ax.plot([q1, q3], [y, y], color=_color(r.backend), lw=6, alpha=0.6,
                solid_capstyle="butt")
        ax.plot([lat.p50], [y], "o", color="black", ms=4)
        ax.annotate(f"{lat.p50:.3g} ms", (lat.p90, y), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(ys, names)
    ax.set_xlabel("latency per call, ms (dot p50, bar IQR, line p10-p90)")
    lo = min((r.latency.p10 for r in ok), default=1.0)
    hi = max((r.latency.p90 for r in ok), default=1.0)
    if lo > 0 and hi / lo > 30:  # sub-ms and 100-ms backends side by side: log scale
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.5, hi * 3)
    else:
        ax.set_xlim(left=0, right=hi * 1.3)
    ax.set_title("latency")
    ax.grid(axis="x", alpha=0.3)


def _plot_speedup(ax, ok, ys: list[int], names: list[str]) -> None:
    """Panel: speedup vs eager per backend, 1.0 marked."""
    speed = [(y, r) for y, r in zip(ys, ok) if r.speedup_vs_eager is not None]
    if speed:
        ax.barh([y for y, _ in speed], [r.speedup_vs_eager for _, r in speed],
                color=[_color(r.backend) for _, r in speed])
        for y, r in speed:
            ax.annotate(f"{r.speedup_vs_eager:.2f}x", (r.speedup_vs_eager, y), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=8)
        ax.axvline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xlim(0, max(r.speedup_vs_eager for _, r in speed) * 1.25)
    else:
        ax.text(0.5, 0.5, "no eager baseline", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_yticks(ys, names)
    ax.set_xlabel("speedup vs eager (p50), higher is better")
    ax.set_title("speedup")
    ax.grid(axis="x", alpha=0.3)


def _plot_per_pass(ax, report: BenchmarkReport) -> None:
    """Panel: p50 latency after each pipeline stage of the per-pass attribution."""
    stages = [s for s in report.per_pass.stages if s.p50_ms is not None]
    xs = list(range(len(stages)))
    ax.step(xs, [s.p50_ms for s in stages], where="mid", color=_color(report.per_pass.backend))
    ax.plot(xs, [s.p50_ms for s in stages], "o", color="black", ms=3)
    ax.set_xticks(xs, [_short(s.label) for s in stages], rotation=60, ha="right",
                  fontsize=7)
    ax.set_ylabel("p50 ms")
    ax.set_ylim(bottom=0)
    ax.set_title(f"per pass ({report.per_pass.backend})")
    ax.grid(axis="y", alpha=0.3)


def plot_summary(reports: Sequence[BenchmarkReport], path: str) -> str:
    """Speedup vs eager of every backend, grouped by model; returns the path."""
    plt = _pyplot()
    backends: list[str] = []
    for rep in reports:
        for r in rep.results:
            if r.speedup_vs_eager is not None and r.backend not in backends:
                backends.append(r.backend)
    fig, ax = plt.subplots(figsize=(3.6 + 1.3 * len(reports), 4))
    width = 0.8 / max(1, len(backends))
    for i, backend in enumerate(backends):
        xs, hs = [], []
        for j, rep in enumerate(reports):
            r = next((r for r in rep.results if r.backend == backend), None)
            if r is not None and r.speedup_vs_eager is not None:
                xs.append(j + (i - (len(backends) - 1) / 2) * width)
                hs.append(r.speedup_vs_eager)
        ax.bar(xs, hs, width, label=backend, color=_color(backend))
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks(range(len(reports)), [rep.model.get("name", "?") for rep in reports])
    ax.set_ylabel("speedup vs eager (p50)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    if reports:
        m = reports[0].machine
        ax.set_title(f"{m.get('cpu_model')}, {reports[0].config.get('threads')} threads, "
                     f"{load_text(m)}", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_stages(rows: Sequence[dict], path: str, title: str) -> str:
    """File size, batch-1 latency and accuracy per stage (``rows``: dicts with ``stage``,
    ``file_bytes``, ``native_ms``, ``accuracy``), one bar chart each; returns the path."""
    plt = _pyplot()
    names = [r["stage"].split(" (")[0] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [("file size (KiB)", [r["file_bytes"] / 1024 for r in rows]),
              ("native latency, batch 1 (ms)", [r["native_ms"] for r in rows]),
              ("test accuracy (%)", [r["accuracy"] for r in rows])]
    for i, (ax, (label, values)) in enumerate(zip(axes, panels)):
        ax.barh(range(len(rows)), values, color=_color("graphopt-native"))
        ax.set_yticks(range(len(rows)), names if i == 0 else [""] * len(rows))
        ax.invert_yaxis()
        ax.set_title(label)
        if i == 2:
            ax.set_xlim(max(0.0, min(values) - 5), 100)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    return path


def _quartiles(samples: list[float]) -> tuple[float, float]:
    from graphopt.bench.report import percentile

    return percentile(samples, 25), percentile(samples, 75)


def _title(report: BenchmarkReport) -> str:
    c, m = report.config, report.machine
    return (f"{report.model.get('name')}: pipeline {c.get('pipeline')!r}, {c.get('threads')} "
            f"threads, {c.get('rounds_done')} interleaved rounds | {m.get('cpu_model')}, "
            f"{load_text(m)}")


def _short(label: str, width: int = 28) -> str:
    return label if len(label) <= width else label[: width - 3] + "..."


def _save(fig, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=110)
