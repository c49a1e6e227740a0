"""Find the pass, and inside it the individual rewrite, that breaks a graph's numerics.

``bisect(graph, pipeline, args)`` runs the pipeline pass by pass on a clone and compares the
outputs with the original graph's after every pass. At the first pass whose result drifts beyond
tolerance it replays that pass on the graph as it was before the pass with a rewrite budget
(``max_rewrites=k``, see ``graphopt.rewrite.tracking``), binary-searching the smallest ``k`` that
drifts: rewrite number ``k`` is the culprit, reported with its rule and node. Passes that do not
report individual rewrites are blamed as a whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from graphopt.ir.graph import Graph
from graphopt.rewrite.tracking import track_rewrites
from graphopt.transform.instruments import Instrument, StopPipeline
from graphopt.transform.manager import PassManager
from graphopt.transform.numeric import Drift, compare_outputs, run_outputs
from graphopt.transform.pipeline import Pipeline
from graphopt.transform.report import PassRecord


@dataclass
class BisectResult:
    """Outcome of :func:`bisect`.

    Attributes:
        pipeline: the pipeline text that was bisected.
        pass_name: the first pass after which outputs drift (None: no drift anywhere).
        pass_index: its 1-based position among the pass runs; ``passes_before`` the ones before.
        max_error: max absolute error of the outputs after that pass (after the bad rewrite,
            when one was isolated).
        detail: which output drifted and by how much.
        rewrite_index: 1-based index of the first bad rewrite inside the pass (None if the pass
            reports no individual rewrites); ``rewrites_in_pass`` how many it did in all.
        rule, node: the rule of that rewrite and the node it rewrote (``%name = op``).
    """

    pipeline: str
    pass_name: str | None = None
    pass_index: int | None = None
    passes_before: list[str] = field(default_factory=list)
    max_error: float = 0.0
    detail: str = ""
    rewrite_index: int | None = None
    rewrites_in_pass: int | None = None
    rule: str | None = None
    node: str | None = None

    @property
    def found(self) -> bool:
        return self.pass_name is not None

    def __str__(self) -> str:
        if not self.found:
            return f"bisect: no drift beyond tolerance in pipeline '{self.pipeline}'"
        lines = [
            f"bisect: outputs drift after pass #{self.pass_index} '{self.pass_name}' "
            f"(max abs error {self.max_error:.3g})",
            f"  passes before it: {', '.join(self.passes_before) or 'none'}",
            f"  {self.detail}",
        ]
        if self.rewrite_index is not None:
            lines.append(
                f"  first bad rewrite: #{self.rewrite_index} of {self.rewrites_in_pass}"
                f", rule '{self.rule}' at {self.node}"
            )
        else:
            lines.append("  (the pass reports no individual rewrites; blamed as a whole)")
        return "\n".join(lines)


class _Probe(Instrument):
    """Compares with the original outputs after each pass; stops at the first drift."""

    def __init__(self, reference, args, kwargs, rtol, atol):
        self.reference, self.args, self.kwargs = reference, args, kwargs
        self.rtol, self.atol = rtol, atol
        self.snapshot: Graph | None = None
        self.failed: tuple[PassRecord, Graph, Drift] | None = None

    def before_pass(self, record: PassRecord, graph: Graph) -> None:
        self.snapshot = graph.clone()

    def after_pass(self, record: PassRecord, graph: Graph) -> None:
        if not record.changed:
            return
        drift = compare_outputs(
            self.reference, run_outputs(graph, self.args, self.kwargs), self.rtol, self.atol
        )
        if not drift.ok:
            self.failed = (record, self.snapshot, drift)
            raise StopPipeline


def bisect(
    graph: Graph,
    pipeline: Any,
    args: Sequence[Any],
    rtol: float = 1e-4,
    atol: float = 1e-5,
    *,
    kwargs: dict | None = None,
) -> BisectResult:
    """Find the first pass (and rewrite) of ``pipeline`` that makes outputs drift.

    Args:
        graph: the graph (not modified).
        pipeline: pipeline text, ``Pipeline`` or list of passes.
        args, kwargs: model inputs for ``graphopt.run``.
        rtol, atol: tolerance against the original graph's outputs.
    """
    pipe = Pipeline.from_any(pipeline)
    args = tuple(args)
    reference = run_outputs(graph, args, kwargs)
    probe = _Probe(reference, args, kwargs, rtol, atol)
    work = graph.clone()
    PassManager(pipe, [probe], verify=False).run(work)
    result = BisectResult(str(pipe))
    if probe.failed is None:
        return result
    record, before, drift = probe.failed
    result.pass_name, result.pass_index = record.name, record.index
    result.passes_before = list(record.passes_before)
    result.max_error, result.detail = drift.max_abs, drift.detail
    total = sum(record.rewrites.values())
    if total == 0:
        return result
    the_pass = record.pass_

    def replay(k: int):
        g = before.clone()
        with track_rewrites(k) as log:
            the_pass.run(g)
        return compare_outputs(reference, run_outputs(g, args, kwargs), rtol, atol), log

    good, bad = 0, total  # 0 rewrites = the graph before the pass, known to be within tolerance
    while bad - good > 1:
        mid = (good + bad) // 2
        if replay(mid)[0].ok:
            good = mid
        else:
            bad = mid
    drift_k, log = replay(bad)
    result.rewrites_in_pass = total
    if drift_k.ok or len(log.events) < bad:  # not reproducible rewrite by rewrite
        return result
    event = log.events[bad - 1]
    result.rewrite_index, result.rule, result.node = bad, event.rule, event.node
    result.max_error, result.detail = drift_k.max_abs, drift_k.detail
    return result
