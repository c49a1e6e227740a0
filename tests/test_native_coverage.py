"""Registry coverage of the native backend (issue #21): every registered op has a native
lowering or a written reason in ``graphopt.native.lower.NOT_LOWERED``; the ONNX node-test report
committed under benchmarks/results/published/ is what the benchmark script writes."""

from __future__ import annotations

import json
import pathlib

from graphopt.native import lower
from graphopt.ops.registry import all_ops

REPORT = (pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "published"
          / "onnx_node_coverage.json")


def test_every_op_is_lowered_or_has_a_written_reason():
    # graphopt's own ops (tests register throw-away ops such as "test.add" in the registry)
    ops = {name: d for name, d in all_ops().items()
           if getattr(d.reference, "__module__", "").startswith("graphopt.")}
    assert len(ops) >= 149
    lowered = {name for name, d in ops.items() if "native" in d.lowerings}
    unexplained = sorted(set(ops) - lowered - set(lower.NOT_LOWERED))
    assert unexplained == [], (
        f"ops without a native lowering and without a reason in "
        f"graphopt.native.lower.NOT_LOWERED: {unexplained}")
    stale = sorted(set(lower.NOT_LOWERED) & lowered)
    assert stale == [], f"lowered now: remove them from NOT_LOWERED: {stale}"
    unknown = sorted(set(lower.NOT_LOWERED) - set(ops))
    assert unknown == [], f"NOT_LOWERED names ops the registry does not have: {unknown}"
    assert all(len(reason) > 20 for reason in lower.NOT_LOWERED.values())


def test_published_onnx_node_report_is_consistent():
    report = json.loads(REPORT.read_text())
    s = report["summary"]
    failing = report["native_failures_among_onnxruntime_passes"]
    assert s["onnxruntime_direct"] - s["native_of_onnxruntime_passes"] == len(failing)
    assert sum(report["native_failure_reasons"].values()) == len(failing)
    assert abs(s["native_share_of_onnxruntime"]
               - s["native_of_onnxruntime_passes"] / s["onnxruntime_direct"]) < 1e-3
