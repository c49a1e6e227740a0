"""Per-layer micro-benchmarks: what quantizing each layer alone costs or saves on a backend.

For each chosen layer, the mode's ``build`` makes the graph with only that layer quantized; the
nodes it added (quantize, the int8 layer, dequantize...) and the float nodes it removed are each
cut out as a graph of their own (``graphopt.ir.extract``), compiled for the backend and timed
interleaved on the layer's real inputs (captured from one float run on the first calibration
input), medians. This is the per-layer view torchao's autoquant takes, on any backend: it
includes what quantizing a layer in isolation adds (quantizing its input, dequantizing its
output), so it is pessimistic for chains of static int8 layers that would pass int8 between them;
``graphopt.quant.speed`` therefore validates the per-layer choice on the whole graph.

Results are cached per machine (``graphopt.costcache``) under a structural signature of the two
regions, so the twelve identical layers of a BERT are measured once, and a second quantization on
the same machine measures nothing.
"""

from __future__ import annotations

import importlib.metadata
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from graphopt.costcache import CostCache, machine_key
from graphopt.errors import GraphoptError
from graphopt.ir.extract import extract_region, region_signature
from graphopt.ir.graph import Graph, Value
from graphopt.quant.report import LayerRecord
from graphopt.timing import calibrate, run_interleaved

SAMPLE_S = 0.002  # each sample lasts at least this long (many calls of a small layer)
ROUNDS = 15


@dataclass
class LayerCost:
    """Median ms per call of one layer's float and quantized regions, alone on a backend."""

    float_ms: float
    quantized_ms: float
    cached: bool = False

    @property
    def pays(self) -> bool:
        return self.quantized_ms <= self.float_ms


@dataclass
class _Region:
    graph: Graph
    sources: list[str]  # names of the values its inputs stand for (in the float graph)


def layer_costs(records: list[LayerRecord], build: Callable[[set[str]], Graph], args: tuple,
                backend: str, threads: int | None, cache: CostCache | None = None,
                rounds: int = ROUNDS) -> dict[str, LayerCost]:
    """Layer (node) name -> its ``LayerCost`` for every chosen record that quantizes into a
    region of its own that the backend compiles alone (other layers are left out)."""
    from graphopt.interpreter import bind_symbols, flatten_inputs

    base = build(set())
    flat = flatten_inputs(base, tuple(args), {})
    bindings = bind_symbols(base, flat)
    regions: dict[str, tuple[_Region, _Region]] = {}
    for record in records:
        if record.quantized:
            pair = _regions(base, build({record.node}), bindings)
            if pair is not None:
                regions[record.node] = pair
    cache = cache if cache is not None else CostCache(None)
    machine = machine_key(backend=backend, backend_version=_backend_version(backend),
                          threads=threads or torch.get_num_threads())
    keys = {node: region_signature(f.graph) + ":" + region_signature(q.graph)
            for node, (f, q) in regions.items()}
    missing = [node for node, key in keys.items() if not _valid(cache.get(machine, key))]
    # One float run captures the layers' real inputs, only if something is to be measured.
    tensors = _captured(base, flat, {s for node in missing for r in regions[node]
                                     for s in r.sources}) if missing else {}
    costs: dict[str, LayerCost] = {}
    for node, (f_region, q_region) in regions.items():
        key = keys[node]
        hit = cache.get(machine, key)
        if _valid(hit):
            costs[node] = LayerCost(hit["float_ms"], hit["quantized_ms"], cached=True)
            continue
        try:
            costs[node] = _measure(f_region, q_region, tensors, backend, threads, rounds)
        except GraphoptError:
            # A region the backend cannot compile alone (an op whose lowering needs its
            # neighbours): unmeasured; the whole-graph comparison still decides.
            continue
        cache.put(machine, key, {"float_ms": costs[node].float_ms,
                                 "quantized_ms": costs[node].quantized_ms, "layer": node,
                                 "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})
    cache.save()
    return costs


def _regions(base: Graph, quantized: Graph, bindings: dict) -> tuple[_Region, _Region] | None:
    """The float nodes ``quantized`` lacks and the nodes it added, each as a graph."""
    base_keys = {(n.name, n.op) for n in base.nodes}
    new_keys = {(n.name, n.op) for n in quantized.nodes}
    added = [n for n in quantized.nodes if (n.name, n.op) not in base_keys]
    removed = [n for n in base.nodes if (n.name, n.op) not in new_keys]
    if not added or not removed:
        return None
    return (_Region(*extract_region(base, removed, bindings)),
            _Region(*extract_region(quantized, added, bindings)))


def _captured(graph: Graph, flat: list[torch.Tensor], names: set[str]) -> dict[str, torch.Tensor]:
    """The tensors of the values named ``names`` in one run of ``graph`` on ``flat``."""
    from graphopt.interpreter import run_flat

    out = {v.name: t for v, t in zip(graph.inputs, flat) if v.name in names}

    def observe(value: Value, tensor: torch.Tensor) -> None:
        if value.name in names:
            out[value.name] = tensor.clone()

    with torch.no_grad():
        run_flat(graph, flat, observe=observe)
    return out


def _measure(f_region: _Region, q_region: _Region, tensors: dict[str, torch.Tensor],
             backend: str, threads: int | None, rounds: int) -> LayerCost:
    samples = time_graphs({label: (r.graph, tuple(tensors[n] for n in r.sources))
                           for label, r in (("float", f_region), ("quantized", q_region))},
                          backend, threads, rounds, min_sample_s=SAMPLE_S)
    return LayerCost(statistics.median(samples["float"]), statistics.median(samples["quantized"]))


def time_graphs(graphs: dict[str, tuple[Graph, tuple]], backend: str, threads: int | None,
                rounds: int, min_sample_s: float = 0.005) -> dict[str, list[float]]:
    """Per-round ms per call of each ``label: (graph, args)`` compiled for ``backend``: calls
    batched into samples of ``min_sample_s``, the graphs interleaved in a rotating order, in
    blocks with pauses where the backend's thread pools spin (``schedule``). What every
    speed-aware decision and ``graphopt.check_speed`` time with."""
    from graphopt.compile import compile as compile_graph

    calls = {}
    for label, (graph, args) in graphs.items():
        module = compile_graph(graph, backend=backend, threads=threads)
        calls[label] = (lambda m=module, a=args: m(*a))
    per_sample = {label: calibrate(call, 3, min_sample_s, time.perf_counter)
                  for label, call in calls.items()}
    samples, _ = run_interleaved(calls, per_sample, rounds, time.perf_counter,
                                 **schedule(backend))
    return {label: [t * 1e3 for t in s] for label, s in samples.items()}


def schedule(backend: str) -> dict:
    """How to interleave timings on ``backend`` (``graphopt.timing.run_interleaved``): rotated;
    for backends whose thread pools spin after a call (onnxruntime, torch's OpenMP; the native
    pool spins 50 us) in blocks of 4 samples with a pause between blocks, so an idle spinning
    pool of one variant cannot take the cores of the next."""
    if backend == "native":
        return {"rotate": True}
    return {"rotate": True, "block": 4, "pause_s": 0.05, "block_warmup": 1}


def _valid(record: dict | None) -> bool:
    return record is not None and all(isinstance(record.get(k), (int, float)) and record[k] > 0
               for k in ("float_ms", "quantized_ms"))


def _backend_version(backend: str) -> str:
    package = {"onnxruntime": "onnxruntime", "torch": "torch"}.get(backend)
    if package is None:
        return "builtin"  # the native runtime: graphopt's own version is in the machine key
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"

