"""Prometheus metrics of a served model set (``GET /metrics``).

Per model: ``graphopt_requests_total{model, status}`` (status: ok, bad_request, not_found,
too_large, overloaded, error), ``graphopt_request_seconds{model}`` (a latency histogram: queue
wait + batch + model + encoding), ``graphopt_batch_rows{model}`` (rows per model call: how much
dynamic batching stacked), ``graphopt_queue_depth{model}``. With ``input_stats``, per model and
input the mean, standard deviation, min and max over the last ``window`` requests
(``graphopt_input_mean{model, input}``...), so that a shift in what clients send is visible on a
dashboard before it shows in accuracy.

Each app has its own registry (several apps in one process, as in tests, do not collide).
"""

from __future__ import annotations

import collections

import numpy as np

STATUS = {200: "ok", 400: "bad_request", 404: "not_found", 413: "too_large",
          503: "overloaded", 500: "error"}
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self, models: list[str], *, input_stats: bool = False, window: int = 100):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        self.registry = CollectorRegistry()
        self.content_type = CONTENT_TYPE_LATEST
        r = self.registry
        self._requests = Counter("graphopt_requests", "inference requests by outcome",
                                 ["model", "status"], registry=r)
        self._latency = Histogram("graphopt_request_seconds", "request latency (s)",
                                  ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self._batch = Histogram("graphopt_batch_rows", "rows per model call",
                                ["model"], buckets=BATCH_BUCKETS, registry=r)
        self._depth = Gauge("graphopt_queue_depth", "requests waiting", ["model"], registry=r)
        for model in models:  # every series exists from the start (dashboards see zeros)
            for status in STATUS.values():
                self._requests.labels(model, status)
            self._latency.labels(model)
            self._batch.labels(model)
            self._depth.labels(model).set(0)
        self.input_stats, self.window = input_stats, window
        self._windows: dict[tuple[str, str], collections.deque] = {}
        if input_stats:
            self._stats = {k: Gauge(f"graphopt_input_{k}", f"input {k} over the last "
                                    f"{window} requests", ["model", "input"], registry=r)
                           for k in ("mean", "std", "min", "max")}

    def request(self, model: str, status: int, seconds: float) -> None:
        self._requests.labels(model, STATUS.get(status, "error")).inc()
        if status == 200:
            self._latency.labels(model).observe(seconds)

    def batch_observer(self, model: str):
        def observe(rows: int, depth: int) -> None:
            self._batch.labels(model).observe(rows)
            self._depth.labels(model).set(depth)

        return observe

    def queue_depth(self, model: str, depth: int) -> None:
        self._depth.labels(model).set(depth)

    def inputs(self, model: str, specs: list[dict], arrays: list[np.ndarray]) -> None:
        """Fold one request's inputs into the window statistics (``input_stats`` only)."""
        if not self.input_stats:
            return
        for spec, a in zip(specs, arrays):
            if a.size == 0 or a.dtype == np.bool_:
                continue
            x = a.astype(np.float64, copy=False)
            window = self._windows.setdefault((model, spec["name"]),
                                              collections.deque(maxlen=self.window))
            window.append((x.size, float(x.sum()), float((x * x).sum()), float(x.min()),
                           float(x.max())))
            n = sum(w[0] for w in window)
            mean = sum(w[1] for w in window) / n
            var = max(sum(w[2] for w in window) / n - mean * mean, 0.0)
            labels = (model, spec["name"])
            self._stats["mean"].labels(*labels).set(mean)
            self._stats["std"].labels(*labels).set(var ** 0.5)
            self._stats["min"].labels(*labels).set(min(w[3] for w in window))
            self._stats["max"].labels(*labels).set(max(w[4] for w in window))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
