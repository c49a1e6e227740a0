"""``graphopt serve`` (issue #19): the KServe v2 app over model directories
(graphopt/serve/), driven in process through httpx's ASGI transport (with the app's lifespan)
and once as a real uvicorn server in a subprocess. What is checked: answers equal
``graphopt.run``, concurrent requests are stacked and still get their own rows, every bad request
is a 4xx naming the problem, overload is a 503, a failing model a 500, and the server keeps
serving after all of them; the metrics count what happened."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch.export import Dim

import graphopt

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from graphopt.serve import ServedModel, create_app, load_model  # noqa: E402


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 4)).eval()
    x = torch.randn(2, 16)
    graph = graphopt.optimize(graphopt.trace(model, (x,), dynamic_shapes=({0: Dim("batch")},)))
    folder = tmp_path_factory.mktemp("served") / "mlp"
    graphopt.save(graph, folder)
    return folder, graph


def _request(x: np.ndarray, name: str, **extra) -> dict:
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}], **extra}


async def _with_client(app, fn):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await fn(client)


def _metric(text: str, name: str, **labels) -> float:
    """The value of series ``name{labels}`` in Prometheus text (labels in any order)."""
    for match in re.finditer(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.M):
        if dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == labels:
            return float(match.group(2))
    raise AssertionError(f"{name}{labels} not in metrics")


def test_infer_answers_and_stacks_concurrent_requests(mlp_dir):
    folder, graph = mlp_dir
    model = load_model(folder)
    assert model.batchable and model.name == "mlp"
    app = create_app([model], max_batch=8, max_delay_ms=50)
    name = graph.inputs[0].name
    xs = [np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32)
          for i in range(16)]

    async def scenario(client):
        meta = (await client.get("/v2/models/mlp")).json()
        answers = await asyncio.gather(*[
            client.post("/v2/models/mlp/infer", json=_request(x, name, id=f"r{i}"))
            for i, x in enumerate(xs)])
        metrics = (await client.get("/metrics")).text
        ready = await client.get("/v2/health/ready")
        return meta, answers, metrics, ready

    meta, answers, metrics, ready = asyncio.run(_with_client(app, scenario))
    assert meta["inputs"] == [{"name": name, "datatype": "FP32", "shape": [-1, 16]}]
    assert ready.status_code == 200
    for i, (x, answer) in enumerate(zip(xs, answers)):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["id"] == f"r{i}" and body["outputs"][0]["shape"] == [1, 4]
        got = np.asarray(body["outputs"][0]["data"], np.float32).reshape(1, 4)
        np.testing.assert_allclose(got, graphopt.run(graph, torch.from_numpy(x)).numpy(),
                                   rtol=1e-5, atol=1e-6)
    calls = _metric(metrics, "graphopt_batch_rows_count", model="mlp")
    assert _metric(metrics, "graphopt_batch_rows_sum", model="mlp") == 16
    assert calls < 16  # stacked: fewer model calls than requests
    assert _metric(metrics, "graphopt_requests_total", model="mlp", status="ok") == 16


def test_bad_requests_are_4xx_and_the_server_keeps_serving(mlp_dir):
    folder, graph = mlp_dir
    app = create_app([load_model(folder)], max_body_bytes=4000)
    name = graph.inputs[0].name
    good = _request(np.zeros((1, 16), np.float32), name)
    cases = [
        (b"{not json", 400, "not JSON"),
        (json.dumps({"inputs": []}).encode(), 400, "missing"),
        (json.dumps({"inputs": [{**good["inputs"][0], "datatype": "INT64"}]}).encode(), 400,
         "datatype"),
        (json.dumps({"inputs": [{**good["inputs"][0], "shape": [1, 15]}]}).encode(), 400,
         "dim 1 is 15"),
        (json.dumps({"inputs": [{**good["inputs"][0], "data": [1.0] * 3}]}).encode(), 400,
         "3 values"),
        (json.dumps({"inputs": [{**good["inputs"][0], "data": ["x"] * 16}]}).encode(), 400,
         "non-numbers"),
        (json.dumps({"inputs": [{**good["inputs"][0], "shape": [-1, 16]}]}).encode(), 400,
         "non-negative"),
        (json.dumps({**good, "outputs": [{"name": "nope"}]}).encode(), 400, "unknown"),
        (json.dumps(_request(np.zeros((100, 16), np.float32), name)).encode(), 413, "limit"),
        (b"[" * 3000, 400, "not JSON"),
    ]

    async def scenario(client):
        out = [await client.post("/v2/models/mlp/infer", content=body)
               for body, *_ in cases]
        out.append(await client.post("/v2/models/nope/infer", json=good))
        out.append(await client.post("/v2/models/mlp/infer", json=good))
        return out, (await client.get("/metrics")).text

    answers, metrics = asyncio.run(_with_client(app, scenario))
    for (body, status, text), answer in zip(cases, answers):
        assert answer.status_code == status, (body[:80], answer.text)
        assert text in answer.json()["error"], answer.json()
    assert answers[-2].status_code == 404 and "served: ['mlp']" in answers[-2].json()["error"]
    assert answers[-1].status_code == 200  # still serving
    assert _metric(metrics, "graphopt_requests_total", model="mlp", status="bad_request") == 9
    assert _metric(metrics, "graphopt_requests_total", model="mlp", status="too_large") == 1


def _slow_model(seconds: float, fail: bool = False) -> ServedModel:
    spec = [{"name": "x", "dtype": "f32", "shape": ["s0", 2]}]

    def run(arrays):
        time.sleep(seconds)
        if fail:
            raise RuntimeError("planted failure")
        return [arrays[0] * 2]

    return ServedModel("slow", spec, [{"name": "y", "dtype": "f32", "shape": ["s0", 2]}], run,
                       True, "test")


def test_a_full_queue_answers_503_and_a_failing_model_500():
    app = create_app([_slow_model(0.05)], max_batch=1, max_delay_ms=0, max_queue=2)
    body = _request(np.ones((1, 2), np.float32), "x")

    async def scenario(client):
        answers = await asyncio.gather(*[client.post("/v2/models/slow/infer", json=body)
                                         for _ in range(8)])
        return answers, await client.post("/v2/models/slow/infer", json=body)

    answers, after = asyncio.run(_with_client(app, scenario))
    codes = sorted(a.status_code for a in answers)
    assert 503 in codes and 200 in codes, codes
    assert "overloaded" in next(a for a in answers if a.status_code == 503).json()["error"]
    assert after.status_code == 200 and after.json()["outputs"][0]["data"] == [2.0, 2.0]

    failing = create_app([_slow_model(0.0, fail=True)])
    answer = asyncio.run(_with_client(
        failing, lambda c: c.post("/v2/models/slow/infer", json=body)))
    assert answer.status_code == 500 and "planted failure" in answer.json()["error"]


def test_input_statistics_follow_what_clients_send(mlp_dir):
    folder, graph = mlp_dir
    app = create_app([load_model(folder)], input_stats=True)
    name = graph.inputs[0].name

    async def scenario(client):
        for v in (1.0, 3.0):
            await client.post("/v2/models/mlp/infer",
                              json=_request(np.full((1, 16), v, np.float32), name))
        return (await client.get("/metrics")).text

    metrics = asyncio.run(_with_client(app, scenario))
    assert _metric(metrics, "graphopt_input_mean", model="mlp", input=name) == 2.0
    assert _metric(metrics, "graphopt_input_max", model="mlp", input=name) == 3.0
    assert _metric(metrics, "graphopt_input_std", model="mlp", input=name) == 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_graphopt_serve_runs_a_real_server_and_shuts_down_gracefully(mlp_dir):
    folder, graph = mlp_dir
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "graphopt.cli", "serve", str(folder),
                             "--port", str(port), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        x = np.ones((3, 16), np.float32)
        answer = httpx.post(f"{base}/v2/models/mlp/infer",
                            json=_request(x, graph.inputs[0].name), timeout=10)
        assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [3, 4]
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal it captured (so the
    # exit status says SIGTERM, as for any process stopped that way)
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "serving mlp" in output and "Traceback" not in output


def test_shutdown_finishes_what_is_queued():
    """Graceful stop: requests already queued still get their answers."""
    from graphopt.serve.batching import Batcher

    calls = []

    def run(arrays):
        time.sleep(0.02)
        calls.append(len(arrays[0]))
        return [arrays[0] + 1]

    async def scenario():
        batcher = Batcher(run, batchable=True, max_batch=2, max_delay_s=0.0)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit([np.full((1, 2), i, np.float32)]))
                   for i in range(5)]
        await asyncio.sleep(0)  # all five are queued
        await batcher.stop()
        return [p.result() for p in pending]

    results = asyncio.run(scenario())
    assert [float(r[0][0, 0]) for r in results] == [1, 2, 3, 4, 5]
    assert sum(calls) == 5 and max(calls) <= 2
