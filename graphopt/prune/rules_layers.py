"""Coupling rules of compute ops: elementwise, linear / matmul, convolutions, norms, pooling,
embedding, attention (see ``atoms.py`` for what a rule does)."""

from __future__ import annotations

import numpy as np

from graphopt.ir.graph import Node
from graphopt.prune.atoms import AtomBuilder, coupling, same_leading, short


def elementwise(node: Node, b: AtomBuilder) -> None:
    for out in node.outputs:
        b.broadcast(out, node.inputs)


@coupling("linear", "fused_linear")
def _linear(node: Node, b: AtomBuilder) -> None:
    x, w, bias = node.inputs[:3]
    out = node.output
    same_leading(b, x, out, x.type.rank - 1)
    b.same(x, -1, w, 1)
    b.same(out, -1, w, 0)
    b.role(w, 0, "out")
    b.role(w, 1, "in")
    if bias is not None:
        b.same(out, -1, bias, 0)
        b.role(bias, 0, "param")
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        b.broadcast(out, [node.inputs[3]])


def _matmul_dims(node: Node) -> tuple[int, int, int, int]:
    """(a's M axis, a's K axis, b's K axis, b's N axis) after trans flags."""
    ta, tb = node.attrs.get("trans_a", False), node.attrs.get("trans_b", False)
    return (-1, -2, -1, -2) if ta and tb else (-1, -2, -2, -1) if ta else \
        (-2, -1, -1, -2) if tb else (-2, -1, -2, -1)


@coupling("matmul", "fused_matmul")
def _matmul(node: Node, b: AtomBuilder) -> None:
    a, w = node.inputs[:2]
    out = node.output
    if a.type.rank < 2 or w.type.rank < 2:
        for v in (a, w, out):
            b.freeze(v, None, f"{short(node)} has a 1-D operand")
        return
    am, ak, wk, wn = _matmul_dims(node)
    b.same(a, ak, w, wk)
    b.same(out, -2, a, am)
    b.same(out, -1, w, wn)
    for v in (a, w):  # batch dims broadcast against the result's
        lead = out.type.rank - v.type.rank
        for axis in range(v.type.rank - 2):
            if v.type.shape[axis] == out.type.shape[lead + axis]:
                b.same(v, axis, out, lead + axis)
    b.role(w, wn, "out")
    b.role(w, wk, "in")
    b.role(a, am, "out")
    b.role(a, ak, "in")
    for extra in node.inputs[2:]:
        b.broadcast(out, [extra])
        if extra is not None and extra.type.rank == 1:
            b.role(extra, 0, "param")


def _conv_attrs(node: Node, new_shape) -> dict:
    groups = node.attrs["groups"]
    if groups == 1:
        return {}
    per_group = node.output.type.shape[1] // groups
    return {"groups": new_shape(node.output)[1] // per_group}


@coupling("conv", "fused_conv", rewrite=_conv_attrs)
def _conv(node: Node, b: AtomBuilder) -> None:
    x, w, bias = node.inputs[:3]
    out = node.output
    groups = node.attrs["groups"]
    b.same(x, 0, out, 0)
    b.same(out, 1, w, 0)
    b.role(w, 0, "out")
    if groups == 1:
        b.same(x, 1, w, 1)
        b.role(w, 1, "in")
    else:
        # Grouped / depthwise: group j's input channels and output channels are one unit.
        b.freeze(w, 1, f"{short(node)}: channels inside a conv group")
        c_in, c_out = x.type.shape[1], out.type.shape[1]
        if isinstance(c_in, int) and isinstance(c_out, int):
            per_in, per_out = c_in // groups, c_out // groups
            i, o = np.arange(c_in), np.arange(c_out)
            b.pairs(x, 1, i, out, 1, (i // per_in) * per_out)
            b.pairs(out, 1, o, out, 1, (o // per_out) * per_out)
        else:
            b.freeze(x, 1, f"{short(node)} has symbolic channels")
        b.tag(out, 1, "conv groups")
    for axis in range(2, w.type.rank):
        b.freeze(w, axis, "conv kernel")
    if bias is not None:
        b.same(out, 1, bias, 0)
        b.role(bias, 0, "param")
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        b.broadcast(out, [node.inputs[3]])


@coupling("conv_transpose")
def _conv_transpose(node: Node, b: AtomBuilder) -> None:
    x, w, bias = node.inputs
    out = node.output
    b.same(x, 0, out, 0)
    if node.attrs["groups"] != 1:
        for v in (x, w, out, bias):
            b.freeze(v, None, f"{short(node)} is grouped")
        return
    b.same(x, 1, w, 0)
    b.same(out, 1, w, 1)
    b.role(w, 0, "in")
    b.role(w, 1, "out")
    for axis in range(2, w.type.rank):
        b.freeze(w, axis, "conv kernel")
    if bias is not None:
        b.same(out, 1, bias, 0)
        b.role(bias, 0, "param")


@coupling("batch_norm")
def _batch_norm(node: Node, b: AtomBuilder) -> None:
    x = node.inputs[0]
    same_leading(b, x, node.output, x.type.rank)
    for slot, v in enumerate(node.inputs[1:], start=1):
        if v is not None:
            b.same(x, 1, v, 0)
            b.role(v, 0, "bn" if slot == 3 else "param")


def _layer_norm_attrs(node: Node, new_shape) -> dict:
    n = len(node.attrs["normalized_shape"])
    return {"normalized_shape": tuple(new_shape(node.inputs[0])[-n:])}


@coupling("layer_norm", rewrite=_layer_norm_attrs)
def _layer_norm(node: Node, b: AtomBuilder) -> None:
    x = node.inputs[0]
    same_leading(b, x, node.output, x.type.rank)
    n = len(node.attrs["normalized_shape"])
    for v in node.inputs[1:]:
        if v is not None:
            for i in range(n):
                b.same(x, x.type.rank - n + i, v, i)
                b.role(v, i, "param")


@coupling("rms_norm")
def _rms_norm(node: Node, b: AtomBuilder) -> None:
    same_leading(b, node.inputs[0], node.output, node.output.type.rank)
    b.broadcast(node.output, node.inputs[1:])
    if node.inputs[1] is not None:
        b.role(node.inputs[1], -1, "param")


def _group_norm_attrs(node: Node, new_shape) -> dict:
    per_group = node.output.type.shape[1] // node.attrs["groups"]
    return {"groups": new_shape(node.output)[1] // per_group}


@coupling("group_norm", rewrite=_group_norm_attrs)
def _group_norm(node: Node, b: AtomBuilder) -> None:
    x = node.inputs[0]
    same_leading(b, x, node.output, x.type.rank)
    channels, groups = x.type.shape[1], node.attrs["groups"]
    if isinstance(channels, int):
        per = channels // groups
        idx = np.arange(channels)
        b.pairs(x, 1, idx, x, 1, idx - idx % per)  # a group's channels go together
        b.tag(x, 1, "conv groups")
    for v in node.inputs[1:]:
        if v is not None:
            b.same(x, 1, v, 0)
            b.role(v, 0, "param")


@coupling("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "resize")
def _pool(node: Node, b: AtomBuilder) -> None:
    x, out = node.inputs[0], node.output
    n = len(node.attrs["kernel"] if "kernel" in node.attrs else
            node.attrs["output_size"] if "output_size" in node.attrs else node.attrs["size"])
    same_leading(b, x, out, x.type.rank - n)


@coupling("pixel_shuffle")
def _pixel_shuffle(node: Node, b: AtomBuilder) -> None:
    x, out = node.inputs[0], node.output
    b.same(x, 0, out, 0)
    b.blocks(x, 1, out, 1, f"{short(node)} channels")


@coupling("embedding")
def _embedding(node: Node, b: AtomBuilder) -> None:
    w, ids = node.inputs
    out = node.output
    for axis in range(ids.type.rank):
        b.same(ids, axis, out, axis)
    b.same(out, -1, w, 1)
    b.role(w, 1, "out")
    b.freeze(w, 0, f"rows of %{w.name} are indexed by {short(node)}")


@coupling("attention")
def _attention(node: Node, b: AtomBuilder) -> None:
    q, k, v, mask = node.inputs
    out = node.output
    rank = q.type.rank
    b.same(q, -1, k, -1)
    b.same(k, -2, v, -2)
    b.same(out, -2, q, -2)
    b.same(out, -1, v, -1)
    gqa = node.attrs["enable_gqa"] and rank >= 3
    for axis in range(rank - 2):
        b.same(q, axis, out, axis)
        if gqa and axis == rank - 3:
            b.same(k, axis, v, axis)
            b.blocks(q, axis, k, axis, f"{short(node)} query groups")
        else:
            for kv in (k, v):
                if kv.type.shape[axis] == out.type.shape[axis]:
                    b.same(kv, axis, out, axis)
    if rank >= 3:
        b.tag(q, -3, "heads")
    if mask is not None:
        lead = rank - mask.type.rank
        for axis, size in enumerate(mask.type.shape):
            pos = lead + axis
            target, taxis = (q, -2) if pos == rank - 2 else (k, -2) if pos == rank - 1 \
                else (out, pos)
            if size != 1 or target.type.shape[taxis] == 1:
                b.same(mask, axis, target, taxis)

