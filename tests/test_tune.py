"""``graphopt.tune`` / ``graphopt tune`` (issue #18, graphopt/autotune/): a real Optuna study on
SQLite over a trained digits CNN. What is checked: the float graph is always a trial, the chosen
point is feasible and is what its parameters re-apply to, a study resumes without repeating or
losing trials, a failing trial is recorded and the search goes on, trials from another machine
are not mixed in, the outputs (front, plot, model directory with lineage) are written, and a bad
space is refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import graphopt

optuna = pytest.importorskip("optuna")

from graphopt.autotune import TuneSpaceError  # noqa: E402
from graphopt.autotune import study as study_module  # noqa: E402

SPACE = {"prune": ["none"], "quantize": ["none", "dynamic", "static"], "per_token": [False],
         "error_budget": [1e-3, 1e-3], "backend": ["native"]}


@pytest.fixture(scope="module")
def digits(digits_cnn, digits_data):
    x_train, _, x_test, y_test = digits_data
    batch = torch.export.Dim("batch", min=1, max=4096)
    graph = graphopt.trace(digits_cnn, (x_test[:2],), dynamic_shapes=({0: batch},))
    data = [(x_train[i:i + 1],) for i in range(6)]

    def accuracy(g):
        return float((graphopt.run(g, x_test[:300]).argmax(1) == y_test[:300])
                     .float().mean()) * 100

    return graph, data, accuracy


def test_a_study_finds_a_feasible_point_and_writes_its_lineage(digits, tmp_path):
    graph, data, accuracy = digits
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = graphopt.tune(graph, data, metric=accuracy, max_accuracy_drop=1.0, trials=5,
                           storage=storage, study="digits", space=SPACE, seed=0,
                           output=str(tmp_path / "out"))
    assert len(result.trials) == 5 and not result.failed
    first = min(result.trials, key=lambda t: t["number"])
    assert first["params"] == {"prune": "none", "quantize": "none", "backend": "native"}
    assert result.chosen is not None and result.chosen["feasible"]
    assert result.baseline_metric - result.chosen["metric"] <= 1.0
    assert result.chosen["speedup"] == max(t["speedup"] for t in result.trials
                                           if t["feasible"])
    assert abs(accuracy(result.graph) - result.chosen["metric"]) < 1e-9  # re-applied exactly
    report = json.loads((tmp_path / "out" / "front.json").read_text())
    assert report["chosen"]["number"] == result.chosen["number"] and report["graph_sha256"]
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 1000
    manifest = json.loads((tmp_path / "out" / "model" / "manifest.json").read_text())
    assert manifest["figures"]["params"] == result.chosen["params"]
    assert manifest["figures"]["data_sha256"] == report["data_sha256"]
    loaded = graphopt.load(tmp_path / "out" / "model")
    x = data[0][0]
    assert torch.equal(graphopt.run(loaded, x), graphopt.run(result.graph, x))

    again = graphopt.tune(graph, data, metric=accuracy, max_accuracy_drop=1.0, trials=3,
                          storage=storage, study="digits", space=SPACE, seed=1)
    numbers = [t["number"] for t in again.trials]
    assert sorted(numbers) == list(range(8))  # resumed: 5 + 3, none lost or repeated
    other = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
    with pytest.raises(graphopt.GraphoptError, match="another model"):
        graphopt.tune(graphopt.trace(other, (torch.randn(1, 4),)), [(torch.randn(1, 4),)],
                      trials=1, storage=storage, study="digits", space=SPACE)


def test_a_failing_trial_is_recorded_and_the_search_goes_on(digits, monkeypatch):
    graph, data, _ = digits
    real = study_module.apply_params

    def flaky(base, params, *args, **kwargs):
        if params["quantize"] == "static":
            raise RuntimeError("planted failure")
        return real(base, params, *args, **kwargs)

    monkeypatch.setattr(study_module, "apply_params", flaky)
    space = {**SPACE, "quantize": ["static", "dynamic"]}
    result = graphopt.tune(graph, data, trials=6, space=space, seed=0)
    assert result.failed and all("planted failure" in f["error"] for f in result.failed)
    assert result.trials and all(t["params"]["quantize"] != "static" for t in result.trials)


def test_trials_from_another_machine_are_left_out(digits, monkeypatch, tmp_path):
    graph, data, _ = digits
    storage = f"sqlite:///{tmp_path / 's.db'}"
    graphopt.tune(graph, data, trials=2, storage=storage, space=SPACE)
    monkeypatch.setattr(study_module, "_machine", lambda threads: "another machine")
    result = graphopt.tune(graph, data, trials=1, storage=storage, space=SPACE)
    assert len(result.trials) == 1 and "another machine" in result.notes[0]


def test_a_bad_storage_is_a_clear_error(digits):
    graph, data, _ = digits
    for url in ("nosuchdb://x", "sqlite:////nonexistent/dir/study.db"):
        with pytest.raises(graphopt.GraphoptError, match="cannot open the study storage"):
            graphopt.tune(graph, data, trials=1, storage=url, space=SPACE)


def test_a_bad_space_is_refused_by_name(digits):
    graph, data, _ = digits
    for space, message in (({"quantise": ["none"]}, "unknown search space key 'quantise'"),
                           ({"quantize": ["int3"]}, "choose from"),
                           ({"prune_flops": [0.5, 1.5]}, "prune_flops")):
        with pytest.raises(TuneSpaceError, match=message):
            graphopt.tune(graph, data, trials=1, space=space)


def test_cli_tune(tmp_path, capsys):
    from graphopt.cli import main

    calib = tmp_path / "c.npz"
    np.savez(calib, np.random.default_rng(0).standard_normal((3, 1, 64)).astype(np.float32))
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"prune": ["none"], "quantize": ["none", "dynamic"],
                                 "backend": ["native"]}))
    out = tmp_path / "tuned"
    assert main(["tune", "zoo:mlp?width=64&depth=2", "--calibration", str(calib), "--trials",
                 "3", "--space", str(space), "--max-accuracy-drop", "0.01", "-o", str(out),
                 "-q"]) == 0
    printed = capsys.readouterr().out
    assert "tune: 3 trials" in printed and (out / "model" / "manifest.json").exists()


WORKER = """
import sys, time, pathlib, torch, graphopt
storage, marker, study = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 8)).eval()
graph = graphopt.trace(model, (torch.randn(1, 8),))
calls = []
def metric(g):
    calls.append(1)
    if len(calls) > 1:          # (the first call scores the float baseline)
        marker.write_text("in a trial")
        time.sleep(600)         # killed here
    return 1.0
graphopt.tune(graph, [(torch.ones(1, 8),)], metric=metric, trials=1, storage=storage,
              study=study, space={"prune": ["none"], "quantize": ["none"], "backend": ["native"]},
              heartbeat_s=1, grace_s=3)
"""


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server (tests/postgres_server.py) for this module's tests."""
    pytest.importorskip("psycopg2")
    from postgres_server import binaries, postgres_server

    if binaries() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path):
    """Each storage kind the tests run against: a SQLite file, a real PostgreSQL server (one
    database per test: the study name is unique)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgres_url")


def test_a_worker_killed_mid_trial_loses_nothing(storage, request):
    import os
    import signal
    import subprocess
    import sys
    import time

    tmp_path = request.getfixturevalue("tmp_path")
    study = f"k{abs(hash(request.node.name)) % 10**8}"
    script, marker = tmp_path / "worker.py", tmp_path / "marker"
    script.write_text(WORKER)
    proc = subprocess.Popen([sys.executable, str(script), storage, str(marker), study])
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert marker.exists(), "the worker never reached its trial"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(4)  # past the 3 s grace period: the trial's heartbeat is stale
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8)).eval()
    graph = graphopt.trace(model, (torch.randn(1, 8),))
    result = graphopt.tune(graph, [(torch.ones(1, 8),)], metric=lambda g: 1.0,
                           total_trials=2, storage=storage, study=study,
                           space={"prune": ["none"], "quantize": ["none"],
                                  "backend": ["native"]}, heartbeat_s=1, grace_s=3)
    assert [f["number"] for f in result.failed] == [0]  # the killed trial: recorded, not lost
    assert "stopped beating" in result.failed[0]["error"]
    numbers = [t["number"] for t in result.trials]
    assert len(numbers) == 2 and len(set(numbers)) == 2 and 0 not in numbers
    st = optuna.load_study(study_name=study, storage=storage)
    retried = [t for t in st.trials
               if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == 0]
    assert len(retried) == 1 and retried[0].state == optuna.trial.TrialState.COMPLETE
    assert retried[0].user_attrs["params"] == result.failed[0]["params"]


def test_cli_two_workers_share_one_study(storage, request, capsys):
    from graphopt.cli import main

    tmp_path = request.getfixturevalue("tmp_path")
    calib = tmp_path / "c.npz"
    np.savez(calib, np.random.default_rng(0).standard_normal((2, 1, 64)).astype(np.float32))
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"prune": ["none"], "quantize": ["dynamic", "auto", "static"],
                                 "backend": ["native"]}))
    out = tmp_path / "tuned"
    study = f"w{abs(hash(request.node.name)) % 10**8}"
    assert main(["tune", "zoo:mlp?width=64&depth=2", "--calibration", str(calib), "--trials",
                 "6", "--workers", "2", "--space", str(space), "-o", str(out), "-q",
                 "--storage", storage, "--study", study]) == 0
    report = json.loads((out / "front.json").read_text())
    numbers = [t["number"] for t in report["trials"]]
    assert len(numbers) >= 6 and len(set(numbers)) == len(numbers)
    assert len({t["worker"] for t in report["trials"]}) == 2, report["trials"]


def test_drift_exits_nonzero_when_accuracy_drops(digits, tmp_path, capsys):
    from graphopt.cli import main

    graph, _, accuracy = digits
    _, _, x_test, y_test = pytest.importorskip("graphopt.models_digits").load_digits_split()
    graphopt.save(graphopt.optimize(graph), tmp_path / "model",
                  figures={"accuracy": accuracy(graph)})
    x = x_test[:200].numpy()[:, None]  # 200 items of one image each
    good = tmp_path / "good.npz"
    np.savez(good, arr_0=x, labels=y_test[:200].numpy())
    assert main(["drift", str(tmp_path / "model"), "--data", str(good), "--max-drop",
                 "2"]) == 0
    assert ": ok" in capsys.readouterr().out
    shifted = tmp_path / "shifted.npz"  # the same images, inverted: a distribution shift
    np.savez(shifted, arr_0=x.max() - x, labels=y_test[:200].numpy())
    assert main(["drift", str(tmp_path / "model"), "--data", str(shifted)]) == 1
    assert "DRIFTED" in capsys.readouterr().out
    np.savez(shifted, arr_0=x)
    assert main(["drift", str(tmp_path / "model"), "--data", str(shifted)]) == 2
    assert "no 'labels'" in capsys.readouterr().err
