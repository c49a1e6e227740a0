"""Coupled-dimension analysis: which channels of which tensors must be removed together.

Structured pruning removes a channel from *every* tensor that carries it: the rows of the conv
that produces it, its batch-norm parameters, the residual adds it flows through, the columns of
every consumer. This module finds those sets over the IR, for any graph, from per-op rules.

**Model.** Every static dim of every value (graph inputs, constants, node outputs) is a row of
*atoms*, one per index: ``%conv.weight`` axis 0 of size 64 is 64 atoms. Each op's rule (the
``@coupling`` functions below) says which atoms of its operands and results are the same channel:

* ``same``: index i of one dim is index i of the other (elementwise ops, the batch-norm channel,
  ``linear``'s input features and its weight's columns, ``permute``d axes, ...);
* ``ranges``: an offset range (``concat`` and ``split`` along the axis);
* ``blocks``: index i of a dim of size n*k is index i // k of a dim of size n. A ``reshape``
  [.., 768] -> [.., 12, 64] ties each head (12) to its block of 64 features; the inner dim (64)
  is then *frozen*; the flatten before a classifier ties each channel to its H*W features;
  grouped/depthwise convs tie each group's input and output channels; GQA ties each key/value
  head to its block of query heads.

Connected components of atoms (scipy's ``connected_components``) are the *channels*: the units
of removal (one conv channel, one attention head with its 3x64 projection rows and 64 output
columns, one conv group). Dims connected through any channel form a ``ChannelGroup``: everything
a pruning decision touches (a ResNet stage's residual stream with all its convs and adds).

**Freezing.** Dims that must keep their size are frozen, with a reason: graph inputs and
outputs, operands of ops without a rule, reduced axes, indexed axes (``select``, partial
``slice``, embedding rows), the inner dims of reshapes, symbolic dims. A channel with a frozen
atom is frozen; a group whose channels are all frozen is left alone and the reasons are
reported. Removing the rest keeps every op's shape rule satisfied, which is what
``graphopt.prune.structured.remove_channels`` relies on (and re-checks with ``verify()``).

Example (a residual chain: the add ties conv1's and conv2's output channels)::

    %a = conv(%x, %w1)          # w1: [16, 3, 3, 3]
    %b = conv(%a, %w2)          # w2: [16, 16, 3, 3]
    %c = add(%a, %b)
    %y = conv(%c, %w3)          # w3: [10, 16, 1, 1]

gives one group, 16 channels: ``w1[i], w2[i], w2[:, i], w3[:, i]`` and ``%a, %b, %c`` axis 1.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from graphopt.ir.graph import Graph, Node, Value

Role = str  # "out" (producer rows), "in" (consumer columns), "bn" (BN scale), "param" (sliced)
WEIGHT_ROLES = ("out", "in")


@dataclass
class Member:
    """A constant dim of a group with its role (what importance criteria look at)."""

    value: Value
    axis: int
    role: Role

    def __str__(self) -> str:
        return f"%{self.value.name}[axis {self.axis}] ({self.role})"


@dataclass
class ChannelGroup:
    """Coupled dims and the channels (components) that can be removed from all of them at once.

    Attributes:
        index: position in ``DependencyGraph.groups``.
        name: readable name (common prefix of the producing weights).
        kind: ``"channels"``, ``"heads"`` or ``"conv groups"``.
        dims: every (value, axis) the group touches.
        channels: prunable channel ids (component labels), in a fixed order.
        frozen_channels: channel ids that must stay.
        members: constant dims (weights, biases, norm parameters) with their roles.
        reasons: why channels are frozen (empty when none are).
        width: atoms per channel in the first producing weight (64 for a 64-dim head).
    """

    index: int
    name: str
    kind: str
    dims: list[tuple[Value, int]]
    channels: np.ndarray
    frozen_channels: np.ndarray
    members: list[Member]
    reasons: list[str] = field(default_factory=list)
    width: int = 1

    @property
    def size(self) -> int:
        return len(self.channels) + len(self.frozen_channels)

    @property
    def prunable(self) -> bool:
        """At least one channel can go while one channel stays."""
        return len(self.channels) >= 1 and self.size >= 2 and self.has_weights

    @property
    def has_weights(self) -> bool:
        return any(m.role in WEIGHT_ROLES for m in self.members)

    def constant_names(self) -> list[str]:
        seen: dict[str, None] = {}
        for m in self.members:
            seen.setdefault(m.value.name, None)
        return list(seen)

    def matches(self, patterns: Iterable[str]) -> bool:
        """True if a constant of the group matches a glob (``layer.0.*``; ``fc`` = ``fc.*``)."""
        names = self.constant_names()
        return any(fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(n, p + ".*")
                   for p in patterns for n in names)

    def __str__(self) -> str:
        state = f"{len(self.channels)}/{self.size} prunable"
        return f"group {self.index} '{self.name}' ({self.size} {self.kind}, {state})"


# --------------------------------------------------------------------------------- rules
Coupler = Callable[[Node, "_Builder"], None]
AttrRewriter = Callable[[Node, Callable[[Value], tuple]], dict]
_COUPLINGS: dict[str, Coupler] = {}
_REWRITES: dict[str, AttrRewriter] = {}


def coupling(*ops: str, rewrite: AttrRewriter | None = None):
    """Register ``fn(node, builder)`` as the coupling rule of ``ops``.

    ``rewrite(node, new_shape) -> {attr: value}`` gives the attributes to change once channels
    are removed (a reshape's target shape, split sizes, conv groups...); ``new_shape(value)``
    is the pruned shape of any operand or result.
    """

    def decorate(fn: Coupler) -> Coupler:
        for name in ops:
            _COUPLINGS[name] = fn
            if rewrite is not None:
                _REWRITES[name] = rewrite
        return fn

    return decorate


def attr_rewrite(op: str) -> AttrRewriter | None:
    return _REWRITES.get(op)


class _Builder:
    """Collects atom edges, dim unions, frozen dims, roles and tags while the rules run."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.dims: list[tuple[Value, int]] = []
        self.index: dict[tuple[int, int], int] = {}
        starts, sizes = [], []
        total = 0
        for value in graph.values():
            for axis, size in enumerate(value.type.shape):
                self.index[(id(value), axis)] = len(self.dims)
                self.dims.append((value, axis))
                size = size if isinstance(size, int) else 0  # symbolic: no atoms, frozen
                starts.append(total)
                sizes.append(size)
                total += size
        self.start = np.asarray(starts, dtype=np.int64)
        self.size = np.asarray(sizes, dtype=np.int64)
        self.num_atoms = total
        self.edges: list[tuple[np.ndarray, np.ndarray]] = []
        self.parent = list(range(len(self.dims)))  # union-find over dims
        self.frozen: dict[int, str] = {}
        self.roles: list[tuple[int, Role]] = []
        self.tags: dict[int, str] = {}
        for d, (value, axis) in enumerate(self.dims):
            if not isinstance(value.type.shape[axis], int):
                self.frozen[d] = f"%{value.name} axis {axis} is symbolic"

    # ------------------------------------------------------------------------------ helpers
    def dim(self, value: Value, axis: int) -> int:
        return self.index[(id(value), axis % value.type.rank)]

    def _find(self, d: int) -> int:
        while self.parent[d] != d:
            self.parent[d] = self.parent[self.parent[d]]
            d = self.parent[d]
        return d

    def _join(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def _atoms(self, d: int, idx: np.ndarray) -> np.ndarray:
        return self.start[d] + idx

    def pairs(self, a: Value, a_axis: int, a_idx, b: Value, b_axis: int, b_idx) -> None:
        """Atom a[a_idx[i]] is the same channel as b[b_idx[i]]."""
        da, db = self.dim(a, a_axis), self.dim(b, b_axis)
        if self.size[da] == 0 or self.size[db] == 0:  # symbolic on one side: freeze both
            self.freeze_dim(da, self.frozen.get(db, "coupled to a symbolic dim"))
            self.freeze_dim(db, self.frozen.get(da, "coupled to a symbolic dim"))
            self._join(da, db)
            return
        a_idx, b_idx = np.asarray(a_idx, np.int64), np.asarray(b_idx, np.int64)
        if len(a_idx):
            self.edges.append((self._atoms(da, a_idx), self._atoms(db, b_idx)))
        self._join(da, db)

    def same(self, a: Value, a_axis: int, b: Value, b_axis: int) -> None:
        n = self.size[self.dim(a, a_axis)]
        if n != self.size[self.dim(b, b_axis)]:
            self.freeze(a, a_axis, "coupled to a dim of another size")
            self.freeze(b, b_axis, "coupled to a dim of another size")
            return
        idx = np.arange(n)
        self.pairs(a, a_axis, idx, b, b_axis, idx)

    def ranges(self, a: Value, a_axis: int, a_off: int, b: Value, b_axis: int, b_off: int,
               n: int) -> None:
        idx = np.arange(n)
        self.pairs(a, a_axis, a_off + idx, b, b_axis, b_off + idx)

    def blocks(self, a: Value, a_axis: int, b: Value, b_axis: int, reason: str) -> None:
        """Index i of the larger dim is index i // k of the smaller one (sizes n*k and n)."""
        na, nb = int(self.size[self.dim(a, a_axis)]), int(self.size[self.dim(b, b_axis)])
        if na and nb and na % nb == 0:
            idx = np.arange(na)
            self.pairs(a, a_axis, idx, b, b_axis, idx // (na // nb))
        elif na and nb and nb % na == 0:
            idx = np.arange(nb)
            self.pairs(a, a_axis, idx // (nb // na), b, b_axis, idx)
        else:
            self.freeze(a, a_axis, reason)
            self.freeze(b, b_axis, reason)

    def broadcast(self, out: Value, operands: Iterable[Value | None]) -> None:
        """Right-aligned numpy broadcasting: equal-size dims are the same channel."""
        rank = out.type.rank
        for v in operands:
            if v is None:
                continue
            lead = rank - v.type.rank
            for axis, size in enumerate(v.type.shape):
                if size == 1 and out.type.shape[lead + axis] != 1:
                    continue  # broadcast: one value serves every channel
                self.same(v, axis, out, lead + axis)

    def freeze_dim(self, d: int, reason: str) -> None:
        self.frozen.setdefault(d, reason)

    def freeze(self, value: Value | None, axis: int | None, reason: str) -> None:
        if value is None:
            return
        axes = range(value.type.rank) if axis is None else [axis % max(value.type.rank, 1)]
        for a in axes:
            if value.type.rank:
                self.freeze_dim(self.dim(value, a), reason)

    def role(self, value: Value | None, axis: int, role: Role) -> None:
        if value is not None and value.is_constant:
            self.roles.append((self.dim(value, axis), role))

    def tag(self, value: Value, axis: int, tag: str) -> None:
        self.tags[self.dim(value, axis)] = tag


# --------------------------------------------------------------------------- the analysis
class DependencyGraph:
    """The coupled-dimension analysis of one graph (see the module docstring).

    The analysis holds references to the graph's values: it describes this graph object, and
    ``remove_channels`` must be applied to the same object it was built from.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        b = _Builder(graph)
        for value in graph.inputs:
            b.freeze(value, None, f"graph input %{value.name}")
        for value in graph.outputs:
            b.freeze(value, None, f"graph output %{value.name}")
        for node in graph.nodes:
            rule = _COUPLINGS.get(node.op)
            if rule is None and "elementwise" in node.opdef.traits:
                rule = _elementwise
            if rule is None:
                reason = f"{_short(node)} has no pruning rule"
                for v in list(node.inputs) + node.outputs:
                    b.freeze(v, None, reason)
                continue
            rule(node, b)
        self._builder = b
        self.dims = b.dims
        self.start, self.size = b.start, b.size
        self.labels = self._components(b)
        self.groups = self._groups(b)

    @staticmethod
    def _components(b: _Builder) -> np.ndarray:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n = b.num_atoms
        if b.edges:
            rows = np.concatenate([e[0] for e in b.edges])
            cols = np.concatenate([e[1] for e in b.edges])
        else:
            rows = cols = np.zeros(0, np.int64)
        adjacency = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
        _, labels = connected_components(adjacency, directed=False)
        return labels.astype(np.int64)

    def labels_of(self, value: Value, axis: int) -> np.ndarray:
        """Channel id of every index of ``value``'s ``axis``."""
        d = self._builder.dim(value, axis)
        return self.labels[self.start[d]: self.start[d] + self.size[d]]

    def _groups(self, b: _Builder) -> list[ChannelGroup]:
        frozen_label = np.zeros(int(self.labels.max(initial=-1)) + 1, dtype=bool)
        for d in b.frozen:
            frozen_label[self.labels[self.start[d]: self.start[d] + self.size[d]]] = True
        by_root: dict[int, list[int]] = {}
        for d in range(len(b.dims)):
            if b.size[d] > 0:
                by_root.setdefault(b._find(d), []).append(d)
        roles_by_root: dict[int, list[tuple[int, Role]]] = {}
        for d, role in b.roles:
            roles_by_root.setdefault(b._find(d), []).append((d, role))
        groups: list[ChannelGroup] = []
        for root, dims in by_root.items():
            roles = roles_by_root.get(root)
            if not roles:
                continue  # no constant touches it: spatial, sequence, batch dims...
            labels = np.unique(np.concatenate(
                [self.labels[self.start[d]: self.start[d] + self.size[d]] for d in dims]))
            frozen = frozen_label[labels]
            reasons = sorted({b.frozen[d] for d in dims if d in b.frozen})
            members, seen = [], set()
            for d, role in roles:
                value, axis = b.dims[d]
                if (d, role) not in seen:
                    seen.add((d, role))
                    members.append(Member(value, axis, role))
            kind = "channels"
            tags = {b.tags[d] for d in dims if d in b.tags}
            if "heads" in tags:
                kind = "heads"
            elif "conv groups" in tags:
                kind = "conv groups"
            groups.append(ChannelGroup(
                index=len(groups), name=_group_name(members), kind=kind,
                dims=[b.dims[d] for d in dims], channels=labels[~frozen],
                frozen_channels=labels[frozen], members=members, reasons=reasons,
                width=_width(self, members, labels)))
        return groups

    def protected(self, group: ChannelGroup, scores: np.ndarray) -> np.ndarray:
        """Channels that must stay so that no tensor loses a whole dim.

        A concat's operands each carry only some of the group's channels: for every distinct set
        of channels that some dim carries, the best-scored one (by ``scores``, aligned with
        ``group.channels``) is kept unless a frozen channel already keeps that dim alive.
        """
        frozen = set(group.frozen_channels.tolist())
        rank = dict(zip(group.channels.tolist(), np.asarray(scores).tolist()))
        keep: set[int] = set()
        seen: set[bytes] = set()
        for value, axis in group.dims:
            labels = np.unique(self.labels_of(value, axis))
            key = labels.tobytes()
            if key in seen:
                continue
            seen.add(key)
            if frozen.intersection(labels.tolist()) or keep.intersection(labels.tolist()):
                continue
            keep.add(max(labels.tolist(), key=lambda lab: rank.get(lab, float("inf"))))
        return np.asarray(sorted(keep), dtype=np.int64)

    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def new_shapes(self, removed: np.ndarray) -> Callable[[Value], tuple]:
        """``shape_of(value)`` after removing the channel ids ``removed``."""
        gone = np.zeros(len(self.labels) and int(self.labels.max()) + 1, dtype=bool)
        gone[np.asarray(removed, dtype=np.int64)] = True
        cache: dict[int, tuple] = {}
        b = self._builder

        def shape_of(value: Value) -> tuple:
            key = id(value)
            if key not in cache:
                shape = list(value.type.shape)
                for axis in range(len(shape)):
                    d = b.index[(key, axis)]
                    if self.size[d]:
                        labels = self.labels[self.start[d]: self.start[d] + self.size[d]]
                        shape[axis] = int(self.size[d] - gone[labels].sum())
                cache[key] = tuple(shape)
            return cache[key]

        return shape_of

    def keep_indices(self, value: Value, removed_mask: np.ndarray) -> list[np.ndarray | None]:
        """Per axis of ``value``: kept indices, or None where nothing is removed."""
        out: list[np.ndarray | None] = []
        for axis in range(value.type.rank):
            d = self._builder.index[(id(value), axis)]
            if not self.size[d]:
                out.append(None)
                continue
            labels = self.labels[self.start[d]: self.start[d] + self.size[d]]
            drop = removed_mask[labels]
            out.append(np.flatnonzero(~drop) if drop.any() else None)
        return out

    def report(self) -> str:
        """One line per group with weights: size, prunable channels, reasons."""
        lines = []
        for g in self.groups:
            why = f" -- frozen: {'; '.join(g.reasons[:3])}" if g.reasons else ""
            lines.append(f"{g}{why}")
        return "\n".join(lines)


def _short(node: Node) -> str:
    return f"%{node.name} = {node.op}"


def _group_name(members: list[Member]) -> str:
    names = [m.value.name for m in members if m.role == "out"]
    if not names:
        return "input of " + _group_name([Member(m.value, m.axis, "out") for m in members])
    names = [n[: -len(".weight")] if n.endswith(".weight") else n for n in names]
    names = list(dict.fromkeys(names))
    parts = [n.split(".") for n in names]
    common = []
    for seg in zip(*parts):
        if len(set(seg)) != 1:
            break
        common.append(seg[0])
    if len(names) == 1:
        return names[0]
    if common:
        return ".".join(common)
    return f"{names[0]} (+{len(names) - 1})"


def _width(analysis: DependencyGraph, members: list[Member], labels: np.ndarray) -> int:
    for m in members:
        if m.role in WEIGHT_ROLES and len(labels):
            counts = np.unique(analysis.labels_of(m.value, m.axis), return_counts=True)[1]
            return int(counts.max())
    return 1


# ------------------------------------------------------------------------ coupling rules
def _elementwise(node: Node, b: _Builder) -> None:
    for out in node.outputs:
        b.broadcast(out, node.inputs)


def _same_leading(b: _Builder, x: Value, out: Value, n: int) -> None:
    for axis in range(n):
        b.same(x, axis, out, axis)


@coupling("linear", "fused_linear")
def _linear(node: Node, b: _Builder) -> None:
    x, w, bias = node.inputs[:3]
    out = node.output
    _same_leading(b, x, out, x.type.rank - 1)
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
def _matmul(node: Node, b: _Builder) -> None:
    a, w = node.inputs[:2]
    out = node.output
    if a.type.rank < 2 or w.type.rank < 2:
        for v in (a, w, out):
            b.freeze(v, None, f"{_short(node)} has a 1-D operand")
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
def _conv(node: Node, b: _Builder) -> None:
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
        b.freeze(w, 1, f"{_short(node)}: channels inside a conv group")
        c_in, c_out = x.type.shape[1], out.type.shape[1]
        if isinstance(c_in, int) and isinstance(c_out, int):
            per_in, per_out = c_in // groups, c_out // groups
            i, o = np.arange(c_in), np.arange(c_out)
            b.pairs(x, 1, i, out, 1, (i // per_in) * per_out)
            b.pairs(out, 1, o, out, 1, (o // per_out) * per_out)
        else:
            b.freeze(x, 1, f"{_short(node)} has symbolic channels")
        b.tag(out, 1, "conv groups")
    for axis in range(2, w.type.rank):
        b.freeze(w, axis, "conv kernel")
    if bias is not None:
        b.same(out, 1, bias, 0)
        b.role(bias, 0, "param")
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        b.broadcast(out, [node.inputs[3]])


@coupling("conv_transpose")
def _conv_transpose(node: Node, b: _Builder) -> None:
    x, w, bias = node.inputs
    out = node.output
    b.same(x, 0, out, 0)
    if node.attrs["groups"] != 1:
        for v in (x, w, out, bias):
            b.freeze(v, None, f"{_short(node)} is grouped")
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
def _batch_norm(node: Node, b: _Builder) -> None:
    x = node.inputs[0]
    _same_leading(b, x, node.output, x.type.rank)
    for slot, v in enumerate(node.inputs[1:], start=1):
        if v is not None:
            b.same(x, 1, v, 0)
            b.role(v, 0, "bn" if slot == 3 else "param")


def _layer_norm_attrs(node: Node, new_shape) -> dict:
    n = len(node.attrs["normalized_shape"])
    return {"normalized_shape": tuple(new_shape(node.inputs[0])[-n:])}


@coupling("layer_norm", rewrite=_layer_norm_attrs)
def _layer_norm(node: Node, b: _Builder) -> None:
    x = node.inputs[0]
    _same_leading(b, x, node.output, x.type.rank)
    n = len(node.attrs["normalized_shape"])
    for v in node.inputs[1:]:
        if v is not None:
            for i in range(n):
                b.same(x, x.type.rank - n + i, v, i)
                b.role(v, i, "param")


@coupling("rms_norm")
def _rms_norm(node: Node, b: _Builder) -> None:
    _same_leading(b, node.inputs[0], node.output, node.output.type.rank)
    b.broadcast(node.output, node.inputs[1:])
    if node.inputs[1] is not None:
        b.role(node.inputs[1], -1, "param")


def _group_norm_attrs(node: Node, new_shape) -> dict:
    per_group = node.output.type.shape[1] // node.attrs["groups"]
    return {"groups": new_shape(node.output)[1] // per_group}


@coupling("group_norm", rewrite=_group_norm_attrs)
def _group_norm(node: Node, b: _Builder) -> None:
    x = node.inputs[0]
    _same_leading(b, x, node.output, x.type.rank)
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
def _pool(node: Node, b: _Builder) -> None:
    x, out = node.inputs[0], node.output
    n = len(node.attrs["kernel"] if "kernel" in node.attrs else
            node.attrs["output_size"] if "output_size" in node.attrs else node.attrs["size"])
    _same_leading(b, x, out, x.type.rank - n)


@coupling("pixel_shuffle")
def _pixel_shuffle(node: Node, b: _Builder) -> None:
    x, out = node.inputs[0], node.output
    b.same(x, 0, out, 0)
    b.blocks(x, 1, out, 1, f"{_short(node)} channels")


@coupling("embedding")
def _embedding(node: Node, b: _Builder) -> None:
    w, ids = node.inputs
    out = node.output
    for axis in range(ids.type.rank):
        b.same(ids, axis, out, axis)
    b.same(out, -1, w, 1)
    b.role(w, 1, "out")
    b.freeze(w, 0, f"rows of %{w.name} are indexed by {_short(node)}")


@coupling("attention")
def _attention(node: Node, b: _Builder) -> None:
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
            b.blocks(q, axis, k, axis, f"{_short(node)} query groups")
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


def _reshape_groups(a: list[int], c: list[int]) -> list[tuple[list[int], list[int]]] | None:
    """Pair up runs of dims with equal products (sizes without 1s); None if impossible."""
    groups, i, j = [], 0, 0
    while i < len(a) and j < len(c):
        ga, gc, pa, pc = [i], [j], a[i], c[j]
        i, j = i + 1, j + 1
        while pa != pc:
            if pa < pc:
                if i == len(a):
                    return None
                pa *= a[i]
                ga.append(i)
                i += 1
            else:
                if j == len(c):
                    return None
                pc *= c[j]
                gc.append(j)
                j += 1
        groups.append((ga, gc))
    return groups if i == len(a) and j == len(c) else None


def _reshape_attrs(node: Node, new_shape) -> dict:
    target = new_shape(node.output)
    shape = tuple(s if (isinstance(s, int) and s == -1) else target[i]
                  for i, s in enumerate(node.attrs["shape"]))
    return {"shape": shape}


def _reshape_segments(x: Value, out: Value) -> list[tuple[list[int], list[int]]] | None:
    """Axis runs of ``x`` and ``out`` between equal symbolic dims (``s0`` stays ``s0``)."""
    xs = [i for i, d in enumerate(x.type.shape) if not isinstance(d, int)]
    os_ = [i for i, d in enumerate(out.type.shape) if not isinstance(d, int)]
    if len(xs) != len(os_) or any(x.type.shape[i] != out.type.shape[j] for i, j in zip(xs, os_)):
        return None
    bounds_x, bounds_o = [-1] + xs + [x.type.rank], [-1] + os_ + [out.type.rank]
    return [(list(range(bounds_x[k] + 1, bounds_x[k + 1])),
             list(range(bounds_o[k] + 1, bounds_o[k + 1]))) for k in range(len(bounds_x) - 1)]


@coupling("reshape", rewrite=_reshape_attrs)
def _reshape(node: Node, b: _Builder) -> None:
    x, out = node.inputs[0], node.output
    reason = f"inner dim of {_short(node)}"
    segments = _reshape_segments(x, out)
    if segments is None or 0 in x.type.shape:
        b.freeze(x, None, f"{_short(node)} mixes symbolic dims")
        b.freeze(out, None, f"{_short(node)} mixes symbolic dims")
        return
    for seg_x, seg_o in segments:
        xa = [i for i in seg_x if x.type.shape[i] != 1]
        oa = [i for i in seg_o if out.type.shape[i] != 1]
        groups = _reshape_groups([x.type.shape[i] for i in xa], [out.type.shape[i] for i in oa])
        if groups is None:  # cannot happen for a valid reshape; stay safe
            for i in seg_x:
                b.freeze(x, i, reason)
            for i in seg_o:
                b.freeze(out, i, reason)
            continue
        for gx, go in groups:
            ax, ao = xa[gx[0]], oa[go[0]]
            if len(gx) == 1 and len(go) == 1:
                b.same(x, ax, out, ao)
                continue
            b.blocks(x, ax, out, ao, reason)  # outermost dims: row-major blocks
            for i in gx[1:]:
                b.freeze(x, xa[i], reason)
            for i in go[1:]:
                b.freeze(out, oa[i], reason)


@coupling("permute")
def _permute(node: Node, b: _Builder) -> None:
    for i, p in enumerate(node.attrs["perm"]):
        b.same(node.inputs[0], p, node.output, i)


@coupling("squeeze")
def _squeeze(node: Node, b: _Builder) -> None:
    x = node.inputs[0]
    axes = {a % x.type.rank for a in node.attrs["axes"]} if x.type.rank else set()
    kept = [i for i in range(x.type.rank) if not (i in axes and x.type.shape[i] == 1)]
    for j, i in enumerate(kept):
        b.same(x, i, node.output, j)


@coupling("unsqueeze")
def _unsqueeze(node: Node, b: _Builder) -> None:
    x, out = node.inputs[0], node.output
    axis = node.attrs["axis"] % out.type.rank
    for i in range(x.type.rank):
        b.same(x, i, out, i if i < axis else i + 1)


def _expand_attrs(node: Node, new_shape) -> dict:
    target = new_shape(node.output)
    shape = tuple(s if (isinstance(s, int) and s == -1) else target[i]
                  for i, s in enumerate(node.attrs["shape"]))
    return {"shape": shape}


@coupling("expand", rewrite=_expand_attrs)
def _expand(node: Node, b: _Builder) -> None:
    b.broadcast(node.output, node.inputs)


@coupling("slice")
def _slice(node: Node, b: _Builder) -> None:
    x, out = node.inputs[0], node.output
    axis = node.attrs["axis"] % x.type.rank
    size = x.type.shape[axis]
    full = (node.attrs["start"] == 0 and node.attrs["step"] == 1
            and isinstance(size, int) and node.attrs["end"] >= size)
    for i in range(x.type.rank):
        if i != axis or full:
            b.same(x, i, out, i)
    if not full:
        b.freeze(x, axis, f"sliced by {_short(node)}")
        b.freeze(out, axis, f"sliced by {_short(node)}")


@coupling("select")
def _select(node: Node, b: _Builder) -> None:
    x = node.inputs[0]
    axis = node.attrs["axis"] % x.type.rank
    for j, i in enumerate(i for i in range(x.type.rank) if i != axis):
        b.same(x, i, node.output, j)
    b.freeze(x, axis, f"indexed by {_short(node)}")


@coupling("concat")
def _concat(node: Node, b: _Builder) -> None:
    out = node.output
    axis = node.attrs["axis"] % out.type.rank
    offset = 0
    for x in node.inputs:
        for i in range(x.type.rank):
            if i != axis:
                b.same(x, i, out, i)
        n = x.type.shape[axis]
        if isinstance(n, int) and isinstance(offset, int):
            b.ranges(x, axis, 0, out, axis, offset, n)
            offset += n
        else:
            b.freeze(x, axis, "symbolic concat")
            b.freeze(out, axis, "symbolic concat")
            offset = None


def _split_attrs(node: Node, new_shape) -> dict:
    axis = node.attrs["axis"] % node.inputs[0].type.rank
    return {"sizes": tuple(new_shape(o)[axis] for o in node.outputs)}


@coupling("split", rewrite=_split_attrs)
def _split(node: Node, b: _Builder) -> None:
    x = node.inputs[0]
    axis = node.attrs["axis"] % x.type.rank
    offset = 0
    for out, n in zip(node.outputs, node.attrs["sizes"]):
        for i in range(x.type.rank):
            if i != axis:
                b.same(x, i, out, i)
        if isinstance(n, int) and isinstance(offset, int):
            b.ranges(out, axis, 0, x, axis, offset, n)
            offset += n
        else:
            b.freeze(x, axis, "symbolic split")
            b.freeze(out, axis, "symbolic split")
            offset = None


@coupling("pad")
def _pad(node: Node, b: _Builder) -> None:
    x, out = node.inputs[0], node.output
    pads = node.attrs["pads"]
    padded = {x.type.rank - 1 - i for i in range(len(pads) // 2)
              if pads[2 * i] != 0 or pads[2 * i + 1] != 0}
    for i in range(x.type.rank):
        if i not in padded:
            b.same(x, i, out, i)


@coupling("flip", "roll", "cumsum", "triu", "tril")
def _reorder(node: Node, b: _Builder) -> None:
    x, out = node.inputs[0], node.output
    rank = x.type.rank
    if node.op in ("triu", "tril"):
        axes = {rank - 2, rank - 1}
    elif node.op == "cumsum":
        axes = {node.attrs["axis"] % rank}
    else:
        axes = {a % rank for a in node.attrs["axes"]}
    for i in range(rank):
        if i in axes:
            b.freeze(x, i, f"reordered by {_short(node)}")
            b.freeze(out, i, f"reordered by {_short(node)}")
        else:
            b.same(x, i, out, i)


@coupling("sum", "mean", "prod", "amax", "amin", "all", "any", "logsumexp", "var", "std",
          "argmax", "argmin")
def _reduce(node: Node, b: _Builder) -> None:
    x, out = node.inputs[0], node.output
    rank = x.type.rank
    if "axes" in node.attrs:
        axes = {a % rank for a in node.attrs["axes"]} if node.attrs["axes"] else set(range(rank))
    else:
        axis = node.attrs["axis"]
        axes = set(range(rank)) if axis is None else {axis % rank}
    j = 0
    for i in range(rank):
        if i in axes:
            b.freeze(x, i, f"reduced by {_short(node)}")
            j += 1 if node.attrs["keepdim"] else 0
        else:
            b.same(x, i, out, j)
            j += 1


@coupling("softmax", "log_softmax")
def _softmax(node: Node, b: _Builder) -> None:
    _same_leading(b, node.inputs[0], node.output, node.output.type.rank)
