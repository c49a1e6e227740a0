"""Pass instruments: code run around every pass by the PassManager (as TVM's pass instruments).

An instrument overrides any of ``before_pipeline(graph)``, ``before_pass(record, graph)``,
``after_pass(record, graph)`` and ``after_pipeline(graph, report)``. ``record`` is the
:class:`PassRecord` of the pass (name, options, index; after the pass also changed/seconds/node
counts/rewrites). An exception raised by an instrument becomes a ``PassError`` naming the pass;
raising :class:`StopPipeline` instead ends the run quietly (``report.stopped``).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any, TextIO

from graphopt.errors import GraphoptError, NumericDriftError
from graphopt.ir.graph import Graph
from graphopt.stagereport import PeakMeter
from graphopt.transform.numeric import compare_outputs, run_outputs
from graphopt.transform.report import PassRecord, PassReport


class StopPipeline(Exception):
    """Raised by an instrument to end a pass manager run early without an error."""


class Instrument:
    """Base class: every hook is a no-op."""

    def before_pipeline(self, graph: Graph) -> None:
        pass

    def before_pass(self, record: PassRecord, graph: Graph) -> None:
        pass

    def after_pass(self, record: PassRecord, graph: Graph) -> None:
        pass

    def after_pipeline(self, graph: Graph, report: PassReport) -> None:
        pass


class VerifyInstrument(Instrument):
    """``graph.verify()`` on the input and after every pass.

    With ``check_changed`` (default), also fail a pass that returned False although it changed
    the graph's text form: such a pass silently breaks ``fixpoint(...)``.
    """

    def __init__(self, check_changed: bool = True):
        self.check_changed = check_changed
        self._before: str | None = None

    def before_pipeline(self, graph: Graph) -> None:
        try:
            graph.verify()
        except GraphoptError as exc:
            raise GraphoptError(f"the input graph fails verification before any pass ran:\n{exc}")

    def before_pass(self, record: PassRecord, graph: Graph) -> None:
        self._before = str(graph) if self.check_changed else None

    def after_pass(self, record: PassRecord, graph: Graph) -> None:
        graph.verify()
        if self._before is not None and not record.changed and str(graph) != self._before:
            raise GraphoptError(
                f"pass '{record.name}' returned changed=False but modified the "
                f"graph; return True whenever the graph changes"
            )


class TimingInstrument(Instrument):
    """Accumulates wall time per pass name; ``str()`` lists them, slowest first."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.calls: Counter = Counter()

    def after_pass(self, record: PassRecord, graph: Graph) -> None:
        self.timings[record.name] = self.timings.get(record.name, 0.0) + record.seconds
        self.calls[record.name] += 1

    def __str__(self) -> str:
        if not self.timings:
            return "no passes timed"
        width = max(len(k) for k in self.timings)
        lines = [f"{'pass':<{width}}  calls  total"]
        for name, secs in sorted(self.timings.items(), key=lambda kv: -kv[1]):
            lines.append(f"{name:<{width}}  {self.calls[name]:>5}  {secs * 1000:.2f} ms")
        return "\n".join(lines)


class MemoryInstrument(Instrument):
    """Records each pass's peak resident memory above its start in ``record.peak_mib``
    (``graphopt.stagereport``): which pass of a pipeline holds the most memory on a large
    model. ``optimize(report=True)`` adds it."""

    def __init__(self) -> None:
        self._meter: PeakMeter | None = None

    def before_pass(self, record: PassRecord, graph: Graph) -> None:
        self._meter = PeakMeter()
        self._meter.start()

    def after_pass(self, record: PassRecord, graph: Graph) -> None:
        if self._meter is not None:
            record.peak_mib, _ = self._meter.stop()
            self._meter = None


class NodeCountInstrument(Instrument):
    """Node count delta and op histogram change per pass (``deltas``), optionally printed."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream
        self.deltas: list[tuple[str, int, int, dict[str, int]]] = []
        self._hist: Counter = Counter()

    def before_pass(self, record: PassRecord, graph: Graph) -> None:
        self._hist = graph.op_histogram()

    def after_pass(self, record: PassRecord, graph: Graph) -> None:
        after = graph.op_histogram()
        ops = {
            op: after[op] - self._hist[op]
            for op in set(after) | set(self._hist)
            if after[op] != self._hist[op]
        }
        before_n, after_n = sum(self._hist.values()), sum(after.values())
        self.deltas.append((record.name, before_n, after_n, dict(sorted(ops.items()))))
        if self.stream is not None:
            print(self.format(self.deltas[-1]), file=self.stream)

    @staticmethod
    def format(entry: tuple[str, int, int, dict[str, int]]) -> str:
        name, before, after, ops = entry
        change = ", ".join(f"{op} {d:+d}" for op, d in ops.items())
        return f"{name}: {before} -> {after} nodes ({after - before:+d})" + (
            f" [{change}]" if change else ""
        )

    def __str__(self) -> str:
        return "\n".join(self.format(e) for e in self.deltas)


class PrintIRInstrument(Instrument):
    """Print the IR after each pass (only after passes that changed it, by default).

    Args:
        stream: where to print (stdout by default).
        only_changed: skip passes that reported no change.
        passes: print only after these pass names (None: all).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        only_changed: bool = True,
        passes: Sequence[str] | None = None,
    ):
        self.stream = stream
        self.only_changed = only_changed
        self.passes = set(passes) if passes is not None else None

    def after_pass(self, record: PassRecord, graph: Graph) -> None:
        if self.only_changed and not record.changed:
            return
        if self.passes is not None and record.name not in self.passes:
            return
        stream = self.stream or sys.stdout
        print(f"// ----- IR after #{record.index} {record.label} -----", file=stream)
        print(graph, file=stream)


class DumpIRInstrument(Instrument):
    """Write the IR to ``folder``: ``000_input.ir``, then ``NNN_<pass>.ir`` after each pass.

    ``files`` lists the paths written, in order.
    """

    def __init__(self, folder: str | os.PathLike, only_changed: bool = False):
        self.folder = os.fspath(folder)
        self.only_changed = only_changed
        self.files: list[str] = []

    def _write(self, name: str, graph: Graph) -> None:
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, name)
        with open(path, "w") as f:
            f.write(str(graph) + "\n")
        self.files.append(path)

    def before_pipeline(self, graph: Graph) -> None:
        self._write("000_input.ir", graph)

    def after_pass(self, record: PassRecord, graph: Graph) -> None:
        if self.only_changed and not record.changed:
            return
        self._write(f"{record.index:03d}_{record.name}.ir", graph)


class NumericCheckInstrument(Instrument):
    """Run the graph on ``args`` around every pass that changed it; raise on numeric drift.

    Args:
        args, kwargs: model inputs, as for ``graphopt.run``.
        rtol, atol: allowed drift, ``|new - ref| <= atol + rtol * |ref|`` (exact for ints).
        compare_to: ``"previous"`` (the graph before this pass: blames exactly this pass) or
            ``"original"`` (the input graph: bounds the accumulated drift).

    Raises:
        NumericDriftError: (wrapped in PassError by the manager) naming the output and errors.
    """

    def __init__(
        self,
        args: Sequence[Any],
        rtol: float = 1e-4,
        atol: float = 1e-5,
        *,
        kwargs: dict | None = None,
        compare_to: str = "previous",
    ):
        if compare_to not in ("previous", "original"):
            raise ValueError("compare_to must be 'previous' or 'original'")
        self.args = tuple(args)
        self.kwargs = kwargs
        self.rtol, self.atol = rtol, atol
        self.compare_to = compare_to
        self.reference: list | None = None
        self.checks = 0

    def before_pipeline(self, graph: Graph) -> None:
        self.reference = run_outputs(graph, self.args, self.kwargs)

    def after_pass(self, record: PassRecord, graph: Graph) -> None:
        if not record.changed:
            return
        if self.reference is None:
            raise GraphoptError("NumericCheckInstrument: before_pipeline was not called")
        outputs = run_outputs(graph, self.args, self.kwargs)
        self.checks += 1
        drift = compare_outputs(self.reference, outputs, self.rtol, self.atol)
        if not drift.ok:
            raise NumericDriftError(
                f"outputs drifted after pass '{record.name}' "
                f"(vs the {self.compare_to} graph): {drift}"
            )
        if self.compare_to == "previous":
            self.reference = outputs
