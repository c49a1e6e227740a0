"""``graphopt serve``: model directories served over HTTP with the KServe v2 / Triton protocol.

``create_app(models)`` builds a FastAPI (ASGI) app; ``graphopt serve DIR [DIR...]`` runs it
with uvicorn. Endpoints (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/):

* ``GET /v2/health/live``, ``GET /v2/health/ready``: the process is up / every model loaded;
* ``GET /v2``: server metadata; ``GET /v2/models/{name}``: the model's inputs and outputs
  (dynamic dims as -1); ``GET /v2/models/{name}/ready``;
* ``POST /v2/models/{name}/infer``: JSON tensors in, JSON tensors out; concurrent requests are
  stacked by the model's ``Batcher`` (graphopt/serve/batching.py);
* ``GET /metrics``: Prometheus text (graphopt/serve/metrics.py).

Errors never take the server down: a malformed or mistyped request is a 400 naming what is
wrong, an unknown model 404, a body over ``max_body_bytes`` 413, a full queue 503 (back off and
retry), a failure inside the model 500; each is counted in the metrics. Shutdown (SIGTERM to
uvicorn) stops accepting, finishes the requests in flight and drains every queue.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request  # (module level: FastAPI resolves handler annotations here)
from fastapi.responses import JSONResponse, PlainTextResponse

from graphopt.errors import GraphoptError
from graphopt.serve.batching import Batcher, QueueFull
from graphopt.serve.metrics import Metrics
from graphopt.serve.protocol import BadRequest, encode_response, parse_request, tensor_metadata

MAX_BODY_BYTES = 64 << 20


@dataclass
class ServedModel:
    """One model: its name, signature (manifest entries), the compiled callable, whether
    requests can be stacked along the first dim, and where it came from."""

    name: str
    inputs: list[dict]
    outputs: list[dict]
    run: Any  # run(list[np.ndarray]) -> list[np.ndarray]
    batchable: bool
    platform: str


def load_model(directory: str | os.PathLike, *, backend: str = "native",
               threads: int | None = None, name: str | None = None) -> ServedModel:
    """A model directory (``graphopt.save``) compiled for ``backend``."""
    import torch.utils._pytree as pytree

    from graphopt.artifact import load_model_dir, signature
    from graphopt.compile import compile as compile_graph

    graph = load_model_dir(directory)
    module = compile_graph(graph, backend=backend, threads=threads)
    inputs, outputs = signature(graph.inputs), signature(graph.outputs)

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.no_grad():
            result = module(*[torch.from_numpy(a) for a in arrays])
        return [np.asarray(t) for t in pytree.tree_leaves(result)]

    folder = os.path.basename(os.path.normpath(os.fspath(directory)))
    return ServedModel(name or folder, inputs, outputs, run, _batchable(inputs, outputs),
                       f"graphopt_{backend}")


def _batchable(inputs: list[dict], outputs: list[dict]) -> bool:
    """Whether every input and output has the same dynamic first dim (the batch)."""
    firsts = {e["shape"][0] if e["shape"] else None for e in inputs + outputs}
    return len(firsts) == 1 and isinstance(next(iter(firsts)), str)


def create_app(models: list[ServedModel], *, max_batch: int = 8, max_delay_ms: float = 2.0,
               max_queue: int = 256, max_body_bytes: int = MAX_BODY_BYTES,
               input_stats: bool = False):
    """The ASGI app serving ``models`` (see the module doc)."""
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise GraphoptError(f"two served models share a name: {names}; rename a directory")
    metrics = Metrics(names, input_stats=input_stats)
    by_name = {m.name: m for m in models}
    batchers = {m.name: Batcher(m.run, batchable=m.batchable, max_batch=max_batch,
                                max_delay_s=max_delay_ms / 1e3, max_queue=max_queue,
                                observe=metrics.batch_observer(m.name)) for m in models}
    state = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for batcher in batchers.values():
            batcher.start()
        state["ready"] = True
        yield
        state["ready"] = False
        for batcher in batchers.values():  # graceful: what is queued still runs
            await batcher.stop()

    app = FastAPI(title="graphopt", lifespan=lifespan)
    _add_routes(app, by_name, batchers, metrics, state, max_body_bytes)
    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _add_routes(app, by_name: dict[str, ServedModel], batchers: dict[str, Batcher],
                metrics: Metrics, state: dict, max_body_bytes: int) -> None:
    """The v2 protocol's endpoints and /metrics."""
    names, error = list(by_name), _error

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": True} if state["ready"] else error(503, "loading")

    @app.get("/v2")
    async def server_metadata():
        from graphopt.version import __version__

        return {"name": "graphopt", "version": __version__, "extensions": []}

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str):
        if name not in by_name:
            return error(404, f"no model {name!r}; served: {names}")
        m = by_name[name]
        return {"name": name, "versions": ["1"], "platform": m.platform,
                "inputs": tensor_metadata(m.inputs), "outputs": tensor_metadata(m.outputs)}

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str):
        if name not in by_name:
            return error(404, f"no model {name!r}; served: {names}")
        return {"name": name, "ready": state["ready"]}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request):
        if name not in by_name:
            return error(404, f"no model {name!r}; served: {names}")
        started = time.perf_counter()
        status, response = await _infer(by_name[name], batchers[name], request,
                                         max_body_bytes, metrics)
        metrics.request(name, status, time.perf_counter() - started)
        return response if status == 200 else error(status, response)

    @app.get("/metrics")
    async def prometheus():
        for name, batcher in batchers.items():
            metrics.queue_depth(name, batcher.depth)
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)


async def _infer(model: ServedModel, batcher: Batcher, request, max_body_bytes: int,
                 metrics: Metrics) -> tuple[int, Any]:
    """(HTTP status, response dict or error message) of one inference request."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        return 413, f"body of {declared} bytes, over the {max_body_bytes}-byte limit"
    body = await request.body()
    if len(body) > max_body_bytes:
        return 413, f"body of {len(body)} bytes, over the {max_body_bytes}-byte limit"
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return 400, f"the body is not JSON ({str(exc)[:200]})"
    try:
        arrays, wanted, request_id = parse_request(parsed, model.inputs)
        if wanted is not None:
            encode_response(model.name, None, [], model.outputs, wanted)  # names checked first
        outputs = await batcher.submit(arrays)
        metrics.inputs(model.name, model.inputs, arrays)  # (what was served, not refused)
        return 200, encode_response(model.name, request_id, outputs, model.outputs, wanted)
    except BadRequest as exc:
        return 400, str(exc)
    except QueueFull as exc:
        return 503, f"model {model.name!r} is overloaded ({exc}): retry later"
    except Exception as exc:  # a failure inside the model: this request fails, not the server
        return 500, f"model {model.name!r} failed: {type(exc).__name__}: {str(exc)[:500]}"
