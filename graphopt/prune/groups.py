"""Channel groups: what the dependency analysis (``dependency.py``) hands to the pruner.

A ``ChannelGroup`` is a set of coupled dims (every tensor a pruning decision touches) with its
channels (the units of removal), the frozen ones and why, and its constant ``Member``s with
their roles, which the importance criteria score (``importance.py``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from graphopt.ir.graph import Value

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

