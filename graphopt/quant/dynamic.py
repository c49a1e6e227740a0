"""Dynamic int8 quantization of linear layers, with sensitivity-driven float fallback."""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph, Node

_LINEAR_OPS = ("linear", "fused_linear", "matmul")


def quantize_weight_per_channel(w: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel quantization of a ``[out, in]`` weight.

    Returns ``(w_q int8, scale f32 [out])`` with ``w ~= w_q * scale[:, None]`` and
    ``|w_q| <= 2**(bits-1) - 1`` (no -128: the range stays symmetric, zero point 0).
    """
    qmax = 2 ** (bits - 1) - 1
    w = np.asarray(w, dtype=np.float32)
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    w_q = np.clip(np.rint(w / scale[:, None]), -qmax, qmax).astype(np.int8)
    return w_q, scale


def _weight_of(node: Node) -> np.ndarray | None:
    """The float weight of a candidate as ``[out, in]``, or None when it is not a candidate."""
    if node.op not in _LINEAR_OPS or len(node.inputs) < 2:
        return None
    w = node.inputs[1]
    if w is None or not w.is_constant or w.dtype is not DType.float32 or w.type.rank != 2:
        return None
    if node.inputs[0].dtype is not DType.float32:
        return None
    return w.data.T if node.op == "matmul" else w.data


def dynamic_candidates(graph: Graph, exclude: Sequence[str] = ()) -> list[Node]:
    """Linear / fused_linear / matmul nodes with a constant f32 2-D weight, in graph order.
    ``exclude`` globs match the node name or the weight constant's name."""
    out = []
    for node in graph.nodes:
        if _weight_of(node) is None:
            continue
        names = (node.name, node.inputs[1].name)
        if any(fnmatch.fnmatch(n, pat) for pat in exclude for n in names):
            continue
        out.append(node)
    return out


def _rewrite_dynamic(graph: Graph, node: Node, bits: int = 8) -> Node:
    """Replace ``node`` by ``qlinear_dynamic`` with its weight quantized; returns the new node."""
    w_q, scale = quantize_weight_per_channel(_weight_of(node), bits)
    weight = node.inputs[1]
    wq = graph.add_constant(w_q, f"{weight.name}_q")
    ws = graph.add_constant(scale, f"{weight.name}_scale")
    bias = node.inputs[2] if node.op != "matmul" and len(node.inputs) > 2 else None
    residual = node.inputs[3] if node.op == "fused_linear" and len(node.inputs) > 3 else None
    attrs = {}
    if node.op == "fused_linear":
        attrs = {k: node.attrs[k] for k in ("activation", "activation_params")}
    with graph.inserting_before(node):
        new = graph.create_node(
            "qlinear_dynamic", [node.inputs[0], wq, ws, bias, residual], attrs,
            name=node.outputs[0].name + "_q",
        )
    node.outputs[0].replace_all_uses_with(new.outputs[0])
    graph.erase_node(node)
    if not weight.uses and not weight.is_graph_output:
        graph.remove_constant(weight)
    return new


def embedding_candidates(graph: Graph, exclude: Sequence[str] = ()) -> list[Node]:
    """``embedding`` nodes whose table is a constant f32 2-D weight (not excluded)."""
    out = []
    for node in graph.nodes:
        w = node.inputs[0] if node.op == "embedding" else None
        if w is None or not w.is_constant or w.dtype is not DType.float32 or w.type.rank != 2:
            continue
        if any(fnmatch.fnmatch(n, pat) for pat in exclude for n in (node.name, w.name)):
            continue
        out.append(node)
    return out


def quantize_embedding(graph: Graph, node: Node) -> None:
    """Weight-only int8 embedding table, one symmetric scale per row (per token)::

        embedding(%W, %ids)  ->  mul(cast(embedding(%W_q, %ids), f32), embedding(%W_scale, %ids))

    Rows are gathered in int8 (4x smaller table, Gather in ONNX) and scaled after the gather;
    the scale table is ``[vocab, 1]``.
    """
    weight = node.inputs[0]
    w_q, scale = quantize_weight_per_channel(weight.data)
    wq = graph.add_constant(w_q, f"{weight.name}_q")
    ws = graph.add_constant(scale.reshape(-1, 1), f"{weight.name}_scale")
    ids = node.inputs[1]
    base = node.outputs[0].name
    with graph.inserting_before(node):
        rows = graph.create_node("embedding", [wq, ids], dict(node.attrs), name=f"{base}_q")
        scales = graph.create_node("embedding", [ws, ids], dict(node.attrs), name=f"{base}_s")
        as_float = graph.create_node("cast", [rows.outputs[0]], {"dtype": DType.float32},
                                     name=f"{base}_f")
        out = graph.create_node("mul", [as_float.outputs[0], scales.outputs[0]],
                                name=f"{base}_dq")
    node.outputs[0].replace_all_uses_with(out.outputs[0])
    graph.erase_node(node)
    if not weight.uses and not weight.is_graph_output:
        graph.remove_constant(weight)


def quantize_nodes(graph: Graph, names: set[str], bits: int = 8) -> int:
    """Quantize the candidates named in ``names`` (node names) in place; returns the count."""
    count = 0
    for node in list(graph.nodes):
        if node.name in names and _weight_of(node) is not None:
            _rewrite_dynamic(graph, node, bits)
            count += 1
    return count


def output_error(graph: Graph, reference: list, calibration: Sequence[tuple]) -> float:
    """Mean over calibration inputs and float outputs of ``1 - cosine(reference, graph)``."""
    errors = []
    for args, ref in zip(calibration, reference):
        for a, b in zip(ref, _flat_outputs(graph, args)):
            if torch.is_tensor(a) and a.is_floating_point():
                a, b = a.double().flatten(), b.double().flatten()
                errors.append(1.0 - float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
    return float(np.mean(errors)) if errors else 0.0


@dataclass
class LayerRecord:
    """One candidate layer: its node, weight, sensitivity and the decision."""

    node: str
    weight: str
    shape: tuple[int, int]
    quantized: bool
    sensitivity: float | None = None
    reason: str = ""


@dataclass
class QuantReport:
    """What ``quantize`` did: per-layer records, final error vs budget, size before/after."""

    mode: str
    layers: list[LayerRecord] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)
    error: float | None = None
    error_budget: float | None = None
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0

    @property
    def quantized(self) -> list[str]:
        return [r.node for r in self.layers if r.quantized]

    @property
    def fallback(self) -> list[str]:
        return [r.node for r in self.layers if not r.quantized]

    def __str__(self) -> str:
        lines = [
            f"quantize mode={self.mode}: {len(self.quantized)}/{len(self.layers)} layers int8, "
            f"weights {self.bytes_before / 1e6:.2f} MB -> {self.bytes_after / 1e6:.2f} MB"
            + (f", error {self.error:.2e}" if self.error is not None else "")
            + (f" (budget {self.error_budget:.2e})" if self.error_budget is not None else "")
            + f", {self.seconds:.1f} s"
        ]
        if self.embeddings:
            lines.append(f"  int8 embedding tables (weight-only): {', '.join(self.embeddings)}")
        for r in self.layers:
            sens = "" if r.sensitivity is None else f" sensitivity={r.sensitivity:.2e}"
            state = "int8 " if r.quantized else "float"
            lines.append(f"  {state} {r.node} ({r.weight} {list(r.shape)}){sens}  {r.reason}")
        return "\n".join(lines)


def local_sensitivity(
    graph: Graph, names: Sequence[str], calibration: Sequence[tuple]
) -> dict[str, float]:
    """Per layer ``||W x - Q(W) Q(x)||^2 / ||W x||^2`` on the layer's real inputs (captured by
    one run of a copy of ``graph`` whose outputs are those inputs), summed over calibration."""
    from graphopt.interpreter import flatten_inputs, run_flat
    from graphopt.ops.quant import qlinear_dynamic

    probe = graph.clone()
    nodes = [n for n in probe.nodes if n.name in set(names)]
    probe.set_outputs([n.inputs[0] for n in nodes])
    num = {n.name: 0.0 for n in nodes}
    den = {n.name: 0.0 for n in nodes}
    for args in calibration:
        xs = run_flat(probe, flatten_inputs(probe, args, {}))
        for node, x in zip(nodes, xs):
            w = np.ascontiguousarray(_weight_of(node))
            w_q, scale = quantize_weight_per_channel(w)
            y = torch.nn.functional.linear(x, torch.from_numpy(w))
            yq = qlinear_dynamic(x, torch.from_numpy(w_q), torch.from_numpy(scale))
            num[node.name] += float(((y - yq).double() ** 2).sum())
            den[node.name] += float((y.double() ** 2).sum())
    return {k: num[k] / max(den[k], 1e-30) for k in num}


def _flat_outputs(graph: Graph, args: tuple) -> list[torch.Tensor]:
    """The graph's outputs as a flat list (model outputs may be dicts / ModelOutput)."""
    from graphopt.interpreter import flatten_inputs, run_flat

    return run_flat(graph, flatten_inputs(graph, tuple(args), {}))


def _reference_outputs(graph: Graph, calibration: Sequence[tuple]) -> list:
    return [_flat_outputs(graph, args) for args in calibration]


def quantize(
    graph: Graph,
    mode: str = "dynamic",
    *,
    calibration: Sequence[tuple] | None = None,
    error_budget: float | None = None,
    exclude: Sequence[str] = (),
    sensitivity: str = "local",
    embeddings: bool = True,
    bits: int = 4,
    block_size: int = 32,
    report: bool = False,
):
    """Quantize ``graph`` (a copy; the input is not mutated).

    Args:
        graph: the float graph.
        mode: ``"dynamic"`` (int8 weights + dynamic u8 activations, ``qlinear_dynamic``) or
            ``"weight-only"`` (block-wise ``bits``-bit weights, float activations,
            ``linear_weight_only``; no fallback yet, ``error_budget`` is not supported).
        calibration: argument tuples to run the graph on; needed for ``error_budget``.
        error_budget: the largest allowed mean ``1 - cosine`` between float and quantized
            outputs over ``calibration``. Layers are measured one at a time (sensitivity) and
            the most sensitive fall back to float, one by one, until the error fits.
        exclude: globs over node or weight names to keep in float.
        sensitivity: how layers are ranked for fallback. ``"local"`` (fast, one float run):
            the relative squared error of each layer's own output, quantized vs float, on its
            real inputs. ``"end-to-end"``: the graph's output error with that layer alone
            quantized (one run per layer and calibration input).
        embeddings: also store constant ``embedding`` tables in int8 with a per-row scale
            (weight-only; ``quantize_embedding``), as onnxruntime's quantizer does for Gather.
        bits, block_size: weight-only mode: 4 or 8 bits, blocks of ``block_size`` along K.
        report: also return the ``QuantReport``.

    Returns:
        The quantized graph, or ``(graph, QuantReport)`` with ``report=True``.
    """
    if sensitivity not in ("local", "end-to-end"):
        raise ValueError(f"sensitivity must be 'local' or 'end-to-end', got '{sensitivity}'")
    if mode == "weight-only":
        return _weight_only(graph, calibration, error_budget, exclude, bits, block_size, report)
    if mode != "dynamic":
        raise NotImplementedError(
            f"quantize mode '{mode}' is not implemented yet (dynamic, weight-only)"
        )
    if error_budget is not None and not calibration:
        raise ValueError("error_budget needs calibration inputs")
    start = time.perf_counter()
    rep = QuantReport(mode=mode, error_budget=error_budget, bytes_before=graph.constant_bytes())
    candidates = dynamic_candidates(graph, exclude)
    for node in candidates:
        w = _weight_of(node)
        rep.layers.append(
            LayerRecord(node.name, node.inputs[1].name, tuple(int(d) for d in w.shape), True)
        )
    for node in graph.nodes:
        if any(node.name == r.node for r in rep.layers) or _weight_of(node) is None:
            continue
        w = _weight_of(node)
        rep.layers.append(LayerRecord(node.name, node.inputs[1].name,
                                      tuple(int(d) for d in w.shape), False, reason="excluded"))

    if embeddings:
        rep.embeddings = [n.inputs[0].name for n in embedding_candidates(graph, exclude)]

    def build(names: set[str]) -> Graph:
        g = graph.clone()
        quantize_nodes(g, names)
        if embeddings:
            for node in embedding_candidates(g, exclude):
                quantize_embedding(g, node)
        return g

    chosen = {r.node for r in rep.layers if r.quantized}
    out = build(chosen)
    if calibration:
        refs = _reference_outputs(graph, calibration)
        rep.error = output_error(out, refs, calibration)
        if error_budget is not None and rep.error > error_budget:
            records = [r for r in rep.layers if r.quantized]
            if sensitivity == "local":
                local = local_sensitivity(graph, [r.node for r in records], calibration)
                for r in records:
                    r.sensitivity = local[r.node]
            else:
                for r in records:
                    r.sensitivity = output_error(build({r.node}), refs, calibration)
            for r in sorted(records, key=lambda r: -r.sensitivity):
                if rep.error <= error_budget:
                    break
                chosen.discard(r.node)
                r.quantized = False
                r.reason = f"fell back: most sensitive left (error was {rep.error:.2e})"
                out = build(chosen)
                rep.error = output_error(out, refs, calibration)
    rep.bytes_after = out.constant_bytes()
    rep.seconds = time.perf_counter() - start
    return (out, rep) if report else out


def _weight_only(graph, calibration, error_budget, exclude, bits, block_size, report):
    from graphopt.quant.weight_only import quantize_weight_only

    if error_budget is not None:
        raise NotImplementedError("error_budget is only implemented for mode='dynamic'")
    start = time.perf_counter()
    rep = QuantReport(mode=f"weight-only int{bits}/{block_size}",
                      bytes_before=graph.constant_bytes())
    out = graph.clone()
    nodes = dynamic_candidates(out, exclude)
    for node in nodes:
        shape = tuple(int(d) for d in _weight_of(node).shape)
        rep.layers.append(LayerRecord(node.name, node.inputs[1].name, shape, True))
    quantize_weight_only(out, nodes, bits, block_size)
    if calibration:
        rep.error = output_error(out, _reference_outputs(graph, calibration), calibration)
    rep.bytes_after = out.constant_bytes()
    rep.seconds = time.perf_counter() - start
    return (out, rep) if report else out
