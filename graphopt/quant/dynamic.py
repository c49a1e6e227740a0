"""Dynamic int8 quantization of linear and conv layers (weights int8 per output channel,
activations u8 per tensor, or per token, quantized at run time). Accuracy control: graphopt/quant/fallback.py;
the entry point ``graphopt.quantize``: graphopt/quant/api.py.

Every layer is one rewrite through the rewriter's edit API (``Rewriter.edit``): named
``quantize-dynamic-linear``, ``quantize-dynamic-conv`` or ``quantize-embedding``, counted in the
pass report and bisectable one layer at a time (when ``graphopt.bisect``'s budget is spent the
remaining layers stay float)."""

from __future__ import annotations

import fnmatch
from typing import Sequence

import numpy as np
import torch

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph, Node
from graphopt.ops.registry import (
    EPILOGUE,
    IN_OUT,
    OUT_IN,
    OUT_IN_SPATIAL,
    QUANTIZABLE,
    TABLE,
    WeightSpec,
    get_op,
)
from graphopt.quant.fallback import local_sensitivity, output_error  # noqa: F401  (re-exported)
from graphopt.quant.report import LayerRecord, QuantReport  # noqa: F401  (re-exported)
from graphopt.rewrite.rewriter import Rewriter

QUANTIZE_LINEAR = "quantize-dynamic-linear"
QUANTIZE_CONV = "quantize-dynamic-conv"
QUANTIZE_EMBEDDING = "quantize-embedding"


def quantizable_weights(node: Node, *layouts: str) -> WeightSpec | None:
    """The ``WeightSpec`` of a QUANTIZABLE op whose weight has one of ``layouts``, else None."""
    opdef = get_op(node.op)
    spec = opdef.weights
    if QUANTIZABLE not in opdef.traits or spec is None or spec.layout not in layouts:
        return None
    return spec


def linear_operands(node: Node, inputs: list) -> tuple:
    """(bias, residual, epilogue attrs) of a linear-like candidate, from its operand list
    ``inputs`` (the node's values or tensors): what a quantized linear takes over unchanged."""
    spec = get_op(node.op).weights
    ins = list(inputs)

    def slot(i):
        return ins[i] if i is not None and i < len(ins) else None

    attrs = {}
    if EPILOGUE in node.opdef.traits:
        attrs = {k: node.attrs[k] for k in ("activation", "activation_params")}
    return slot(spec.bias), slot(spec.residual), attrs


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
    spec = quantizable_weights(node, OUT_IN, IN_OUT)
    if spec is None or len(node.inputs) <= spec.slot:
        return None
    w = node.inputs[spec.slot]
    if w is None or not w.is_constant or w.dtype is not DType.float32 or w.type.rank != 2:
        return None
    if node.inputs[0].dtype is not DType.float32:
        return None
    return w.data.T if spec.layout == IN_OUT else w.data


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


def _rewrite_dynamic(rw: Rewriter, node: Node, bits: int = 8, per_token: bool = False) -> Node:
    """Replace ``node`` by ``qlinear_dynamic`` with its weight quantized, inside the rewrite
    ``rw`` has open; returns the new node."""
    w_q, scale = quantize_weight_per_channel(_weight_of(node), bits)
    weight = node.inputs[1]
    wq = rw.constant(w_q, f"{weight.name}_q")
    ws = rw.constant(scale, f"{weight.name}_scale")
    bias, residual, attrs = linear_operands(node, node.inputs)
    if per_token:
        attrs["per_token"] = True
    new = rw.create_node("qlinear_dynamic", [node.inputs[0], wq, ws, bias, residual], attrs,
                         name=node.outputs[0].name + "_q")
    rw.replace_value(node.outputs[0], new.outputs[0])
    rw.erase_node(node)
    _drop_if_unused(rw, weight)
    return new


def _drop_if_unused(rw: Rewriter, weight) -> None:
    if not weight.uses and not weight.is_graph_output:
        rw.remove_constant(weight)


def embedding_candidates(graph: Graph, exclude: Sequence[str] = ()) -> list[Node]:
    """``embedding`` nodes whose table is a constant f32 2-D weight (not excluded)."""
    out = []
    for node in graph.nodes:
        spec = quantizable_weights(node, TABLE)
        w = node.inputs[spec.slot] if spec is not None else None
        if w is None or not w.is_constant or w.dtype is not DType.float32 or w.type.rank != 2:
            continue
        if any(fnmatch.fnmatch(n, pat) for pat in exclude for n in (node.name, w.name)):
            continue
        out.append(node)
    return out


def quantize_embedding(graph: Graph, node: Node, rw: Rewriter | None = None) -> bool:
    """Weight-only int8 embedding table, one symmetric scale per row (per token)::

        embedding(%W, %ids)  ->  mul(cast(embedding(%W_q, %ids), f32), embedding(%W_scale, %ids))

    Rows are gathered in int8 (4x smaller table, Gather in ONNX) and scaled after the gather;
    the scale table is ``[vocab, 1]``. One rewrite (``quantize-embedding``) through ``rw``
    (default: a new one on ``graph``); False when the rewrite budget is spent (nothing done).
    """
    rw = rw if rw is not None else Rewriter(graph)
    if not rw.edit(QUANTIZE_EMBEDDING, node):
        return False
    weight = node.inputs[0]
    w_q, scale = quantize_weight_per_channel(weight.data)
    wq = rw.constant(w_q, f"{weight.name}_q")
    ws = rw.constant(scale.reshape(-1, 1), f"{weight.name}_scale")
    ids = node.inputs[1]
    base = node.outputs[0].name
    rows = rw.create_node("embedding", [wq, ids], dict(node.attrs), name=f"{base}_q")
    scales = rw.create_node("embedding", [ws, ids], dict(node.attrs), name=f"{base}_s")
    as_float = rw.create_node("cast", [rows.outputs[0]], {"dtype": DType.float32},
                              name=f"{base}_f")
    out = rw.create_node("mul", [as_float.outputs[0], scales.outputs[0]], name=f"{base}_dq")
    rw.replace_value(node.outputs[0], out.outputs[0])
    rw.erase_node(node)
    _drop_if_unused(rw, weight)
    return True


def quantize_nodes(graph: Graph, names: set[str], bits: int = 8, per_token: bool = False,
                   rw: Rewriter | None = None) -> int:
    """Quantize the candidates named in ``names`` (node names) in place; returns the count.
    ``per_token``: activations get a scale / zero point per row (token), not per tensor.
    Each layer is one rewrite (``quantize-dynamic-linear``) through ``rw`` (default: a new
    one); stops, leaving the rest float, when the rewrite budget is spent."""
    rw = rw if rw is not None else Rewriter(graph)
    count = 0
    for node in list(graph.nodes):
        if node.name in names and _weight_of(node) is not None:
            if not rw.edit(QUANTIZE_LINEAR, node):
                break
            _rewrite_dynamic(rw, node, bits, per_token)
            count += 1
    return count


def conv_candidates(graph: Graph, exclude: Sequence[str] = ()) -> list[Node]:
    """2-D ``conv`` / ``fused_conv`` nodes with an f32 NCHW input and a constant f32 weight."""
    out = []
    for node in graph.nodes:
        if _conv_weight_of(node) is None:
            continue
        if any(fnmatch.fnmatch(n, pat) for pat in exclude
               for n in (node.name, node.inputs[1].name)):
            continue
        out.append(node)
    return out


def _conv_weight_of(node: Node) -> np.ndarray | None:
    """The f32 ``[M, C/groups, kh, kw]`` weight of a 2-D conv candidate, else None."""
    spec = quantizable_weights(node, OUT_IN_SPATIAL)
    if spec is None:
        return None
    x, w = node.inputs[0], node.inputs[spec.slot]
    if x.dtype is not DType.float32 or x.type.rank != 4:
        return None
    if w is None or not w.is_constant or w.dtype is not DType.float32 or w.type.rank != 4:
        return None
    return w.data


def quantize_conv_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 of a conv weight ``[M, ...]`` (shape kept)."""
    w_q, scale = quantize_weight_per_channel(w.reshape(w.shape[0], -1))
    return w_q.reshape(w.shape), scale


def _rewrite_dynamic_conv(rw: Rewriter, node: Node) -> Node:
    """conv / fused_conv -> ``qconv_dynamic`` with int8 per-channel weights, inside the
    rewrite ``rw`` has open."""
    weight = node.inputs[1]
    w_q, scale = quantize_conv_per_channel(weight.data)
    wq = rw.constant(w_q, f"{weight.name}_q")
    ws = rw.constant(scale, f"{weight.name}_scale")
    ins = list(node.inputs) + [None] * (4 - len(node.inputs))
    attrs = {k: node.attrs[k] for k in ("stride", "padding", "dilation", "groups")}
    if EPILOGUE in node.opdef.traits:
        attrs.update({k: node.attrs[k] for k in ("activation", "activation_params")})
    new = rw.create_node("qconv_dynamic", [ins[0], wq, ws, ins[2], ins[3]], attrs,
                         name=node.outputs[0].name + "_q")
    rw.replace_value(node.outputs[0], new.outputs[0])
    rw.erase_node(node)
    _drop_if_unused(rw, weight)
    return new


def quantize_convs(graph: Graph, names: set[str], rw: Rewriter | None = None) -> int:
    """Dynamic int8 for the conv candidates named in ``names``, in place; returns the count.
    Each conv is one rewrite (``quantize-dynamic-conv``) through ``rw`` (default: a new one);
    stops, leaving the rest float, when the rewrite budget is spent."""
    rw = rw if rw is not None else Rewriter(graph)
    count = 0
    for node in list(graph.nodes):
        if node.name in names and _conv_weight_of(node) is not None:
            if not rw.edit(QUANTIZE_CONV, node):
                break
            _rewrite_dynamic_conv(rw, node)
            count += 1
    return count


def dynamic_forward(node: Node, inputs: list, per_token: bool = False) -> torch.Tensor:
    """A candidate's output with only its own weight and input quantized (local sensitivity)."""
    from graphopt.ops.quant import qlinear_dynamic
    from graphopt.ops.quant_int import qconv_dynamic

    x = inputs[0]
    if quantizable_weights(node, OUT_IN_SPATIAL) is not None:
        w_q, scale = quantize_conv_per_channel(_conv_weight_of(node))
        attrs = {k: v for k, v in node.attrs.items()}
        ins = list(inputs) + [None] * (4 - len(inputs))
        return qconv_dynamic(x, torch.from_numpy(w_q), torch.from_numpy(scale), ins[2], ins[3],
                             **attrs)
    w_q, scale = quantize_weight_per_channel(np.ascontiguousarray(_weight_of(node)))
    y = qlinear_dynamic(x, torch.from_numpy(w_q), torch.from_numpy(scale), per_token=per_token)
    # compare the linear part only (bias / epilogue are float in both)
    return _linear_epilogue(node, y, inputs)


def _linear_epilogue(node: Node, y: torch.Tensor, inputs: list) -> torch.Tensor:
    from graphopt.ops.fused import _epilogue

    bias, residual, attrs = linear_operands(node, inputs)
    if bias is not None:
        y = y + bias
    if attrs:
        return _epilogue(y, residual, attrs["activation"], attrs["activation_params"])
    return y


def weight_shape(node: Node) -> tuple[int, ...]:
    w = _conv_weight_of(node)
    w = _weight_of(node) if w is None else w
    return tuple(int(d) for d in w.shape)
