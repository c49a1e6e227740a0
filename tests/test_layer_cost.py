"""Per-layer micro-benchmarks for speed-aware quantization (issue #24): regions cut out of a
graph (graphopt/ir/extract.py), the per-machine cost cache (graphopt/costcache.py) and the
per-layer choice (graphopt/quant/layer_cost.py, graphopt/quant/speed.py). No timing
assertions: what is checked is what was measured, cached and decided from the measurements."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import graphopt
from graphopt.costcache import CostCache, CostCacheWarning, default_path, machine_key
from graphopt.errors import GraphoptError
from graphopt.ir.extract import extract_region, region_signature
from graphopt.quant import layer_cost, speed
from graphopt.quant.layer_cost import LayerCost


def _mlp_graph(widths=(32, 48, 48, 16)):
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).eval()
    x = torch.randn(2, widths[0])
    return graphopt.optimize(graphopt.trace(model, (x,))), x


def test_a_region_is_a_graph_of_its_own():
    graph, x = _mlp_graph()
    linears = [n for n in graph.nodes if n.op in ("linear", "fused_linear")]
    region, sources = extract_region(graph, [linears[1]])
    assert sources == [linears[0].outputs[0].name]
    assert [n.op for n in region.nodes] == [linears[1].op] and len(region.outputs) == 1
    region.verify()
    w1, b1 = (torch.from_numpy(v.data.copy()) for v in linears[1].inputs[1:3])
    h = torch.randn(2, 48)  # fed any first-layer output, the region computes the second layer
    torch.testing.assert_close(graphopt.run(region, h),
                               torch.relu(torch.nn.functional.linear(h, w1, b1)))
    with pytest.raises(GraphoptError, match="extract_region"):
        extract_region(graph, [])


def test_signatures_see_structure_not_names_or_weights():
    graph, _ = _mlp_graph((32, 48, 48, 48, 16))
    linears = [n for n in graph.nodes if n.op in ("linear", "fused_linear")]
    sig = [region_signature(extract_region(graph, [n])[0]) for n in linears]
    assert sig[1] == sig[2]          # 48 -> 48 twice, different weights and names
    assert len({sig[0], sig[1], sig[3]}) == 3  # other shapes or epilogues


def test_cost_cache_round_trip_and_machine_keys(tmp_path):
    path = str(tmp_path / "costs.json")
    cache = CostCache(path)
    here = machine_key(backend="native", threads=2)
    cache.put(here, "layer-a", {"float_ms": 1.0, "quantized_ms": 0.5})
    cache.save()
    again = CostCache(path)
    assert again.get(here, "layer-a") == {"float_ms": 1.0, "quantized_ms": 0.5}
    assert again.get(machine_key(backend="native", threads=1), "layer-a") is None
    assert json.loads(open(path).read())["format"] == "graphopt-cost-cache"
    # a second process's entries survive a save from this one
    other = CostCache(path)
    other.put(here, "layer-b", {"float_ms": 2.0, "quantized_ms": 3.0})
    cache.put(here, "layer-c", {"float_ms": 2.0, "quantized_ms": 1.0})
    other.save()
    cache.save()
    merged = CostCache(path)
    assert {k for k in ("layer-a", "layer-b", "layer-c") if merged.get(here, k)} == \
        {"layer-a", "layer-b", "layer-c"}


@pytest.mark.parametrize("content", [b"{not json", b'{"format": "other"}', b"[" * 100000,
                                     b"\xff\xfe"])
def test_a_bad_cache_file_is_ignored_with_a_warning_and_replaced(tmp_path, content):
    path = tmp_path / "costs.json"
    path.write_bytes(content)
    with pytest.warns(CostCacheWarning, match="ignored"):
        cache = CostCache(str(path))
    assert len(cache) == 0
    cache.put("m", "k", {"float_ms": 1.0, "quantized_ms": 1.0})
    cache.save()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CostCacheWarning)
        assert CostCache(str(path)).get("m", "k") is not None


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path))
    assert default_path() == str(tmp_path / "costs.json")
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", "off")
    assert default_path() is None and CostCache().path is None
    monkeypatch.delenv("GRAPHOPT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_path() == str(tmp_path / "xdg" / "graphopt" / "costs.json")


def _dynamic_plan(graph):
    from graphopt.quant.api import _dynamic_plan

    return _dynamic_plan(graph, (), True, False)


def test_layers_are_measured_once_per_structure_and_then_cached(tmp_path, monkeypatch):
    graph, x = _mlp_graph((64, 96, 96, 96, 16))
    plan = _dynamic_plan(graph)
    measured = []
    real = layer_cost._measure

    def counting(f_region, q_region, *rest):
        measured.append(region_signature(f_region.graph))
        return real(f_region, q_region, *rest)

    monkeypatch.setattr(layer_cost, "_measure", counting)
    cache = CostCache(str(tmp_path / "costs.json"))
    costs = layer_cost.layer_costs(plan.records, plan.build, (x,), "native", 1, cache, rounds=3)
    assert set(costs) == {r.node for r in plan.records}
    assert len(measured) == 3  # 64->96, 96->96 (twice: measured once), 96->16
    assert sum(c.cached for c in costs.values()) == 1  # the second 96->96 layer
    assert all(c.float_ms > 0 and c.quantized_ms > 0 for c in costs.values())
    measured.clear()

    def no_float_run(*args):
        raise AssertionError("everything was cached: no reference run to capture inputs")

    monkeypatch.setattr(layer_cost, "_captured", no_float_run)
    again = layer_cost.layer_costs(plan.records, plan.build, (x,), "native", 1,
                                   CostCache(str(tmp_path / "costs.json")), rounds=3)
    assert measured == [] and all(c.cached for c in again.values())
    assert {k: (c.float_ms, c.quantized_ms) for k, c in again.items()} == \
        {k: (c.float_ms, c.quantized_ms) for k, c in costs.items()}


def test_a_layer_that_does_not_pay_alone_is_kept_float_when_the_graph_agrees(monkeypatch):
    graph, x = _mlp_graph()
    names = [n.name for n in graph.nodes if n.op in ("linear", "fused_linear")]
    slow = names[1]

    def fake_costs(records, *args, **kwargs):
        return {r.node: LayerCost(1.0, 2.0 if r.node == slow else 0.5) for r in records}

    def fake_timing(graphs, *args):  # per-layer choice fastest, everything slower
        return {label: [1.0 if label.startswith("per-layer") else 1.5] * 5 for label in graphs}

    monkeypatch.setattr(speed, "layer_costs", fake_costs)
    monkeypatch.setattr(speed, "_time_graphs", fake_timing)
    q, report = graphopt.quantize(graph, "dynamic", calibration=[(x,)], speed=True,
                                  report=True)
    kept = [r for r in report.layers if not r.quantized]
    assert [r.node for r in kept] == [slow]
    assert "alone: 2.0000 ms quantized vs 1.0000 ms float" in kept[0].reason
    assert set(report.speed) == {"all 3", "per-layer 2 of 3", "float"}
    assert sum(n.op == "qlinear_dynamic" for n in q.nodes) == 2
    assert "alone: float 1.0000 ms, int8 0.5000 ms" in str(report)


def test_the_whole_graph_check_overrules_the_per_layer_choice(monkeypatch):
    """Static int8 layers may only pay together (int8 passed between them): when every layer
    is slower alone but the all-int8 graph is fastest, the all-int8 graph wins."""
    graph, x = _mlp_graph()
    monkeypatch.setattr(speed, "layer_costs", lambda records, *a, **k: {
        r.node: LayerCost(1.0, 1.5) for r in records})
    monkeypatch.setattr(speed, "_time_graphs", lambda graphs, *a: {
        label: [0.5 if label.startswith("all") else 1.0] * 5 for label in graphs})
    _, report = graphopt.quantize(graph, "dynamic", calibration=[(x,)], speed=True,
                                  report=True)
    assert all(r.quantized for r in report.layers) and set(report.speed) == {"all 3", "float"}


def test_a_candidate_slower_than_float_in_most_rounds_never_wins():
    """The speed-aware choice: a quantized graph qualifies only when it is not slower than the
    float graph in the typical interleaved round; among those, ties (2%) go to the most
    quantized."""
    labels = ["all 4", "per-layer 2 of 4", "float"]
    float_ms = [1.0, 1.2, 0.9, 1.1, 1.0]
    # "all" has the lowest median but is slower than float in 3 of 5 rounds (drift)
    samples = {"all 4": [1.05, 1.25, 0.7, 0.75, 1.04], "per-layer 2 of 4": float_ms,
               "float": float_ms}
    assert speed.choose(labels, samples) == "per-layer 2 of 4"  # a tie: the more quantized
    samples["per-layer 2 of 4"] = [t * 1.01 for t in float_ms]
    assert speed.choose(labels, samples) == "float"
    samples["all 4"] = [t * 0.99 for t in float_ms]
    assert speed.choose(labels, samples) == "all 4"
