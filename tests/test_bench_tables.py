"""The benchmark tables in README.md / docs are rendered from committed JSON and checked.

``benchmarks/render_results.py`` fills ``<!-- results:NAME -->`` blocks from
``benchmarks/results/published/<NAME>.json``; ``check`` lists blocks that differ. The fixture
``tests/data/bench_results/models.json`` has two models (mlp, bert-b8-masked), three backends,
a failed graphopt-native on BERT and an onnxruntime ``setting`` on BERT only.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import pathlib
import shutil
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "bench_results" / "models.json"


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "render_results", ROOT / "benchmarks" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while the class is built
    spec.loader.exec_module(module)
    return module


rr = _load_script()

README = """# project

Some prose.

<!-- results:models -->
stale text, replaced on render
<!-- /results:models -->

Text after the block stays.
"""


@pytest.fixture
def repo(tmp_path: pathlib.Path) -> pathlib.Path:
    """A repository root with a README holding a models block and the fixture JSON published."""
    published = tmp_path / rr.PUBLISHED_DIR
    published.mkdir(parents=True)
    shutil.copy(FIXTURE, published / "models.json")
    (tmp_path / "README.md").write_text(README, encoding="utf-8")
    return tmp_path


def _readme(repo: pathlib.Path) -> str:
    return (repo / "README.md").read_text(encoding="utf-8")


def _publish(repo: pathlib.Path, data: dict) -> None:
    (repo / rr.PUBLISHED_DIR / "models.json").write_text(json.dumps(data), encoding="utf-8")


# ------------------------------------------------------------------------------ fixture repo
def test_render_fills_the_block(repo):
    assert rr.write(repo) == ["README.md"]
    text = _readme(repo)
    assert "stale text" not in text
    assert text.startswith("# project\n\nSome prose.\n\n<!-- results:models -->\n\n| model |")
    assert text.endswith("\n\n<!-- /results:models -->\n\nText after the block stays.\n")
    assert ("| model | eager | onnxruntime (torch.onnx.export) | graphopt → native |"
            in text)
    # p50 to 3 significant figures, speedup vs eager, the fastest per row in bold
    assert "| MLP 4×Linear(1024) | 0.523 | 0.678 (0.77×) | **0.488 (1.07×)** |" in text
    # the failed backend shows its status; the label comes from the name and input shapes
    assert "| BERT-base, seq 128, batch 8, masked | 1160 | **996 (1.16×)** | error |" in text


def test_caption_has_machine_versions_and_accuracy(repo):
    block = rr.render_blocks(repo)[("README.md", "models")]
    prose = " ".join(block.split())  # the caption is wrapped at 100 columns
    for expected in ("Intel Xeon Processor (Fixture) (avx/avx2/fma/avx512f)",
                     "torch 2.13.0+cpu", "onnxruntime 1.32.0", "2 threads",
                     "24–40 interleaved rounds", "run 2026-12-03", "load average ≤ 0.84",
                     "Max relative error vs eager", "graphopt → native 7.75e-08",
                     "no spinning (vs spinning 1010)",
                     "graphopt → native on BERT-base, seq 128, batch 8, masked: error"):
        assert expected in prose, expected
    assert "eager 0" not in prose  # the reference is not compared with itself


def test_render_is_deterministic(repo):
    assert rr.render_blocks(repo) == rr.render_blocks(repo)


def test_check_passes_after_render(repo):
    assert len(rr.check(repo)) == 1  # the stale block
    rr.write(repo)
    assert rr.check(repo) == []
    assert rr.write(repo) == []  # nothing left to change


def test_check_reports_an_edited_number(repo):
    rr.write(repo)
    readme = repo / "README.md"
    readme.write_text(_readme(repo).replace("0.678 (0.77×)", "0.600 (0.87×)"), encoding="utf-8")
    problems = rr.check(repo)
    assert len(problems) == 1
    assert problems[0].startswith("README.md: block 'models' differs from "
                                  "benchmarks/results/published/models.json")
    assert "-| MLP 4×Linear(1024) | 0.523 | 0.600 (0.87×)" in problems[0]
    assert "+| MLP 4×Linear(1024) | 0.523 | 0.678 (0.77×)" in problems[0]


def test_blocks_in_docs_are_rendered_too(repo):
    docs = repo / "docs" / "guide"
    docs.mkdir(parents=True)
    (docs / "speed.md").write_text("<!-- results:models -->\n<!-- /results:models -->\n",
                                   encoding="utf-8")
    blocks = rr.render_blocks(repo)
    assert set(blocks) == {("README.md", "models"), ("docs/guide/speed.md", "models")}
    assert blocks[("README.md", "models")] == blocks[("docs/guide/speed.md", "models")]


def test_missing_json_is_an_error_naming_the_file(repo):
    (repo / rr.PUBLISHED_DIR / "models.json").unlink()
    with pytest.raises(rr.MissingResultsError,
                       match=r"README.md:5: block 'models' needs "
                             r"benchmarks/results/published/models.json, which does not exist"):
        rr.check(repo)


def test_unknown_renderer_is_an_error(repo):
    (repo / "README.md").write_text(README.replace("results:models", "results:nosuch"),
                                    encoding="utf-8")
    with pytest.raises(rr.UnknownRendererError, match=r"block 'nosuch' has no renderer"):
        rr.check(repo)


@pytest.mark.parametrize("text, message", [
    ("<!-- results:models -->\n", "is never closed"),
    ("<!-- /results:models -->\n", "no block is open"),
    ("<!-- results:models -->\n<!-- results:models -->\n", "opens inside block"),
    ("<!-- results:models -->\n<!-- /results:other -->\n", "'models' is open"),
    ("<!-- results:models -->\n<!-- /results:models -->\n" * 2, "appears twice"),
])
def test_unbalanced_markers_are_errors(repo, text, message):
    (repo / "README.md").write_text(text, encoding="utf-8")
    with pytest.raises(rr.MarkerError, match=message):
        rr.render_blocks(repo)


def test_inline_marker_mentions_are_not_blocks(repo):
    (repo / "README.md").write_text("Use `<!-- results:models -->` markers.\n", encoding="utf-8")
    assert rr.render_blocks(repo) == {}


def test_wrong_schema_is_an_error_naming_the_file(repo):
    data = json.loads(FIXTURE.read_text())
    data["reports"][0]["schema"] = "graphopt-bench/0"
    _publish(repo, data)
    with pytest.raises(rr.ResultsFormatError, match=r"published/models.json: .*graphopt-bench/0"):
        rr.check(repo)


def test_results_without_settings_render(repo):
    data = json.loads(FIXTURE.read_text())
    for report in data["reports"]:
        for result in report["results"]:
            result.pop("setting", None)
            result.pop("settings_p50_ms", None)
    _publish(repo, data)
    block = rr.render_blocks(repo)[("README.md", "models")]
    assert "Settings" not in block
    assert "**996 (1.16×)**" in block


def test_wrong_outputs_are_marked_and_never_bold(repo):
    data = copy.deepcopy(json.loads(FIXTURE.read_text()))
    native = data["reports"][0]["results"][2]
    assert native["backend"] == "graphopt-native"
    native["max_rel_err"] = 2e-4  # above the 1e-4 bar
    _publish(repo, data)
    block = rr.render_blocks(repo)[("README.md", "models")]
    assert "| MLP 4×Linear(1024) | **0.523** | 0.678 (0.77×) | 0.488 (1.07×) † |" in block
    assert "† max relative error above 0.0001" in " ".join(block.split())


def test_command_line_exit_codes(repo, capsys):
    assert rr.main(["--check", "--root", str(repo)]) == 1
    assert rr.main(["--root", str(repo), "--no-plots"]) == 0
    assert rr.main(["--check", "--root", str(repo)]) == 0
    (repo / rr.PUBLISHED_DIR / "models.json").unlink()
    assert rr.main(["--check", "--root", str(repo)]) == 2
    assert "models.json, which does not exist" in capsys.readouterr().err


def test_plot_is_drawn_from_the_published_json(repo):
    pytest.importorskip("matplotlib")
    assert rr.render_plots(repo) == ["docs/img/bench_models.png"]
    assert (repo / "docs" / "img" / "bench_models.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_plot_without_published_json(tmp_path):
    assert rr.render_plots(tmp_path) == []


def test_report_from_dict_round_trips_the_fixture():
    for raw in json.loads(FIXTURE.read_text())["reports"]:
        report = rr.report_from_dict(raw)
        again = report.to_dict()
        assert again["model"] == raw["model"]
        for before, after in zip(raw["results"], again["results"]):
            assert after["status"] == before["status"]
            assert after["latency_ms"] == before["latency_ms"]
            assert after["max_rel_err"] == before["max_rel_err"]


@pytest.mark.parametrize("model, label", [
    ({"name": "mlp", "inputs": [{"shape": [1, 1024]}]}, "MLP 4×Linear(1024)"),
    ({"name": "mobilenetv2", "inputs": [{"shape": [1, 3, 224, 224]}]}, "MobileNetV2 224"),
    ({"name": "resnet50", "inputs": [{"shape": [4, 3, 160, 160]}]}, "ResNet-50 160, batch 4"),
    ({"name": "bert", "inputs": [{"shape": [1, 128]}]}, "BERT-base, seq 128"),
    ({"name": "gpt2", "inputs": [{"shape": [1, 64]}]}, "GPT-2 small, seq 64"),
    ({"name": "bert-b8-masked"}, "BERT-base, seq 128, batch 8, masked"),
    ({"name": "gpt2", "inputs": [{"shape": [2, 32]}, {"shape": [2, 32]}]},
     "GPT-2 small, seq 32, batch 2, masked"),
    ({"name": "convzoo", "inputs": [{"shape": [2, 3, 32, 32], "dtype": "float32"}]},
     "convzoo (float32[2, 3, 32, 32])"),
])
def test_model_labels(model, label):
    assert sys.modules["results_models"].model_label(model) == label


@pytest.mark.parametrize("value, text", [
    (0.5224, "0.522"), (29.46, "29.5"), (143.4, "143"), (1234.0, "1230"), (9.996, "10.0"),
    (0.012345, "0.0123"), (0.0, "0"),
])
def test_three_significant_figures(value, text):
    assert sys.modules["results_models"].sig3(value) == text


# ------------------------------------------------------------------------------ this repository
def test_repository_tables_match_the_committed_json():
    """README.md and docs/ show what the published JSON says (no blocks yet: trivially true).

    A marker naming a block no renderer produces, or a block whose JSON is not committed,
    raises here instead of passing.
    """
    assert all(name in rr.RENDERERS for _, name in rr.render_blocks(ROOT))
    assert rr.check(ROOT) == []


def _quant_data(**rows):
    machine = {"cpu_model": "CPU", "cpu_flags": ["avx2"], "versions": {}, "load_avg_1m": 0.1,
               "competing_cpus": 0.0}
    return {"schema": "graphopt-quant/2", "model": "bert", "created": "2026-12-05",
            "machine": machine, "config": {"threads": 2, "rounds": 40}, "rows": rows}


def test_quant_table_has_speed_and_accuracy_beside_it():
    quant = sys.modules["results_quant"]
    row = dict(iqr_ms=0.5, setting="spinning", settings_p50_ms={"spinning": 40.0,
                                                                "no spinning": 41.0},
               size_mb=110.0, token_cos_mean=0.9997, token_cos_min=0.9990)
    data = _quant_data(**{"ort quantize_dynamic": dict(row, p50_ms=40.0),
                          "native int8": dict(row, p50_ms=20.0, size_mb=None,
                                              setting="default", settings_p50_ms={})})
    text = quant.render_quant(data)
    assert "| graphopt int8 → native | 20.00 (0.50) | 2.00× | – | 0.9997 / 0.9990 |" in text
    assert "sentence cosine" not in text  # BERT has no sentence metric
    assert "`quantize_dynamic(per_channel)` spinning" in " ".join(text.split())
    with pytest.raises(rr.ResultsFormatError, match="graphopt-quant/2"):
        quant.render_quant({"schema": "graphopt-quant/1", "rows": {}})


def test_cnn_table_shows_worst_case_beside_the_mean():
    cnn = sys.modules["results_quant_cnn"]
    row = dict(iqr_ms=0.1, setting="spinning", size_mb=24.0)
    data = {"schema": "graphopt-quant-cnn/2", "model": "resnet50", "created": "2026-12-05",
            "machine": {"cpu_model": "CPU", "cpu_flags": [], "versions": {}}, "threads": 2,
            "rounds": 40, "observer": "minmax",
            "rows": {"ort fp32": dict(row, p50_ms=40.0, quality=1.0, quality_min=1.0),
                     "graphopt static int8 (QDQ)": dict(row, p50_ms=12.0, quality=0.66,
                                                        quality_min=0.65)}}
    text = cnn.render_cnn(data)
    assert "| graphopt static int8 (QDQ) | 12.000 (0.100) | 0.30× | 24.00 | 0.6600 / 0.6500 |" in text
    with pytest.raises(rr.ResultsFormatError, match="graphopt-quant-cnn/2"):
        cnn.render_cnn({"schema": "graphopt-quant/2"})
