"""Config objects behind the keyword APIs (QuantizeConfig, PruneConfig, FinetuneConfig,
BenchmarkConfig) and the one ``Target`` passed through compile, benchmark and quantize."""

from __future__ import annotations

import ast
import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphopt
from graphopt.bench.config import BenchmarkConfig, BenchmarkConfigError
from graphopt.compile import ISAS, Target, host_isa
from graphopt.errors import (
    BackendOptionError,
    GraphoptError,
    PruneError,
    QuantizationError,
    UnknownBackendError,
)
from graphopt.prune.config import FinetuneConfig, PruneConfig
from graphopt.quant.config import QuantizeConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(2, 8)
    return model, x, graphopt.trace(model, (x,))


def _constants(graph):
    return {name: np.asarray(v.data) for name, v in graph.constants.items()}


def _same_constants(a, b) -> bool:
    ca, cb = _constants(a), _constants(b)
    return ca.keys() == cb.keys() and all(np.array_equal(ca[k], cb[k]) for k in ca)


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("make,error,message", [
    (lambda: QuantizeConfig(mode="int3"), QuantizationError, "unknown quantize mode 'int3'"),
    (lambda: QuantizeConfig(bits=3), QuantizationError, "bits=3 must be 4 or 8"),
    (lambda: QuantizeConfig(block_size=0), QuantizationError, "block_size=0 must be an int"),
    (lambda: QuantizeConfig(error_budget=-1.0), QuantizationError, "error_budget=-1.0"),
    (lambda: QuantizeConfig(sensitivity="global"), QuantizationError,
     "sensitivity='global' must be 'local' or 'end-to-end'"),
    (lambda: QuantizeConfig(observer="kl"), QuantizationError, "unknown observer 'kl'"),
    (lambda: QuantizeConfig(mode="fp16", per_token=True), QuantizationError,
     "per_token applies to mode='dynamic'"),
    (lambda: QuantizeConfig(target="native"), QuantizationError, "target='native'"),
    (lambda: QuantizeConfig(exclude=["fc*", 3]), QuantizationError,
     r"exclude must be glob strings, got \[3\]"),
    (lambda: PruneConfig(ratio=0.5, exclude=[None]), PruneError,
     r"exclude must be glob strings, got \[None\]"),
    (lambda: PruneConfig(), PruneError, "needs ratio= or flops="),
    (lambda: PruneConfig("magnitude"), PruneError, "needs sparsity="),
    (lambda: PruneConfig("nope", ratio=0.5), PruneError, "unknown pruning method 'nope'"),
    (lambda: PruneConfig(ratio=0.5, scope="everywhere"), PruneError,
     "scope='everywhere' must be 'layer' or 'global'"),
    (lambda: PruneConfig(ratio=1.5), PruneError, r"ratio=1.5 must be in \[0, 1\)"),
    (lambda: PruneConfig(ratio={"w*": 2}), PruneError, "ratio="),
    (lambda: PruneConfig(ratio=0.5, importance="l7"), PruneError, "importance='l7'"),
    (lambda: PruneConfig(ratio=0.5, round_to=0), PruneError, "round_to=0"),
    (lambda: FinetuneConfig(lr=-1.0), PruneError, "graphopt.finetune: lr=-1.0"),
    (lambda: FinetuneConfig(alpha=2.0), PruneError, r"alpha=2.0 must be in \[0, 1\]"),
    (lambda: FinetuneConfig(epochs=1.5), PruneError, "epochs=1.5"),
    (lambda: BenchmarkConfig(rounds=0), BenchmarkConfigError, "rounds=0 must be an int >= 1"),
    (lambda: BenchmarkConfig(warmup=-1), BenchmarkConfigError, "warmup=-1"),
    (lambda: BenchmarkConfig(backends=[]), BenchmarkConfigError, "at least one backend"),
    (lambda: BenchmarkConfig(backends=[3]), BenchmarkConfigError, "names or BenchBackend"),
    (lambda: BenchmarkConfig(threads=0), GraphoptError, "thread count must be >= 1"),
    (lambda: BenchmarkConfig(threads=2, target=Target(threads=1)), BackendOptionError,
     "threads=2 contradicts"),
    (lambda: Target("warp-drive"), UnknownBackendError, "unknown backend 'warp-drive'"),
    (lambda: Target(isa="sse9"), BackendOptionError, "isa='sse9' must be one of"),
    (lambda: Target(threads=0), GraphoptError, "thread count must be >= 1"),
])
def test_validation_names_field_and_allowed_values(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_configs_are_frozen_and_normalized():
    cfg = PruneConfig("structured", ratio=0.3, exclude="head.*")
    assert cfg.method == "channels" and cfg.exclude == ("head.*",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ratio = 0.5  # type: ignore[misc]
    assert cfg.replace(ratio=0.5).ratio == 0.5
    with pytest.raises(PruneError):
        cfg.replace(ratio=5.0)
    assert BenchmarkConfig(backends="eager, onnxruntime").backends == ("eager", "onnxruntime")


# ------------------------------------------------------------------------------ to_dict / str
@pytest.mark.parametrize("cfg", [
    QuantizeConfig(mode="static", observer="percentile", observer_options={"percentile": 99.9},
                   exclude=["fc.*"], error_budget=0.01),
    QuantizeConfig(mode="weight-only", bits=8, block_size=64),
    PruneConfig("magnitude", sparsity=0.8, scope="global", exclude=("a.*", "b.*")),
    PruneConfig(ratio={"layer.*": 0.25}, round_to=8),
    FinetuneConfig(epochs=3, lr=1e-2, feature_matching=["x", "y"], weight_decay=1e-4),
    BenchmarkConfig(backends=["eager"], rounds=5, threads=2, backend_options={"eager": {}}),
    Target("interpreter", "auto", 2),
])
def test_to_dict_round_trip(cfg):
    data = cfg.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert type(cfg)(**data) == cfg
    text = str(cfg)
    assert text.startswith(type(cfg).__name__ + "(")
    assert all(f"{name}=" in text for name in data)


def test_nested_target_round_trip():
    cfg = QuantizeConfig(target=Target("interpreter", threads=1))
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["target"] == {"backend": "interpreter", "isa": "auto", "threads": 1}
    assert QuantizeConfig(**{**data, "target": Target(**data["target"])}) == cfg


def test_callable_importance_prints_by_name():
    def my_scores(analysis, group):
        return None

    assert PruneConfig(ratio=0.5, importance=my_scores).to_dict()["importance"] == \
        "<test_callable_importance_prints_by_name.<locals>.my_scores>"


# ------------------------------------------------------------------ keyword API == config API
def test_quantize_config_api(small):
    _, x, graph = small
    kw_graph, kw_rep = graphopt.quantize(graph, "dynamic", exclude=["no-such-*"],
                                         calibration=[(x,)], error_budget=0.5, report=True)
    cfg = QuantizeConfig(exclude=("no-such-*",), error_budget=0.5)
    cfg_graph, cfg_rep = graphopt.quantize(graph, config=cfg, calibration=[(x,)], report=True)
    assert str(kw_graph) == str(cfg_graph) and _same_constants(kw_graph, cfg_graph)
    assert kw_rep.config == cfg_rep.config == cfg.to_dict()
    with pytest.raises(QuantizationError, match="not both .* bits"):
        graphopt.quantize(graph, config=cfg, bits=8)
    with pytest.raises(QuantizationError, match="config must be a QuantizeConfig"):
        graphopt.quantize(graph, config=PruneConfig(ratio=0.5))


def test_prune_config_api(small):
    _, _, graph = small
    kw_graph, kw_rep = graphopt.prune(graph, "magnitude", sparsity=0.5, report=True)
    cfg = PruneConfig("magnitude", sparsity=0.5)
    cfg_graph, cfg_rep = graphopt.prune(graph, config=cfg, report=True)
    assert _same_constants(kw_graph, cfg_graph)
    assert kw_rep.config == cfg_rep.config == cfg.to_dict()
    ch_graph, ch_rep = graphopt.prune(graph, config=PruneConfig(ratio=0.5), report=True)
    assert ch_rep.config["method"] == "channels" and len(ch_graph.constants) >= 1
    with pytest.raises(PruneError, match="not both .* sparsity"):
        graphopt.prune(graph, config=cfg, sparsity=0.9)


def test_finetune_config_api(small):
    _, x, graph = small
    data = [(x, torch.randn(2, 4)) for _ in range(3)]
    loss = nn.functional.mse_loss
    kw = graphopt.finetune(graph, data, loss=loss, epochs=2, lr=1e-2, progress=False)
    cfg = FinetuneConfig(epochs=2, lr=1e-2, progress=False)
    by_cfg = graphopt.finetune(graph, data, loss=loss, config=cfg)
    assert _same_constants(kw, by_cfg) and not _same_constants(kw, graph)
    with pytest.raises(PruneError, match="not both .* lr"):
        graphopt.finetune(graph, data, loss=loss, lr=0.5, config=cfg)
    with pytest.raises(GraphoptError, match="needs a loss, a teacher, or both"):
        graphopt.finetune(graph, data, config=cfg)


def test_benchmark_config_api(small):
    model, x, _ = small
    fast = dict(backends=["eager", "graphopt-torch"], rounds=2, warmup=0, progress=False,
                threads=1, pipeline="cleanup")
    kw = graphopt.benchmark(model, (x,), **fast)
    cfg = BenchmarkConfig(**fast)
    by_cfg = graphopt.benchmark(model, (x,), config=cfg)
    assert kw.config == by_cfg.config
    assert by_cfg.config["rounds"] == 2 and by_cfg.config["target"] is None
    assert set(cfg.to_dict()) <= set(by_cfg.config)
    with pytest.raises(BenchmarkConfigError, match="not both .* rounds"):
        graphopt.benchmark(model, (x,), config=cfg, rounds=9)


# ------------------------------------------------------------------------------ Target
def test_target_through_compile(small):
    _, x, graph = small
    expected = graphopt.run(graph, x)
    fn = graphopt.compile(graph, target=Target("interpreter", threads=1))
    torch.testing.assert_close(fn(x), expected)
    # The loose arguments may repeat the target, not contradict it.
    graphopt.compile(graph, backend="interpreter", threads=1,
                     target=Target("interpreter", threads=1))
    with pytest.raises(BackendOptionError, match="backend='native' contradicts"):
        graphopt.compile(graph, backend="native", target=Target("interpreter"))
    with pytest.raises(BackendOptionError, match="threads=2 contradicts"):
        graphopt.compile(graph, threads=2, target=Target("interpreter", threads=1))
    with pytest.raises(BackendOptionError, match="must be a graphopt.Target"):
        graphopt.compile(graph, target="interpreter")


def test_target_isa_is_checked_against_the_host(small):
    _, x, graph = small
    host = host_isa()
    assert host in ISAS and host != "auto"
    fn = graphopt.compile(graph, target=Target("interpreter", isa=host))
    torch.testing.assert_close(fn(x), graphopt.run(graph, x))
    other = next(isa for isa in ISAS if isa not in ("auto", host))
    with pytest.raises(BackendOptionError, match=f"target isa '{other}'"):
        graphopt.compile(graph, target=Target("interpreter", isa=other))


def test_target_host():
    target = Target.host()
    assert target.backend == "native" and target.isa == host_isa()
    assert target.threads == torch.get_num_threads()
    assert Target.from_args(backend="interpreter", threads=2) == Target("interpreter", "auto", 2)
    assert graphopt.Target is Target


def test_target_through_benchmark(small):
    model, x, _ = small
    before = torch.get_num_threads()
    report = graphopt.benchmark(model, (x,), backends=["eager"], rounds=2, warmup=0,
                                progress=False, target=Target("interpreter", threads=1))
    assert report.config["threads"] == 1
    assert report.config["target"] == {"backend": "interpreter", "isa": "auto", "threads": 1}
    assert torch.get_num_threads() == before


def test_target_through_quantize(small, monkeypatch):
    from graphopt.quant import fallback

    _, x, graph = small
    before = torch.get_num_threads()
    threads = 3 if before == 2 else 2
    seen = []
    fit = fallback.fit_error_budget

    def spy(*args, **kwargs):  # the measurements run with the target's threads
        seen.append(torch.get_num_threads())
        return fit(*args, **kwargs)

    monkeypatch.setattr(fallback, "fit_error_budget", spy)
    q, rep = graphopt.quantize(graph, calibration=[(x,)], error_budget=0.5, report=True,
                               target=Target("interpreter", threads=threads))
    assert seen == [threads] and torch.get_num_threads() == before
    assert rep.config["target"] == {"backend": "interpreter", "isa": "auto", "threads": threads}
    assert q.op_histogram().get("qlinear_dynamic", 0) >= 1
    other = next(isa for isa in ISAS if isa not in ("auto", host_isa()))
    with pytest.raises(BackendOptionError, match=f"target isa '{other}'"):
        graphopt.quantize(graph, target=Target("interpreter", isa=other))


def test_quantize_plans_for_the_target_backend(monkeypatch):
    """target.backend decides whether a plan can run, asked of the lowering registry: with
    the native qconv_dynamic lowering taken away (every op has one now), dynamic convs=True on
    native is refused by name; onnxruntime and the interpreter run it."""
    from graphopt.ops.registry import get_op

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 2)).eval()
    x = torch.randn(1, 3, 8, 8)
    graph = graphopt.optimize(graphopt.trace(model, (x,)), "default")
    native = graphopt.quantize(graph, convs=True, target=Target("native"))
    assert native.op_histogram().get("qconv_dynamic") == 1
    from graphopt.native import lower  # noqa: F401  (registers the native lowerings)

    monkeypatch.delitem(get_op("qconv_dynamic").lowerings, "native")
    with pytest.raises(QuantizationError) as info:
        graphopt.quantize(graph, convs=True, target=Target("native"))
    message = str(info.value)
    assert "qconv_dynamic" in message and "native backend has no kernel" in message
    assert "exclude=" in message and "target onnxruntime" in message
    conv = next(n.name for n in graph.nodes if "conv" in n.op)
    assert conv in message  # names the layer
    for backend in ("onnxruntime", "interpreter"):
        q = graphopt.quantize(graph, convs=True, target=Target(backend))
        assert q.op_histogram().get("qconv_dynamic") == 1
    # what the message offers: keep the conv float, or leave convs off (the default)
    for options in ({"convs": True, "exclude": (conv,)}, {}):
        q = graphopt.quantize(graph, target=Target("native"), **options)
        hist = q.op_histogram()
        assert "qconv_dynamic" not in hist and hist.get("qlinear_dynamic") == 1
    # the check asks the lowering registry: every op it makes has a native lowering
    from graphopt.quant.backend import backends_running, unsupported_nodes

    assert unsupported_nodes(q, set(), "native") == []
    assert backends_running({"qconv_dynamic"}) == ["onnxruntime"]
    assert unsupported_nodes(q, set(), "interpreter") == []


def test_cli_builds_one_target(capsys, tmp_path, monkeypatch):
    from graphopt.cli import main

    seen = []
    quantize = graphopt.quantize

    def spy(*args, **kwargs):
        seen.append(kwargs.get("target"))
        return quantize(*args, **kwargs)

    monkeypatch.setattr(graphopt, "quantize", spy)
    mlp = "zoo:mlp?width=16&depth=2"
    code = main(["quantize", mlp, "-o", str(tmp_path / "m.onnx"), "--threads", "1",
                 "--isa", "auto", "-q"])
    assert code == 0, capsys.readouterr().err
    assert seen == [Target("onnxruntime", "auto", 1)]
    code = main(["quantize", mlp, "-o", str(tmp_path / "m.graphopt"), "-q"])
    assert code == 0 and seen[-1] == Target("interpreter")
    from graphopt._extension import load_or_none

    if load_or_none() is not None:  # planned for, and saved as, a native plan
        code = main(["quantize", mlp, "-o", str(tmp_path / "m.plan"), "--backend", "native",
                     "--threads", "1", "-q"])
        assert code == 0 and seen[-1] == Target("native", "auto", 1)
        from graphopt.native.artifact import load

        assert load(str(tmp_path / "m.plan")).threads == 1
    # an ISA this process does not run fails before any work, for each command
    other = next(isa for isa in ISAS if isa not in ("auto", host_isa()))
    for argv in (["quantize", mlp, "-o", str(tmp_path / "x.onnx")],
                 ["optimize", mlp, "-o", str(tmp_path / "x.onnx")],
                 ["bench", mlp, "--backends", "eager", "--rounds", "1"]):
        capsys.readouterr()
        assert main([*argv, "--isa", other]) == 2
        assert f"target isa '{other}'" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


# -------------------------------------------------------------------- function size budget
ENTRY_MODULES = {
    "graphopt/quant/api.py": None,
    "graphopt/prune/__init__.py": None,
    "graphopt/bench/harness.py": None,
    "graphopt/compile.py": None,
    # Only the entry point and the helpers written for it (the rest of the file is the
    # training library's).
    "graphopt/prune/finetune.py": {"finetune", "_train", "__init__", "start", "split", "step",
                                   "_distill_terms", "trained_graph"},
}


def _code_lines(fn: ast.FunctionDef) -> int:
    """Lines of a function, signature included, docstring excluded."""
    total = fn.end_lineno - fn.lineno + 1
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
            and isinstance(first.value.value, str):
        total -= first.end_lineno - first.lineno + 1
    return total


@pytest.mark.parametrize("path", sorted(ENTRY_MODULES))
def test_entry_functions_fit_in_60_lines(path):
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    only = ENTRY_MODULES[path]
    long = {node.name: _code_lines(node) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and (only is None or node.name in only) and _code_lines(node) > 60}
    assert not long, f"{path}: functions over 60 lines (docstrings excluded): {long}"
