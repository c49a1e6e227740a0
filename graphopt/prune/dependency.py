"""Coupled-dimension analysis: which channels of which tensors must be removed together.

Structured pruning removes a channel from *every* tensor that carries it: the rows of the conv
that produces it, its batch-norm parameters, the residual adds it flows through, the columns of
every consumer. This module finds those sets over the IR, for any graph, from per-op rules.

Layout: ``groups.py`` (``ChannelGroup``, ``Member``), ``atoms.py`` (the ``AtomBuilder`` and the
``@coupling`` registry), ``rules_layers.py`` / ``rules_shapes.py`` (one rule per op), and here
``DependencyGraph``, which runs the rules and turns atoms into channels and groups.

**Model.** Every static dim of every value (graph inputs, constants, node outputs) is a row of
*atoms*, one per index: ``%conv.weight`` axis 0 of size 64 is 64 atoms. Each op's rule (the
``@coupling`` functions of ``rules_*.py``) says which atoms of its operands and results are the
same channel:

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

from typing import Callable

import numpy as np

from graphopt.ir.graph import Graph, Value
from graphopt.prune.atoms import AtomBuilder, attr_rewrite, coupling, rule_for, short
from graphopt.prune.groups import WEIGHT_ROLES, ChannelGroup, Member, Role

__all__ = ["WEIGHT_ROLES", "AtomBuilder", "ChannelGroup", "DependencyGraph", "Member", "Role",
           "attr_rewrite", "coupling"]


class DependencyGraph:
    """The coupled-dimension analysis of one graph (see the module docstring).

    The analysis holds references to the graph's values: it describes this graph object, and
    ``remove_channels`` must be applied to the same object it was built from.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        b = AtomBuilder(graph)
        for value in graph.inputs:
            b.freeze(value, None, f"graph input %{value.name}")
        for value in graph.outputs:
            b.freeze(value, None, f"graph output %{value.name}")
        for node in graph.nodes:
            rule = rule_for(node)
            if rule is None:
                reason = f"{short(node)} has no pruning rule"
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
    def _components(b: AtomBuilder) -> np.ndarray:
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

    def _groups(self, b: AtomBuilder) -> list[ChannelGroup]:
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

