"""graphopt.check_speed and --check-speed / --require-faster (issue #24): a compressed graph is
timed against its input on one backend, and a slower one is reported, never silently shipped.
(No timing assertion beyond orders of magnitude: the machines are shared.)"""

from __future__ import annotations

import warnings

import pytest
import torch

import graphopt
from graphopt.bench.speedcheck import SpeedRegressionError, SpeedRegressionWarning


def _graphs():
    small = graphopt.parse("""graph g(%x: f32[4, 64]) {
      %y: f32[4, 64] = relu(%x)
      return %y
    }""")
    chain = "\n".join(f"  %h{i + 1}: f32[4, 64] = linear(%h{i}, %w, None)" for i in range(40))
    heavy = graphopt.parse(f"""graph g(%h0: f32[4, 64]) {{
  const %w: f32[64, 64]
{chain}
  return %h40
}}""", {"w": torch.randn(64, 64).numpy() * 0.1})
    return small, heavy


def test_a_slower_result_warns_or_fails():
    small, heavy = _graphs()
    x = torch.randn(4, 64)
    with pytest.warns(SpeedRegressionWarning, match="not faster"):
        result = graphopt.check_speed(small, heavy, (x,), rounds=5)
    assert result.after_ms > result.before_ms and not result.faster and result.speedup < 1
    assert "slower" in str(result)
    with pytest.raises(SpeedRegressionError, match="not faster"):
        graphopt.check_speed(small, heavy, (x,), rounds=5, require_faster=True)


def test_a_faster_result_passes_quietly():
    small, heavy = _graphs()
    x = torch.randn(4, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpeedRegressionWarning)
        result = graphopt.check_speed(heavy, small, (x,), backend="onnxruntime", rounds=5)
    assert result.faster and result.speedup > 1 and result.backend == "onnxruntime"


def test_cli_prints_the_speed_check(tmp_path, capsys):
    from graphopt.cli import main

    out = tmp_path / "m.onnx"
    assert main(["quantize", "zoo:mlp?width=64&depth=2", "-o", str(out), "--mode", "dynamic",
                 "--check-speed", "-q"]) == 0
    err = capsys.readouterr().err
    assert "speed check on onnxruntime" in err and out.exists()


def test_speed_aware_quantization_keeps_the_fastest_candidate(digits_cnn, digits_data):
    """speed=True measures each layer alone, then times the float graph, the all-int8 graph
    and the per-layer choice, and returns the fastest; whatever it leaves float says why."""
    x_train, _, x_test, _ = digits_data
    graph = graphopt.trace(digits_cnn, (x_test[:1],))
    calibration = [(x_train[i: i + 1],) for i in range(16)]
    q, report = graphopt.quantize(graph, "static", calibration=calibration, speed=True,
                                  report=True)
    assert all(r.cost is not None and min(r.cost) > 0 for r in report.layers)
    assert "float" in report.speed and any(k.startswith("all") for k in report.speed)
    # the kept graph is one of the timed candidates (graphopt.quant.speed.choose picked it)
    n, k = len(report.layers), len(report.quantized)
    kept = "float" if k == 0 else f"all {n}" if k == n else f"per-layer {k} of {n}"
    assert kept in report.speed
    kept_float = [r for r in report.layers if not r.quantized]
    assert all("did not pay" in r.reason for r in kept_float)
    if kept.startswith("per-layer"):  # exactly the layers that paid alone
        assert {r.node for r in report.layers if r.quantized} == \
            {r.node for r in report.layers if r.cost[1] <= r.cost[0]}
    assert report.error is not None and report.error < 0.05
    np_out = graphopt.compile(q, backend="native")(x_test[:1])
    assert np_out.shape == (1, 10)
    with pytest.raises(graphopt.GraphoptError, match="calibration"):
        graphopt.quantize(graph, "dynamic", speed=True)
