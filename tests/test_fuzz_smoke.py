"""A short, deterministic run of every fuzz harness (fuzz/fuzz_*.py) over its committed seeds.

The long coverage-guided campaigns are ``make fuzz`` (atheris); this keeps every harness working
and catches regressions on the seeds and a few thousand mutations of them in ``make test``.
"""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "fuzz"))

import run as fuzz_run  # noqa: E402  (fuzz/run.py)

BUDGET = {"parser": 3000, "onnx": 300, "artifact": 200, "bundle": 300, "gcm": 300,
          "modeldir": 300, "decoderdir": 150}


@pytest.mark.parametrize("target", fuzz_run.TARGETS)
def test_harness_survives_its_seeds_and_mutations(target):
    assert os.path.exists(os.path.join(ROOT, "fuzz", f"fuzz_{target}.py")), \
        f"fuzz/run.py lists {target} but fuzz/fuzz_{target}.py is missing"
    harness = fuzz_run.load_harness(target)
    corpus_dir = os.path.join(ROOT, harness.SEED_DIR)
    assert os.path.isdir(corpus_dir) and os.listdir(corpus_dir), \
        f"{harness.SEED_DIR} holds no seeds: run `python fuzz/run.py {target} --write-seeds`"
    corpus = fuzz_run.seed_inputs(harness, target)
    summary = fuzz_run.run_loop(harness, target, corpus, runs=BUDGET[target], seconds=None,
                                seed=1, hang_s=10.0, progress=False)
    assert summary["executions"] == BUDGET[target]
    assert summary["findings"] == 0 and summary["slow"] == 0, summary


def test_mutator_is_deterministic():
    a = fuzz_run.Mutator([b"graph main() {\n  return\n}"], seed=7)
    b = fuzz_run.Mutator([b"graph main() {\n  return\n}"], seed=7)
    assert [a.next() for _ in range(50)] == [b.next() for _ in range(50)]


def test_a_raw_exception_is_a_finding(tmp_path, monkeypatch):
    """The loop reports an escape that is not a GraphoptError (the instrument can fail)."""

    class Broken:
        @staticmethod
        def test_one_input(data: bytes) -> None:
            if b"x" in data:
                raise ZeroDivisionError("planted")

    monkeypatch.setattr(fuzz_run, "ROOT", str(tmp_path))
    summary = fuzz_run.run_loop(Broken, "planted", [b"abc", b"xyz"], runs=20, seconds=None,
                                seed=1, hang_s=10.0, progress=False)
    assert summary["findings"] >= 1
    saved = os.path.join(tmp_path, summary["finding_files"][0])
    assert open(saved + ".txt").read().strip().endswith("ZeroDivisionError: planted")
