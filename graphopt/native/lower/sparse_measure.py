"""The CSR-or-dense choice of a sparse linear, validated by measurement on this machine.

The cost model of ``sparse.py`` (a crossover density per row count) was measured on BERT-size
linears; on other shapes and CPUs its crossover moves (a 64 x 1024 layer at batch 1 and 80%
sparsity: CSR 5.0 us, dense 3.0 us on a 2-core Zen 4). With ``sparse="measure"`` each sparse
linear is timed both ways before it is planned: a one-node graph (the layer's shape, density,
epilogue and row count) compiled with ``sparse="always"`` and ``sparse="never"``, run
interleaved on random input, medians; CSR wins only by more than 5% (a tie within the noise of a
shared machine keeps the dense kernel). Results are filed in the per-machine
cost cache (``graphopt.costcache``), so each shape is measured once per machine, and
``sparse="auto"`` uses a cached measurement when one exists (the static model otherwise).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from graphopt.costcache import CostCache, default_path, machine_key
from graphopt.ir.dtypes import DType
from graphopt.ir.encodings import SparseWeight
from graphopt.ir.graph import Graph
from graphopt.ir.types import TensorType
from graphopt.timing import calibrate, run_interleaved

ROUNDS = 15
DENSITY_STEP = 0.02  # measurements are shared between densities this close
MARGIN = 0.05  # CSR must be this much faster: a tie within noise keeps the dense kernel


def measured_choice(record: SparseWeight, rows: int, activation: str, threads: int,
                    measure: bool, cache: CostCache | None = None) -> bool | None:
    """Whether CSR beat dense for this layer on this machine: the cached measurement, else
    (``measure``) a new one, else None (no measurement: the caller uses the cost model)."""
    cache = cache if cache is not None else _shared_cache()
    machine = machine_key(backend="native-sparse", threads=threads)
    n, k = record.shape
    bucket = round(record.density / DENSITY_STEP)
    key = f"linear {n}x{k} density~{bucket * DENSITY_STEP:.2f} rows {rows} {activation}"
    hit = cache.get(machine, key)
    if hit is not None and isinstance(hit.get("csr_wins"), bool):
        return hit["csr_wins"]
    if not measure:
        return None
    sparse_ms, dense_ms = _time_both(record, rows, activation, threads)
    wins = sparse_ms < dense_ms * (1.0 - MARGIN)
    cache.put(machine, key, {"csr_wins": wins, "sparse_ms": sparse_ms, "dense_ms": dense_ms,
                             "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})
    cache.save()
    return wins


_CACHE: CostCache | None = None


def _shared_cache() -> CostCache:
    """One cache per process (read once; measurements are added as they are made)."""
    global _CACHE
    if _CACHE is None or _CACHE.path != default_path():  # (tests point it elsewhere)
        _CACHE = CostCache()
    return _CACHE


def _layer(record: SparseWeight, rows: int, activation: str) -> Graph:
    """A one-node graph: ``rows`` rows through a linear with ``record``'s weight."""
    n, k = record.shape
    weight = np.ascontiguousarray(record.to_dense(), dtype=np.float32).reshape(n, k)
    graph = Graph("sparse_choice")
    x = graph.add_input("x", TensorType((rows, k), DType.float32))
    w = graph.add_constant(weight, "w")
    b = graph.add_constant(np.zeros(n, np.float32), "b")
    if activation == "none":
        node = graph.create_node("linear", [x, w, b])
    else:
        node = graph.create_node("fused_linear", [x, w, b], {"activation": activation})
    graph.set_outputs([node.output])
    return graph


def _time_both(record: SparseWeight, rows: int, activation: str, threads: int
               ) -> tuple[float, float]:
    import torch

    from graphopt.native.module import NativeModule

    graph = _layer(record, rows, activation)
    x = torch.randn(rows, record.shape[1], generator=torch.Generator().manual_seed(0))
    calls = {}
    for mode in ("always", "never"):
        module = NativeModule(graph, threads=threads, fallback="error", sparse=mode)
        calls[mode] = (lambda m=module: m(x))
    per_sample = {mode: calibrate(call, 3, 0.002, time.perf_counter)
                  for mode, call in calls.items()}
    samples, _ = run_interleaved(calls, per_sample, ROUNDS, time.perf_counter, rotate=True)
    return (statistics.median(samples["always"]) * 1e3,
            statistics.median(samples["never"]) * 1e3)
