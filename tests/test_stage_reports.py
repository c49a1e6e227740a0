"""Visible cost: every stage takes ``report=True`` and says its time and peak memory
(``graphopt.stagereport``), nested measurements keep the outer peak, and the memory-hungry
steps stream: the interpreter releases each activation after its last use, and calibration
statistics are fed as values are computed (from any iterable)."""

from __future__ import annotations

import mmap
import weakref

import numpy as np
import onnx
import pytest
import torch

import graphopt
from graphopt.backends.torch_module import to_torch
from graphopt.interpreter import flatten_inputs, run_flat
from graphopt.quant.static import calibrate
from graphopt.stagereport import PeakMeter, StageReport, can_reset_peak, measure


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(32, 64)
        self.fc2 = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def mlp():
    return Mlp().eval(), torch.randn(8, 32)


def _check(report, stage: str) -> None:
    assert isinstance(report, StageReport)
    assert report.stage == stage
    assert report.seconds > 0
    assert report.peak_mib >= report.rss_before_mib > 0
    assert stage in str(report) and "peak RSS" in str(report)


def test_every_stage_reports_time_and_peak_memory(mlp, tmp_path):
    model, x = mlp
    graph, cost = graphopt.trace(model, (x,), report=True)
    _check(cost, "trace")
    optimized, passes = graphopt.optimize(graph, report=True)
    _check(passes.stage, "optimize")
    assert passes.records and all(r.peak_mib is not None for r in passes.records)
    assert "peak" in str(passes).splitlines()[1] and "optimize:" in str(passes)
    fn, cost = graphopt.compile(optimized, backend="native", report=True)
    _check(cost, "compile native")
    np.testing.assert_allclose(np.asarray(fn(x)), model(x).detach().numpy(), atol=1e-5)
    model_proto, cost = graphopt.to_onnx(optimized, report=True)
    _check(cost, "to_onnx")
    assert isinstance(model_proto, onnx.ModelProto)
    _, cost = graphopt.from_onnx(model_proto, report=True)
    _check(cost, "from_onnx")
    _, cost = to_torch(optimized, report=True)
    _check(cost, "to_torch")
    _, quant = graphopt.quantize(optimized, "dynamic", report=True)
    _check(quant.stage, "quantize dynamic")
    assert "quantize dynamic:" in str(quant)
    _, pruned = graphopt.prune(optimized, "channels", ratio=0.25, report=True)
    _check(pruned.stage, "prune channels")


def test_without_report_the_results_are_plain(mlp):
    model, x = mlp
    graph = graphopt.trace(model, (x,))
    assert isinstance(graph, graphopt.Graph)
    assert isinstance(graphopt.optimize(graph), graphopt.Graph)
    assert callable(graphopt.compile(graph, backend="interpreter"))


@pytest.mark.skipif(not can_reset_peak(), reason="needs a resettable peak-RSS counter (Linux)")
def test_a_nested_stage_does_not_hide_the_outer_peak():
    outer = PeakMeter()
    outer.start()
    # 64 MiB of fresh pages (an anonymous map, not the heap, whose free memory may already be
    # resident), every page touched, then unmapped: RSS rises by 64 MiB and falls back.
    block = mmap.mmap(-1, 64 * 2**20)
    block.write(b"\1" * len(block))
    block.close()
    with measure("inner") as inner:  # resets the kernel's counter
        pass
    peak, _ = outer.stop()
    assert peak >= 48, f"outer peak {peak:.1f} MiB lost the 64 MiB block"
    assert inner.peak_increase_mib < 48


class Chain(torch.nn.Module):
    """Twenty elementwise steps on a 4 MiB activation: a forward that holds every activation
    would hold 80 MiB."""

    def forward(self, x):
        for i in range(20):
            x = torch.tanh(x) + float(i)
        return x


def test_interpreter_releases_activations_after_their_last_use():
    x = torch.randn(1024, 1024)
    graph = graphopt.trace(Chain(), (x,))
    alive: list[weakref.ref] = []
    most = [0]

    def observe(value, tensor):
        alive.append(weakref.ref(tensor))
        most[0] = max(most[0], sum(r() is not None for r in alive))

    (out,) = run_flat(graph, flatten_inputs(graph, (x,), {}), observe=observe)
    torch.testing.assert_close(out, Chain()(x))
    assert len(alive) > 30
    assert most[0] <= 4, f"{most[0]} activations alive at once"


def test_calibration_streams_from_any_iterable(mlp):
    model, _ = mlp
    graph = graphopt.optimize(graphopt.trace(model, (torch.randn(8, 32),)))
    names = [v.name for v in graph.values() if v.producer is not None]
    batches = [(torch.randn(8, 32),) for _ in range(5)]
    from_list = calibrate(graph, names, batches)
    from_generator = calibrate(graph, names, (b for b in batches))
    assert set(from_list) == set(names)
    for name in names:
        assert from_list[name].range() == from_generator[name].range()
        lo, hi = from_list[name].range()
        assert lo < hi


def test_static_quantization_streams_a_generator(mlp):
    """A generator is read once, item by item (never held as a list): the same quantized
    graph as from a list, and no output error (nothing left to measure it on)."""
    model, x = mlp
    graph = graphopt.optimize(graphopt.trace(model, (x,)))
    batches = [(torch.randn(8, 32),) for _ in range(4)]
    read = []

    def reader():
        for batch in batches:
            read.append(len(read))
            yield batch

    from_list, rep_list = graphopt.quantize(graph, "static", calibration=batches, report=True)
    streamed, rep_stream = graphopt.quantize(graph, "static", calibration=reader(), report=True)
    assert read == [0, 1, 2, 3]
    assert rep_list.error is not None and rep_stream.error is None
    assert len(rep_stream.quantized) == len(rep_list.quantized) > 0
    torch.testing.assert_close(graphopt.run(streamed, x), graphopt.run(from_list, x))
