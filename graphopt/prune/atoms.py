"""Atoms and coupling rules: the machinery the per-op rules of the dependency analysis use.

Every static dim of every value is a row of *atoms*, one per index. A rule registered with
``@coupling(op, ..., rewrite=...)`` is ``fn(node, builder)``; it calls the ``AtomBuilder``'s
``same`` / ``ranges`` / ``blocks`` / ``pairs`` / ``broadcast`` to say which atoms of the node's
operands and results are the same channel, ``freeze`` for dims that must keep their size,
``role`` for constant dims importance looks at and ``tag`` for the group's kind. The rules
themselves live in ``rules_layers.py`` (compute ops) and ``rules_shapes.py`` (data movement);
``dependency.DependencyGraph`` runs them and turns the atoms into channels and groups.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from graphopt.ir.graph import Graph, Node, Value
from graphopt.prune.groups import Role

Coupler = Callable[[Node, "AtomBuilder"], None]
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


class AtomBuilder:
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



def short(node: Node) -> str:
    """``%name = op``: how freeze reasons name a node."""
    return f"%{node.name} = {node.op}"


def same_leading(b: AtomBuilder, x: Value, out: Value, n: int) -> None:
    """The first ``n`` axes of ``x`` and ``out`` are the same channels."""
    for axis in range(n):
        b.same(x, axis, out, axis)


def rule_for(node: Node) -> Coupler | None:
    """The coupling rule of ``node``'s op (elementwise ops get ``broadcast``), or None."""
    from graphopt.prune import rules_layers, rules_shapes  # noqa: F401  (register the rules)

    rule = _COUPLINGS.get(node.op)
    if rule is None and "elementwise" in node.opdef.traits:
        rule = rules_layers.elementwise
    return rule
