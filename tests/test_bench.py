"""The benchmark harness: report fields, JSON schema, interleaving, failure handling, per-pass.

Everything runs on tiny models (a 2-layer MLP of width 32) with few rounds, torch-compile
included (its first call, inductor compiling, takes ~20 s here).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import graphopt
from graphopt import zoo
from graphopt.bench import (
    BENCH_BACKENDS,
    DEFAULT_BACKENDS,
    SCHEMA,
    BackendUnavailable,
    BenchBackend,
    Prepared,
)
from graphopt.bench.report import percentile
from graphopt.timing import calibrate, run_interleaved

# "cleanup" keeps these tests about the harness, independent of which fusions "default" has.
FAST = dict(rounds=3, warmup=1, progress=False, threads=1, pipeline="cleanup")


@pytest.fixture(scope="module")
def tiny_mlp():
    return zoo.get("mlp", width=32, depth=2)


@pytest.fixture(scope="module")
def mlp_report(tiny_mlp):
    model, args = tiny_mlp
    backends = ["eager", "onnxruntime", "graphopt-onnxruntime", "graphopt-native",
                "graphopt-torch", "no-such-backend"]
    return graphopt.benchmark(model, args, backends=backends, **FAST)


def test_report_fields(mlp_report):
    status = {r.backend: r.status for r in mlp_report.results}
    assert status["eager"] == status["graphopt-torch"] == "ok"
    assert status["onnxruntime"] == status["graphopt-onnxruntime"] == "ok"
    assert status["graphopt-native"] in ("ok", "unavailable")
    assert status["no-such-backend"] == "unknown"
    assert "known" in mlp_report["no-such-backend"].reason
    for r in mlp_report.ok_results:
        lat = r.latency
        assert 0 < lat.min <= lat.p10 <= lat.p50 <= lat.p90
        assert lat.iqr >= 0 and len(lat.samples) == 3 and lat.calls_per_sample >= 1
        assert r.setup_s is not None and r.setup_s >= 0 and r.first_call_s >= 0
        assert r.numerics_ok, r
        assert r.max_abs_err < 1e-4 and r.max_rel_err < 1e-4
        assert r.peak_mem_mib is not None and r.memory_method in ("proc-hwm", "ru_maxrss")
        assert r.speedup_vs_eager > 0
    assert mlp_report["eager"].speedup_vs_eager == pytest.approx(1.0)
    for name in ("onnxruntime", "graphopt-onnxruntime", "graphopt-torch", "eager"):
        assert mlp_report[name].artifact_bytes > 32 * 32 * 4  # at least the weights
    assert "optimize" in mlp_report["graphopt-onnxruntime"].setup_stages
    peaks = mlp_report["graphopt-onnxruntime"].setup_stage_peaks_mib
    assert set(peaks) == set(mlp_report["graphopt-onnxruntime"].setup_stages)
    assert all(p >= 0 for p in peaks.values())
    assert "graphopt-onnxruntime setup: trace" in mlp_report.table()
    timed = []
    for r in mlp_report.ok_results:
        timed += [f"{r.backend} @ {k}" for k in r.settings_p50_ms] or [r.backend]
    assert mlp_report.config["order"] == timed
    for name in ("onnxruntime", "graphopt-onnxruntime"):  # both settings timed, best reported
        r = mlp_report[name]
        assert set(r.settings_p50_ms) == {"spinning", "no spinning"}
        assert r.latency.p50 == min(r.settings_p50_ms.values())
        assert r.settings_p50_ms[r.setting] == r.latency.p50
    native = mlp_report["graphopt-native"]  # its pool's spin timed both ways, like onnxruntime
    assert set(native.settings_p50_ms) == {"default spin", "spinning"}
    assert native.latency.p50 == min(native.settings_p50_ms.values())
    assert mlp_report["eager"].setting == "" and not mlp_report["eager"].settings_p50_ms
    threading = mlp_report.machine["threading"]
    assert threading["torch_threads"] >= 1 and "environment" in threading
    assert mlp_report.config["threads"] == 1 and mlp_report.config["reference"] == "eager"


def test_table_markdown_plot(mlp_report, tmp_path):
    table = str(mlp_report)
    assert "p50 ms" in table and "graphopt-onnxruntime" in table
    assert "no-such-backend: unknown" in table
    md = mlp_report.to_markdown(str(tmp_path / "r.md"))
    assert md.startswith("## MLP") and "| backend | status |" in md
    assert (tmp_path / "r.md").read_text() == md
    png = mlp_report.plot(str(tmp_path / "sub" / "r.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_json_schema(mlp_report, tmp_path):
    path = tmp_path / "r.json"
    data = json.loads(mlp_report.to_json(str(path)))
    assert json.loads(path.read_text()) == data
    assert data["schema"] == SCHEMA
    assert set(data) == {"schema", "created", "duration_s", "model", "config", "machine",
                         "results", "per_pass"}
    assert isinstance(data["model"]["inputs"], list)
    assert data["model"]["inputs"][0] == {"shape": [1, 32], "dtype": "float32"}
    for key in ("cpu_model", "logical_cpus", "usable_cpus", "cpu_flags", "platform", "python",
                "versions"):
        assert key in data["machine"]
    assert {"torch", "onnxruntime", "graphopt"} <= set(data["machine"]["versions"])
    for key, kind in (("threads", int), ("rounds", int), ("rounds_done", int),
                      ("pipeline", str), ("order", list), ("backends", list)):
        assert isinstance(data["config"][key], kind), key
    result_keys = {"backend", "status", "reason", "latency_ms", "speedup_vs_eager", "setup_s",
                   "first_call_s", "setup_stages", "setup_stage_peaks_mib", "peak_mem_mib",
                   "resident_mem_mib", "memory_method", "max_abs_err", "max_rel_err", "numerics_ok",
                   "artifact_bytes", "artifact", "notes", "setting", "settings_p50_ms"}
    for r in data["results"]:
        assert set(r) == result_keys
        if r["status"] == "ok":
            lat = r["latency_ms"]
            assert {"p50", "p90", "p10", "min", "mean", "iqr", "samples",
                    "calls_per_sample"} <= set(lat)
            assert all(isinstance(lat[k], float) for k in ("p50", "p90", "min", "iqr"))
            assert isinstance(r["artifact_bytes"], int)
        else:
            assert r["latency_ms"] is None and r["reason"]


# --------------------------------------------------------------------- fake backends & clock
class FakeWorld:
    """A fake clock advanced only by fake backends' calls, and a log of who was called."""

    def __init__(self):
        self.now = 0.0
        self.log: list[str] = []

    def clock(self) -> float:
        return self.now

    def backend(self, name: str, cost_s: float, output=None, fail_after: int | None = None,
                prepare_error: Exception | None = None) -> BenchBackend:
        world = self

        def prepare(subject, options):
            if prepare_error is not None:
                raise prepare_error
            calls = [0]

            def call():
                calls[0] += 1
                if fail_after is not None and calls[0] > fail_after:
                    raise RuntimeError("boom")
                world.log.append(name)
                world.now += cost_s
                return output if output is not None else subject.module(*subject.args)

            return Prepared(call, {"build": 0.5})

        return BenchBackend(name, prepare, f"fake {name}")


def test_rounds_are_interleaved_and_clock_is_used(tiny_mlp):
    model, args = tiny_mlp
    world = FakeWorld()
    backends = [world.backend("A", 0.001), world.backend("B", 0.002),
                world.backend("C", 0.004)]
    report = graphopt.benchmark(model, args, backends=backends, rounds=4, warmup=2,
                                block=1, pause_s=0, min_sample_s=0, clock=world.clock,
                                progress=False)
    setup = ["A"] * 3 + ["B"] * 3 + ["C"] * 3  # first call + 2 warm-up calls each, in turn
    # rotated: every backend runs after each of the others, none always first
    assert world.log == setup + list("ABC" "BCA" "CAB" "ABC")
    assert report.config["order"] == ["A", "B", "C"]
    assert report["A"].latency.p50 == pytest.approx(1.0)
    assert report["C"].latency.p90 == pytest.approx(4.0)
    assert report["A"].setup_stages == {"build": 0.5}


def test_calls_per_sample_calibration():
    world = FakeWorld()

    def call():
        world.now += 0.0001

    assert calibrate(call, warmup=3, min_sample_s=0.01, clock=world.clock) == 100
    assert calibrate(call, warmup=3, min_sample_s=0.0, clock=world.clock) == 1
    samples, done = run_interleaved({"x": call}, {"x": 100}, 5, world.clock)
    assert done == 5 and samples["x"] == pytest.approx([0.0001] * 5)


def test_blocks_pause_between_variants_and_warm_up_first():
    """Spinning pools: a block of samples after one untimed call, then a pause."""
    world = FakeWorld()
    log, pauses = [], []

    def make(name):
        def call():
            log.append(name)
            world.now += 1.0
        return call

    samples, done = run_interleaved({"a": make("a"), "b": make("b")}, {}, 5, world.clock,
                                    rotate=True, block=2, pause_s=0.25, block_warmup=1,
                                    sleep=pauses.append)
    assert done == 5 and len(samples["a"]) == len(samples["b"]) == 5
    # passes: a a a | b b b, then rotated b b b | a a a, then the last sample of each
    assert log == list("aaa" "bbb" "bbb" "aaa" "aa" "bb")
    assert pauses == [0.25] * 6


def test_fastest_setting_is_reported(tiny_mlp):
    """A backend with settings: each is timed, interleaved; the fastest is its result."""
    model, args = tiny_mlp
    world = FakeWorld()

    def prepare(subject, options):
        def timed(cost):
            def call():
                world.log.append(cost)
                world.now += cost
                return subject.module(*subject.args)
            return call

        slow, fast = timed(0.003), timed(0.001)
        return Prepared(slow, settings=lambda: {"slow": slow, "fast": fast})

    report = graphopt.benchmark(model, args, backends=[BenchBackend("S", prepare, "")],
                                rounds=4, warmup=1, block=2, pause_s=0, min_sample_s=0,
                                clock=world.clock, progress=False)
    r = report["S"]
    assert r.setting == "fast" and r.latency.p50 == pytest.approx(1.0)
    assert r.settings_p50_ms == pytest.approx({"slow": 3.0, "fast": 1.0})
    assert report.config["order"] == ["S @ slow", "S @ fast"]
    assert "fastest setting 'fast'" in str(report)


def test_spinning_option_is_checked(tiny_mlp):
    model, args = tiny_mlp
    report = graphopt.benchmark(model, args, backends=["onnxruntime"],
                                backend_options={"onnxruntime": {"spinning": "off"}}, **FAST)
    assert report["onnxruntime"].ok and report["onnxruntime"].setting == ""
    bad = graphopt.benchmark(model, args, backends=["onnxruntime"],
                             backend_options={"onnxruntime": {"spinning": "sometimes"}}, **FAST)
    assert bad["onnxruntime"].status == "error" and "spinning" in bad["onnxruntime"].reason


@pytest.mark.parametrize("options,setting", [({"spinning": "off"}, ""), ({"spin_us": 200}, ""),
                                             ({"spinning": "both"}, "?")])
def test_native_spinning_options(tiny_mlp, options, setting):
    model, args = tiny_mlp
    report = graphopt.benchmark(model, args, backends=["graphopt-native"],
                                backend_options={"graphopt-native": options}, **FAST)
    r = report["graphopt-native"]
    assert r.ok, r.reason
    if setting == "?":
        assert r.setting in ("default spin", "spinning") and len(r.settings_p50_ms) == 2
    else:
        assert r.setting == setting and not r.settings_p50_ms
    bad = graphopt.benchmark(model, args, backends=["graphopt-native"],
                             backend_options={"graphopt-native": {"spinning": "sometimes"}},
                             **FAST)
    assert bad["graphopt-native"].status == "error" and "spinning" in bad["graphopt-native"].reason


def test_max_time_budget_stops_early():
    world = FakeWorld()

    def call():
        world.now += 1.0

    samples, done = run_interleaved({"x": call}, {}, 100, world.clock, max_time_s=5.5)
    assert done == 6 and len(samples["x"]) == 6


def test_failures_are_reported_not_raised(tiny_mlp):
    model, args = tiny_mlp
    world = FakeWorld()
    wrong = torch.full((1, 32), 7.0)
    backends = [
        world.backend("good", 0.001),
        world.backend("broken-setup", 0.001, prepare_error=RuntimeError("no compiler\nmore")),
        world.backend("missing", 0.001, prepare_error=BackendUnavailable("not built here")),
        world.backend("dies-later", 0.001, fail_after=3),
        world.backend("wrong", 0.001, output=wrong),
        "eager",
    ]
    report = graphopt.benchmark(model, args, backends=backends, rounds=3, warmup=1,
                                min_sample_s=0, clock=world.clock, progress=False)
    assert report["good"].status == "ok"
    assert report["broken-setup"].status == "error"
    assert report["broken-setup"].reason == "setup failed: RuntimeError: no compiler"
    assert report["missing"].status == "unavailable"
    assert report["missing"].reason == "not built here"
    assert report["dies-later"].status == "error"
    assert "failed while timing" in report["dies-later"].reason
    assert report["dies-later"].latency is None
    assert report["wrong"].status == "ok" and report["wrong"].numerics_ok is False
    assert "!" in report.table()


def test_graph_input_has_no_eager(tiny_mlp):
    model, args = tiny_mlp
    graph = graphopt.trace(model, args)
    report = graphopt.benchmark(graph, args, backends=["eager", "graphopt-torch"], **FAST)
    assert report["eager"].status == "unavailable"
    assert report["graphopt-torch"].status == "ok"
    assert report.config["reference"] == "graphopt interpreter"
    assert report["graphopt-torch"].speedup_vs_eager is None


def test_threads_are_restored(tiny_mlp):
    model, args = tiny_mlp
    before = torch.get_num_threads()
    report = graphopt.benchmark(model, args, backends=["eager"], rounds=2, warmup=0,
                                threads=before + 1, progress=False)
    assert report.config["threads"] == before + 1
    assert torch.get_num_threads() == before


class Reshapes(nn.Module):
    """Canonicalize merges the reshapes and drops x*1: the per-pass attribution sees it."""

    def forward(self, x):
        y = x.reshape(4, 8).reshape(32) * 1.0
        return torch.relu(y).reshape(2, 16)


def test_per_pass_attribution():
    report = graphopt.benchmark(Reshapes(), (torch.randn(2, 16),), backends=["eager"],
                                per_pass="graphopt-torch", rounds=2, warmup=1, progress=False)
    per_pass = report.per_pass
    assert per_pass is not None and per_pass.backend == "graphopt-torch"
    stages = per_pass.stages
    assert stages[0].label == "unoptimized" and stages[0].speedup == pytest.approx(1.0)
    assert len(stages) >= 2 and stages[-1].nodes < stages[0].nodes
    assert any("canonicalize" in s.label for s in stages[1:])
    assert all(s.p50_ms is not None for s in stages)
    data = report.to_dict()["per_pass"]
    assert data["stages"][0]["label"] == "unoptimized"
    assert "per-pass attribution" in report.table()


def test_per_pass_rejects_non_graph_backend():
    from graphopt.bench.backends import Subject
    from graphopt.bench.per_pass import attribute_passes
    from graphopt.errors import GraphoptError

    subject = Subject("m", Reshapes(), (torch.randn(2, 16),))
    with pytest.raises(GraphoptError, match="needs a graphopt backend"):
        attribute_passes(subject, "eager")


def test_torch_compile_is_registered():
    assert "torch-compile" in BENCH_BACKENDS and "torch-compile" in DEFAULT_BACKENDS
    assert set(DEFAULT_BACKENDS) <= set(BENCH_BACKENDS)


# torch.compile is the competitor people reach for first: its comparison path runs in every
# `make test` (~20 s here, inductor compiling a tiny MLP), not only behind a flag.
def test_torch_compile_runs(tiny_mlp):
    model, args = tiny_mlp
    report = graphopt.benchmark(model, args, backends=["eager", "torch-compile"], **FAST)
    r = report["torch-compile"]
    assert r.status == "ok" and r.numerics_ok and r.first_call_s > 0
    # at its best: every setting compiled and timed, the fastest reported
    assert set(r.settings_p50_ms) == {"default", "freezing", "max-autotune+freezing"}
    assert r.latency.p50 == min(r.settings_p50_ms.values())


def test_torch_compile_settings_option(tiny_mlp):
    model, args = tiny_mlp
    one = graphopt.benchmark(model, args, backends=["torch-compile"],
                             backend_options={"torch-compile": {"settings": "freezing"}}, **FAST)
    assert one["torch-compile"].ok and one["torch-compile"].setting == ""
    bad = graphopt.benchmark(model, args, backends=["torch-compile"],
                             backend_options={"torch-compile": {"settings": "turbo"}}, **FAST)
    assert bad["torch-compile"].status == "error" and "turbo" in bad["torch-compile"].reason


def test_percentile_matches_numpy():
    import numpy as np

    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    for q in (0, 10, 25, 50, 90, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_busy_machine_warning(mlp_report):
    import copy

    report = copy.copy(mlp_report)
    assert report.machine["competing_cpus"] is not None  # sampled from /proc/stat at the start
    report.machine = dict(mlp_report.machine, competing_cpus=1.9, usable_cpus=2)
    assert "not reliable" in report.table() and "not reliable" in report.to_markdown()
    # A high load average left by this benchmark's own earlier work is not competition.
    report.machine = dict(mlp_report.machine, load_avg_1m=9.0, competing_cpus=0.0, usable_cpus=2)
    assert report.busy_warning() == ""
    # Older reports without the sample fall back to the load average.
    report.machine = dict(mlp_report.machine, load_avg_1m=9.0, usable_cpus=2)
    del report.machine["competing_cpus"]
    assert "load average 9.0" in report.busy_warning()
    report.machine["load_avg_1m"] = 0.0
    assert report.busy_warning() == ""


def test_competing_cpu_load_sees_another_process():
    import subprocess
    import sys

    from graphopt.bench.machine import competing_cpu_load

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = competing_cpu_load(window_s=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    # One spinning process is about one CPU of competition (it may be descheduled a little).
    assert busy is not None and busy >= 0.5
