"""The per-run pass report: one record per pass execution, printed as a table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PassRecord:
    """One execution of one pass.

    Attributes:
        index: 1-based position in the run (passes inside repetitions count each time).
        name: registered pass name; ``options`` its option values.
        path: where in the pipeline it ran, e.g. ``fixpoint#2`` (iteration 2 of a fixpoint).
        changed: what the pass returned.
        seconds: wall time of ``run`` (instruments excluded).
        nodes_before / nodes_after: node counts around the pass.
        rewrites: rule name -> individual rewrites (for passes that report them).
        peak_mib: peak resident memory above the pass's start, in MiB (with
            ``optimize(report=True)``; None when not measured).
        passes_before: names of the passes that ran before this one.
        pass_: the pass instance itself.
    """

    index: int
    name: str
    options: dict[str, Any]
    path: str = ""
    changed: bool = False
    seconds: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    rewrites: dict[str, int] = field(default_factory=dict)
    peak_mib: float | None = None
    passes_before: list[str] = field(default_factory=list)
    pass_: Any = field(default=None, repr=False)  # the pass instance that ran

    @property
    def label(self) -> str:
        """``name`` plus the options that differ from their defaults, as in pipeline text."""
        if self.pass_ is not None:
            from graphopt.transform.registry import pass_text

            return pass_text(self.pass_)
        if not self.options:
            return self.name
        return self.name + "{" + ",".join(f"{k}={v}" for k, v in self.options.items()) + "}"

    @property
    def delta(self) -> int:
        return self.nodes_after - self.nodes_before


@dataclass
class PassReport:
    """What a pass manager run did; ``str(report)`` is a readable table."""

    pipeline: str
    records: list[PassRecord] = field(default_factory=list)
    nodes_before: int = 0
    nodes_after: int = 0
    seconds: float = 0.0
    stopped: bool = False  # an instrument stopped the run early (StopPipeline)
    stage: Any = None  # optimize(report=True): the run's StageReport (time, peak memory)

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.records)

    def rewrites(self) -> dict[str, int]:
        """Rule name -> rewrites, summed over the run."""
        total: dict[str, int] = {}
        for r in self.records:
            for k, v in r.rewrites.items():
                total[k] = total.get(k, 0) + v
        return total

    def by_pass(self) -> dict[str, float]:
        """Pass name -> total seconds."""
        out: dict[str, float] = {}
        for r in self.records:
            out[r.name] = out.get(r.name, 0.0) + r.seconds
        return out

    def __str__(self) -> str:
        memory = any(r.peak_mib is not None for r in self.records)
        header = ("#", "pass", "where", "changed", "nodes", "time") + \
            (("peak",) if memory else ()) + ("rewrites",)
        rows = []
        for r in self.records:
            by_count = sorted(r.rewrites.items(), key=lambda kv: -kv[1])
            rw = ", ".join(f"{k} x{v}" for k, v in by_count)
            peak = (_fmt_mib(r.peak_mib),) if memory else ()
            rows.append((str(r.index), r.label, r.path or "-", "yes" if r.changed else "no",
                         f"{r.nodes_before} -> {r.nodes_after}", _fmt_seconds(r.seconds),
                         *peak, _clip(rw, 60)))
        widths = [
            max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
            for i, h in enumerate(header)
        ]
        lines = [f"pipeline: {self.pipeline}"]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        lines.append("  ".join("-" * w for w in widths))
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        lines.append(
            f"total: {len(self.records)} pass runs, nodes {self.nodes_before} -> "
            f"{self.nodes_after}, {_fmt_seconds(self.seconds)}"
            + (" (stopped early)" if self.stopped else "")
        )
        if self.stage is not None:
            lines.append(str(self.stage))
        return "\n".join(lines)


def _fmt_seconds(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_mib(mib: float | None) -> str:
    if mib is None:
        return "-"
    return f"+{mib:.0f} MiB" if mib < 1024 else f"+{mib / 1024:.2f} GiB"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
