"""Accuracy control shared by every quantization mode: output error, per-layer sensitivity,
and the fallback of the most sensitive layers to float until an error budget holds.

A mode supplies two things: ``build(names) -> Graph`` (the graph with exactly the named layers
quantized) and, for ``sensitivity="local"``, ``quantized_forward(node, inputs) -> Tensor``: the
layer's output when it alone is quantized, computed from its real (float) inputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from graphopt.ir.dtypes import numpy_to_torch
from graphopt.ir.graph import Graph, Node, Value
from graphopt.quant.report import LayerRecord

QuantizedForward = Callable[[Node, list], torch.Tensor]


def flat_outputs(graph: Graph, args: tuple) -> list[torch.Tensor]:
    """The graph's outputs as a flat list (model outputs may be dicts / ModelOutput)."""
    from graphopt.interpreter import flatten_inputs, run_flat

    return run_flat(graph, flatten_inputs(graph, tuple(args), {}))


def reference_outputs(graph: Graph, calibration: Sequence[tuple]) -> list:
    return [flat_outputs(graph, args) for args in calibration]


def output_error(graph: Graph, reference: list, calibration: Sequence[tuple]) -> float:
    """Mean over calibration inputs and float outputs of ``1 - cosine(reference, graph)``."""
    errors = []
    for args, ref in zip(calibration, reference):
        for a, b in zip(ref, flat_outputs(graph, args)):
            if torch.is_tensor(a) and a.is_floating_point():
                a, b = a.double().flatten(), b.double().flatten()
                # (clamped: rounding can put an identical output's cosine a hair above 1)
                errors.append(max(0.0, 1.0 - float(
                    torch.nn.functional.cosine_similarity(a, b, dim=0))))
    return float(np.mean(errors)) if errors else 0.0


def local_sensitivity(graph: Graph, names: Sequence[str], calibration: Sequence[tuple],
                      quantized_forward: QuantizedForward) -> dict[str, float]:
    """Per layer ``||y - y_q||^2 / ||y||^2`` summed over calibration, where ``y`` is the
    layer's float output and ``y_q`` = ``quantized_forward(node, inputs)`` on the same real
    inputs. Streamed: one run of ``graph`` per item, each layer measured as its output is
    computed, and its captured inputs dropped once every measured layer reading them ran."""
    from graphopt.interpreter import flatten_inputs, run_flat

    wanted = set(names)
    nodes = [n for n in graph.nodes if n.name in wanted]
    num = {n.name: 0.0 for n in nodes}
    den = {n.name: 0.0 for n in nodes}
    feeds: dict[int, int] = {}  # id(value) -> how many measured layers read it
    for node in nodes:
        for v in {id(v): v for v in node.inputs if v is not None and v.kind != "const"}.values():
            feeds[id(v)] = feeds.get(id(v), 0) + 1
    for args in calibration:
        captured: dict[int, torch.Tensor] = {}
        pending = dict(feeds)

        def observe(value: Value, tensor: torch.Tensor) -> None:
            if id(value) in feeds:
                captured[id(value)] = tensor
            node = value.producer
            if node is None or node.name not in num or value is not node.outputs[0]:
                return
            yq = _measured_layer(node, captured, quantized_forward)
            num[node.name] += float(((tensor - yq).double() ** 2).sum())
            den[node.name] += float((tensor.double() ** 2).sum())
            for v in node.inputs:
                if v is not None and id(v) in pending:
                    pending[id(v)] -= 1
                    if pending[id(v)] == 0:
                        captured.pop(id(v), None)

        run_flat(graph, flatten_inputs(graph, tuple(args), {}), observe=observe)
    return {k: num[k] / max(den[k], 1e-30) for k in num}


def _measured_layer(node: Node, captured: dict[int, torch.Tensor],
                    quantized_forward: QuantizedForward) -> torch.Tensor:
    inputs = [None if v is None else numpy_to_torch(v.data, v.dtype) if v.kind == "const"
              else captured[id(v)] for v in node.inputs]
    with torch.no_grad():
        return quantized_forward(node, inputs)


def fit_error_budget(
    records: list[LayerRecord],
    build: Callable[[set[str]], Graph],
    graph: Graph,
    calibration: Sequence[tuple],
    error_budget: float | None,
    sensitivity: str,
    quantized_forward: QuantizedForward | None,
) -> tuple[Graph, float | None]:
    """Quantize the records marked ``quantized``; with ``error_budget``, rank them by
    sensitivity and fall back the most sensitive to float one by one until the error fits.
    Updates ``records`` (decision, sensitivity, reason); returns the graph and its error."""
    if sensitivity not in ("local", "end-to-end"):
        raise ValueError(f"sensitivity must be 'local' or 'end-to-end', got '{sensitivity}'")
    chosen = {r.node for r in records if r.quantized}
    out = build(chosen)
    if not calibration:
        return out, None
    refs = reference_outputs(graph, calibration)
    error = output_error(out, refs, calibration)
    if error_budget is None or error <= error_budget:
        return out, error
    candidates = [r for r in records if r.quantized]
    if sensitivity == "local" and quantized_forward is not None:
        local = local_sensitivity(graph, [r.node for r in candidates], calibration,
                                  quantized_forward)
        for r in candidates:
            r.sensitivity = local[r.node]
    else:
        for r in candidates:
            r.sensitivity = output_error(build({r.node}), refs, calibration)
    for r in sorted(candidates, key=lambda r: -r.sensitivity):
        if error <= error_budget:
            break
        chosen.discard(r.node)
        r.quantized = False
        r.reason = f"fell back: most sensitive left (error was {error:.2e})"
        out = build(chosen)
        error = output_error(out, refs, calibration)
    return out, error
