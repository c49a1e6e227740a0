"""The ``graphopt`` CLI and MODEL spec resolution: every subcommand, and one-line errors.

Commands run in-process through ``main(argv)`` (capsys captures the output); one test runs the
real console entry point in a subprocess. Models are tiny (MLP of width 16, 2 layers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx
import pytest
import torch

from graphopt.cli import main
from graphopt.errors import UnsafeInputError
from graphopt.model_loader import (
    ModelSpecError,
    PickleLoadWarning,
    load_model,
    parse_value,
    split_spec,
)

MLP = "zoo:mlp?width=16&depth=2"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FACTORY = """
import torch

def make(width=8):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU())
    return model, torch.randn(2, width)

def not_a_model():
    return 42
"""


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("graphopt")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def factory_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("factory") / "tiny_factory.py"
    path.write_text(FACTORY)
    return str(path)


@pytest.fixture(scope="module")
def pt2_file(tmp_path_factory) -> str:
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh()).eval()
    path = str(tmp_path_factory.mktemp("pt2") / "tiny.pt2")
    torch.export.save(torch.export.export(model, (torch.randn(3, 8),)), path)
    return path


# ---------------------------------------------------------------------------------- help
def test_help_lists_commands_and_model_syntax(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for word in ("optimize", "bench", "show", "passes", "explain", "zoo:bert?layers=2", ".pt2"):
        assert word in out


@pytest.mark.parametrize("command", ["optimize", "bench", "show", "passes", "explain"])
def test_subcommand_help(capsys, command):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0 and f"graphopt {command}" in out


def test_no_command_prints_help(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 2 and "COMMAND" in out


# -------------------------------------------------------------------------------- passes
def test_passes_lists_docs_and_options(capsys):
    code, out, _ = run_cli(capsys, "passes")
    assert code == 0
    for name in ("canonicalize", "cse", "dce", "fold-constants", "named pipelines", "default"):
        assert name in out
    assert "max_growth: float = 2.0" in out


def test_passes_one_pass(capsys):
    code, out, _ = run_cli(capsys, "passes", "canonicalize")
    assert code == 0 and "signed_zeros" in out and "mul-one" in out


def test_passes_unknown(capsys):
    code, _, err = run_cli(capsys, "passes", "canonicalise")
    assert_one_line_error(code, err, "unknown pass 'canonicalise'", "canonicalize")


# ---------------------------------------------------------------------------------- show
def test_show_with_pipeline_and_dot(capsys, tmp_path):
    dot = tmp_path / "g.dot"
    code, out, _ = run_cli(capsys, "show", MLP, "--pipeline", "default", "--dot", str(dot))
    assert code == 0
    assert "pass report" in out and "op histogram" in out and "linear" in out
    assert "before" in out and "after" in out
    text = dot.read_text()
    assert text.startswith('digraph "MLP"') and "linear" in text and "->" in text


def test_show_constants_and_max_lines(capsys):
    code, out, _ = run_cli(capsys, "show", MLP, "--constants", "--max-lines", "3")
    assert code == 0 and "const %layers.0.weight" in out and "more lines" in out


@pytest.mark.skipif(__import__("shutil").which("dot") is not None, reason="dot is installed")
def test_show_svg_without_graphviz(capsys, tmp_path):
    code, _, err = run_cli(capsys, "show", MLP, "--svg", str(tmp_path / "g.svg"))
    assert_one_line_error(code, err, "dot")


# ------------------------------------------------------------------------------ optimize
def test_optimize_to_onnx(capsys, tmp_path):
    out_path = tmp_path / "m.onnx"
    code, out, _ = run_cli(capsys, "optimize", MLP, "-o", str(out_path), "--pipeline", "cleanup")
    assert code == 0 and "wrote" in out and "pipeline:" in out
    onnx.checker.check_model(onnx.load(str(out_path)))


def test_optimize_to_torch(capsys, tmp_path, factory_file):
    from graphopt.backends.torch_module import load_module

    out_path = tmp_path / "m.graphopt"
    code, _, err = run_cli(capsys, "optimize", f"{factory_file}:make?width=8", "-o",
                           str(out_path), "-q")
    assert code == 0 and "load_module" in err and "weights_only" not in err
    module = load_module(out_path)  # a pickle-free bundle
    loaded = load_model(f"{factory_file}:make?width=8")
    with torch.no_grad():
        torch.testing.assert_close(module(*loaded.args), loaded.module(*loaded.args))


def test_optimize_native_or_clear_error(capsys, tmp_path):
    from graphopt.compile import BACKENDS

    code, _, err = run_cli(capsys, "optimize", MLP, "-o", str(tmp_path / "m.bin"),
                           "--backend", "native", "-q")
    if "native" in BACKENDS and code == 0:
        return
    assert_one_line_error(code, err, "native", "not available")


def test_optimize_needs_known_extension(capsys, tmp_path):
    code, _, err = run_cli(capsys, "optimize", MLP, "-o", str(tmp_path / "m.xyz"))
    assert_one_line_error(code, err, "--backend")


# --------------------------------------------------------------------------------- bench
def test_bench_writes_json_markdown_plot(capsys, tmp_path):
    paths = {k: tmp_path / f"r.{k}" for k in ("json", "md", "png")}
    code, out, err = run_cli(
        capsys, "bench", MLP, "--backends", "eager,onnxruntime,graphopt-torch,graphopt-native",
        "--rounds", "2", "--warmup", "1", "--threads", "1", "--no-progress",
        "--pipeline", "cleanup", "--json", str(paths["json"]), "--markdown", str(paths["md"]),
        "--plot", str(paths["png"]),
        "--per-pass", "graphopt-torch")
    assert code == 0, err
    assert "p50 ms" in out and "graphopt-torch" in out and "per-pass attribution" in out
    data = json.loads(paths["json"].read_text())
    assert data["config"]["threads"] == 1
    assert [r["backend"] for r in data["results"]] == ["eager", "onnxruntime", "graphopt-torch",
                                                        "graphopt-native"]
    assert data["per_pass"]["backend"] == "graphopt-torch"
    assert data["machine"]["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    assert paths["md"].read_text().startswith("## mlp")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_bench_pt2_and_backend_option(capsys, pt2_file):
    code, out, err = run_cli(capsys, "bench", pt2_file, "--backends", "eager,graphopt-torch",
                             "--rounds", "2", "--warmup", "0", "--no-progress",
                             "--backend-option", "eager.unused=1", "--trust-pt2")
    assert code == 0 and "tiny" in out and "--trust-pt2" in err


def test_bench_bad_backend_option(capsys):
    code, _, err = run_cli(capsys, "bench", MLP, "--backends", "eager",
                           "--backend-option", "torch-compile.mode=x")
    assert_one_line_error(code, err, "not in --backends")


# ------------------------------------------------------------------------------- explain
def test_explain_rule(capsys):
    code, out, _ = run_cli(capsys, "explain", MLP, "--rule", "mul-one")
    assert code == 0 and "rule mul-one" in out and "no node" in out


def test_explain_pass_rules(capsys):
    code, out, _ = run_cli(capsys, "explain", "zoo:tensorops", "--rule", "canonicalize",
                           "--limit", "1")
    assert code == 0 and "rule identity-reshape" in out and "matched" in out


# ---------------------------------------------------------------------------- bad input
def test_bad_inputs_give_one_line(capsys, tmp_path, factory_file):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf \x00\xff\x13")
    cases = [
        (["show", str(tmp_path / "missing.onnx")], "no such file"),
        (["bench", str(tmp_path / "missing.pt2")], "no such file"),
        (["optimize", MLP, "-o", str(tmp_path / "m.pt")], ".graphopt"),
        (["show", str(corrupt)], "not a valid ONNX model"),
        (["show", MLP, "--pipeline", "canonicalize,no-such-pass"], "unknown pass"),
        (["optimize", MLP, "-o", str(tmp_path / "x.onnx"), "--pipeline", "fixpoint("], ""),
        (["bench", MLP, "--backends", "eager,warp-drive"], "unknown backend 'warp-drive'"),
        (["show", "zoo:no-such-model"], "unknown zoo model"),
        (["show", "zoo:mlp?depth"], "expected key=value"),
        (["show", "zoo:mlp?no_such_option=3"], "rejects options"),
        (["show", "no_such_package.models:make"], "cannot import module"),
        (["show", "graphopt.zoo:no_such_function"], "has no attribute"),
        (["show", f"{factory_file}:not_a_model"], "must return (model, example_inputs)"),
        (["show", "just-a-word"], "cannot interpret MODEL"),
        (["explain", MLP, "--rule", "no-such-rule"], "unknown rule"),
        (["bench", MLP, "--per-pass", "eager"], "needs a graphopt backend"),
        (["bench", MLP, "--rounds", "zero"], "invalid int value"),
        (["show"], "required: MODEL"),
        (["frobnicate"], "invalid choice"),
    ]
    for argv, fragment in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, (argv, code, err)
        assert_one_line_error(code, err, fragment)


def test_debug_shows_traceback(capsys, tmp_path):
    with pytest.raises(ModelSpecError):
        main(["show", str(tmp_path / "missing.onnx"), "--debug"])


def test_console_script_in_subprocess(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "graphopt.cli", "bench",
                           str(tmp_path / "missing.onnx")], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"graphopt: error: no such file: {tmp_path / 'missing.onnx'}"
    assert proc.stdout == ""


# ------------------------------------------------------------------------- MODEL specs
def test_spec_options_are_typed():
    base, options = split_spec("zoo:resnet50?depths=1,1,1,1&size=64&flag=true&x=0.5&s=abc")
    assert base == "zoo:resnet50"
    assert options == {"depths": (1, 1, 1, 1), "size": 64, "flag": True, "x": 0.5, "s": "abc"}
    assert parse_value("none") is None


def test_load_zoo_factory_and_pt2(factory_file, pt2_file):
    zoo_model = load_model(MLP)
    assert zoo_model.kind == "zoo" and zoo_model.options == {"width": 16, "depth": 2}
    assert zoo_model.args[0].shape == (1, 16)
    factory = load_model(f"{factory_file}:make?width=4")
    assert factory.kind == "factory" and factory.args[0].shape == (2, 4)
    module_factory = load_model("graphopt.zoo:mlp?width=8&depth=1")
    assert module_factory.module is not None and module_factory.args[0].shape == (1, 8)
    with pytest.raises(UnsafeInputError, match="--trust-pt2"):
        load_model(pt2_file)
    with pytest.warns(PickleLoadWarning):
        program = load_model(pt2_file, trust_pickle=True)
    assert program.kind == "pt2" and program.has_graph and program.args[0].shape == (3, 8)
    with torch.no_grad():
        torch.testing.assert_close(program.module(*program.args).shape, torch.Size([3, 4]))
