"""``graphopt.quantize(graph, "auto")`` (issue #24): each layer chooses among float, dynamic
int8, static int8, weight-only and bf16 compute by its measured cost and error
(graphopt/quant/mixed.py). Decisions are tested on injected measurements (no timing
assertions); real measurements run end to end on the trained digits CNN and a small BERT."""

from __future__ import annotations

import pytest
import torch

import graphopt
from graphopt.errors import QuantizationError
from graphopt.quant import mixed
from graphopt.quant.config import AUTO_MODES, QuantizeConfig
from graphopt.quant.layer_cost import LayerCost
from graphopt.quant.mixed import Option, choose_option, fit_budget

QUANT_OPS = {"qlinear", "qlinear_dynamic", "linear_weight_only", "linear_bf16", "qconv"}


def _mlp(widths=(64, 256, 256, 128, 10), seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).eval()
    calibration = [(torch.randn(1, widths[0]),) for _ in range(4)]
    return model, graphopt.trace(model, calibration[0]), calibration


def _cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _ops(graph):
    return [n.op for n in graph.nodes]


def test_choose_option_fastest_that_pays_then_most_accurate():
    opts = [Option("dynamic", 1.0, 0.50, 1e-4), Option("weight-only", 1.0, 0.495, 5e-3),
            Option("bf16-compute", 1.0, 0.80, 1e-6), Option("static", 1.0, 1.20, 1e-5)]
    assert choose_option(opts).mode == "dynamic"  # within 2% of the fastest: more accurate
    assert choose_option(opts[2:]).mode == "bf16-compute"  # static does not pay
    assert choose_option(opts[3:]) is None
    assert choose_option([]) is None


def test_fit_budget_moves_the_worst_layer_to_a_more_accurate_option_then_float():
    options = {
        "a": [Option("weight-only", 1.0, 0.3, 1e-2), Option("dynamic", 1.0, 0.5, 1e-4)],
        "b": [Option("dynamic", 1.0, 0.6, 1e-3)],
        "c": [Option("static", 1.0, 1.5, 1e-5)],  # never pays: float from the start
    }
    # stand-in error: the sum of the chosen options' own errors
    per_mode = {(n, o.mode): o.error for n, opts in options.items() for o in opts}
    seen = []

    def error_of(assign):
        seen.append(dict(assign))
        return sum(per_mode[(n, m)] for n, m in assign.items())

    chosen = fit_budget(options, 2e-3, error_of)
    assert {n: o.mode for n, o in chosen.items()} == {"a": "dynamic", "b": "dynamic"}
    assert seen[0] == {"a": "weight-only", "b": "dynamic"}
    chosen = fit_budget(options, 5e-4, error_of)  # b has nothing more accurate: float
    assert {n: o.mode for n, o in chosen.items()} == {"a": "dynamic"}
    assert fit_budget(options, 0.0, error_of) == {}


def test_modes_compose_on_one_graph():
    """Static int8 builds first, the other modes rewrite their layers in place by name: each
    layer in another mode, one graph, close to float."""
    model, graph, calibration = _mlp()
    graph = graphopt.optimize(graph)
    cfg = QuantizeConfig(mode="auto")
    plans, notes = mixed._runnable_plans(graph, cfg, calibration)
    assert list(plans) == ["dynamic", "static", "weight-only", "bf16-compute"] and not notes
    layers = [r.node for r in mixed._union_records(plans)]
    assert len(layers) == 4
    assign = dict(zip(layers, ["static", "dynamic", "weight-only", "bf16-compute"]))
    out = mixed.composer(graph, plans)(assign)
    out.verify()
    ops = _ops(out)
    for op in ("qlinear", "qlinear_dynamic", "linear_weight_only", "linear_bf16"):
        assert ops.count(op) == 1, ops
    assert not {"linear", "fused_linear"} & set(ops)
    x = calibration[0][0]
    with torch.no_grad():
        assert _cosine(graphopt.run(out, x), model(x)) > 0.995
    # a static layer between float ones: quantize in, dequantize out, the rest float
    lone = mixed.composer(graph, plans)({layers[1]: "static"})
    assert sum(op in QUANT_OPS for op in _ops(lone)) == 1 and "quantize_linear" in _ops(lone)


_MODE_OF_OP = {"qlinear_dynamic": "dynamic", "linear_weight_only": "weight-only",
              "linear_bf16": "bf16-compute", "qlinear": "static"}


def test_modes_compose_on_bert_with_residual_layers(traced_bert_small):
    """Static int8's build unfuses and re-fuses residual layers under new names: the layers
    given to other modes are still found (by their weights), every one of them."""
    model, args, graph = traced_bert_small
    graph = graphopt.optimize(graph)
    plans, _ = mixed._runnable_plans(graph, QuantizeConfig(mode="auto"), [args])
    layers = [r.node for r in mixed._union_records(plans)]
    modes = ["static", "dynamic", "weight-only", "bf16-compute"]
    assign = {n: modes[i % 4] for i, n in enumerate(layers)}
    out = mixed.composer(graph, plans)(assign)
    out.verify()
    ops = out.op_histogram()
    for mode, op in (("dynamic", "qlinear_dynamic"), ("weight-only", "linear_weight_only"),
                     ("bf16-compute", "linear_bf16"), ("static", "qlinear")):
        assert ops[op] == sum(m == mode for m in assign.values()), (mode, ops)
    assert ops["fused_linear"] + ops["linear"] == 0
    ref, got = graphopt.run(graph, *args), graphopt.run(out, *args)
    assert _cosine(got[0], ref[0]) > 0.99


def _fake_costs(table):
    """``layer_costs`` stand-in: mode -> {layer index: (float ms, quantized ms)}; the mode is
    read off what the plan's build makes of the first layer."""

    def layer_costs(records, build, args, backend, threads, cache=None, rounds=15):
        names = [r.node for r in records if r.quantized]
        made = {n.op for n in build({names[0]}).nodes}
        mode = next(m for op, m in _MODE_OF_OP.items() if op in made)
        return {names[i]: LayerCost(f, q) for i, (f, q) in table.get(mode, {}).items()}

    return layer_costs


def test_auto_follows_the_measurements(monkeypatch):
    """Injected per-layer costs: layer 0 pays with dynamic, layer 1 with weight-only, layer 2
    with nothing (float), layer 3 only with bf16; the mix is the fastest whole graph."""
    model, graph, calibration = _mlp()
    table = {"dynamic": {0: (1.0, 0.4), 1: (1.0, 0.9), 2: (1.0, 1.1), 3: (1.0, 1.3)},
             "weight-only": {0: (1.0, 0.8), 1: (1.0, 0.5), 2: (1.0, 1.2), 3: (1.0, 1.4)},
             "bf16-compute": {0: (1.0, 0.9), 1: (1.0, 0.95), 2: (1.0, 1.3), 3: (1.0, 0.9)}}
    monkeypatch.setattr("graphopt.quant.layer_cost.layer_costs", _fake_costs(table))

    def fake_timing(graphs, backend, threads, rounds, min_sample_s=0.005):
        ms = {mixed.MIX: 1.0, mixed.FLOAT: 2.0}  # each mode alone: 1.5
        return {label: [ms.get(label, 1.5)] * 5 for label in graphs}

    monkeypatch.setattr("graphopt.quant.layer_cost.time_graphs", fake_timing)
    out, rep = graphopt.quantize(graph, "auto", calibration=calibration, report=True,
                                 modes=("dynamic", "weight-only", "bf16-compute"),
                                 error_budget=0.05)
    modes = [r.mode if r.quantized else "float" for r in rep.layers]
    assert modes == ["dynamic", "weight-only", "float", "bf16-compute"]
    assert "no mode was faster alone" in rep.layers[2].reason
    assert rep.layers[0].cost == (1.0, 0.4) and "weight-only 0.8000 ms" in rep.layers[0].reason
    ops = _ops(out)
    assert (ops.count("qlinear_dynamic"), ops.count("linear_weight_only"),
            ops.count("linear_bf16")) == (1, 1, 1)
    assert rep.speed[mixed.MIX] == 1.0 and rep.speed[mixed.FLOAT] == 2.0
    assert set(rep.speed) == {mixed.MIX, "only dynamic", "only weight-only",
                              "only bf16-compute", mixed.FLOAT}
    assert rep.label == "mixed" and "dynamic" in str(rep) and rep.error <= 0.05
    x = calibration[0][0]
    with torch.no_grad():
        assert _cosine(graphopt.run(out, x), model(x)) > 0.99


def test_auto_keeps_float_when_the_float_graph_is_fastest(monkeypatch):
    """Every layer pays alone, but the float graph wins the whole-graph timing (what a small
    model on an AVX2 CPU does): the result is the float graph, its size unchanged, and every
    layer's reason names the whole-graph medians."""
    model, graph, calibration = _mlp()
    table = {"dynamic": {i: (1.0, 0.5) for i in range(4)}}
    monkeypatch.setattr("graphopt.quant.layer_cost.layer_costs", _fake_costs(table))

    def fake_timing(graphs, backend, threads, rounds, min_sample_s=0.005):
        return {label: [1.0 if label == mixed.FLOAT else 1.2] * 5 for label in graphs}

    monkeypatch.setattr("graphopt.quant.layer_cost.time_graphs", fake_timing)
    out, rep = graphopt.quantize(graph, "auto", calibration=calibration, report=True,
                                 modes=("dynamic",), error_budget=0.05)
    assert not set(_ops(out)) & QUANT_OPS and not rep.quantized
    assert rep.bytes_after == rep.bytes_before
    assert all(r.reason.startswith("kept float: the whole graph was fastest as float")
               for r in rep.layers), str(rep)


def test_a_budget_nothing_fits_leaves_the_graph_float():
    model, graph, calibration = _mlp()
    out, rep = graphopt.quantize(graph, "auto", calibration=calibration, error_budget=0.0,
                                 modes=("dynamic",), report=True)
    assert not set(_ops(out)) & QUANT_OPS
    assert all("kept float" in r.reason for r in rep.layers if r.reason)
    assert rep.error < 1e-12 and not rep.quantized


def test_a_mode_the_backend_cannot_run_is_left_out_with_a_note(monkeypatch):
    from graphopt.quant import backend

    real = backend.check_runs_on

    def no_bf16(target, float_graph, graph, mode):
        if mode == "bf16-compute":
            raise QuantizationError("no linear_bf16 kernel on this backend")
        return real(target, float_graph, graph, mode)

    monkeypatch.setattr(backend, "check_runs_on", no_bf16)
    _, graph, calibration = _mlp()
    cfg = QuantizeConfig(mode="auto", modes=("dynamic", "bf16-compute"))
    plans, notes = mixed._runnable_plans(graphopt.optimize(graph), cfg, calibration)
    assert list(plans) == ["dynamic"]
    assert notes and "bf16-compute left out" in notes[0] and "linear_bf16" in notes[0]


def test_options_are_checked():
    _, graph, calibration = _mlp()
    with pytest.raises(QuantizationError, match="applies to mode='auto'"):
        graphopt.quantize(graph, "dynamic", modes=("dynamic",))
    with pytest.raises(QuantizationError, match="chooses among"):
        graphopt.quantize(graph, "auto", calibration=calibration, modes=("fp16",))
    with pytest.raises(QuantizationError, match="needs calibration"):
        graphopt.quantize(graph, "auto")
    assert QuantizeConfig(mode="auto").modes == AUTO_MODES


def test_auto_on_the_trained_digits_cnn(digits_cnn, digits_data):
    """Real measurements on native: a valid graph within the budget, its decisions explained,
    accuracy kept."""
    _, _, x_test, y_test = digits_data
    graph = graphopt.trace(digits_cnn, (x_test[:1],))
    calibration = [(x_test[i:i + 1],) for i in range(8)]
    out, rep = graphopt.quantize(graph, "auto", calibration=calibration, report=True)
    out.verify()
    assert rep.error <= mixed.AUTO_ERROR_BUDGET
    assert mixed.FLOAT in rep.speed or not rep.speed
    for r in rep.layers:
        assert r.quantized == bool(r.mode)
        assert r.quantized or r.reason.startswith("kept float")
    quantized = {r.mode for r in rep.layers if r.quantized}
    assert quantized <= set(AUTO_MODES)
    with torch.no_grad():
        right = sum(int(graphopt.run(out, x_test[i:i + 1]).argmax(1) == y_test[i])
                    for i in range(0, len(y_test), 4))
        before = sum(int(digits_cnn(x_test[i:i + 1]).argmax(1) == y_test[i])
                     for i in range(0, len(y_test), 4))
    assert right >= before - 2


def test_cli_auto(tmp_path, capsys):
    import numpy as np

    from graphopt.cli import main

    calib = tmp_path / "c.npz"
    np.savez(calib, np.random.default_rng(0).standard_normal((4, 1, 64)).astype(np.float32))
    out = tmp_path / "mlp.onnx"
    assert main(["quantize", "zoo:mlp?width=64&depth=2", "-o", str(out), "--mode", "auto",
                 "--modes", "dynamic,weight-only", "--calibration", str(calib)]) == 0
    printed = capsys.readouterr().out
    assert "mode=auto: dynamic, weight-only" in printed and out.exists()
    assert main(["quantize", "zoo:mlp?width=64&depth=2", "-o", str(out), "--mode", "dynamic",
                 "--modes", "dynamic"]) == 2
    assert "--modes applies to --mode auto" in capsys.readouterr().err
