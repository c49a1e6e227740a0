"""The walkthrough in examples/ runs from a clean checkout (a --quick smoke run: fewer epochs,
the same stages), and its output has the structure the docs describe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_compress_vgg_walkthrough_runs_every_stage(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "vgg.json"
    plot = tmp_path / "vgg.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "compress_vgg.py"), "--quick",
                           "--json", str(out), "--plot", str(plot)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "precision" in done.stdout and "recall" in done.stdout  # classification_report
    result = json.loads(out.read_text())
    stages = result["stages"]
    assert [s["stage"].split(" ")[0] for s in stages] == ["float32", "structured", "+", "+",
                                                          "+"]
    # structured pruning halves the FLOPs; every stage after it shrinks the file
    assert stages[1]["flops"] <= 0.55 * stages[0]["flops"]
    sizes = [s["file_bytes"] for s in stages]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] * 10 < sizes[0]
    assert all(s["native_ms"] > 0 and 0 <= s["accuracy"] <= 100 for s in stages)
    assert plot.stat().st_size > 10_000
