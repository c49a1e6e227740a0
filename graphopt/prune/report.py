"""``PruneReport``: what a pruning run removed, group by group, and what it cost in FLOPs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GroupReport:
    """One channel group: its size, what was removed, or why it was left alone."""

    name: str
    kind: str
    size: int
    removed: int = 0
    importance: str = ""
    members: list[str] = field(default_factory=list)
    skipped: str = ""  # why the group was left alone ("" when pruned or simply kept)

    @property
    def kept(self) -> int:
        return self.size - self.removed


@dataclass
class WeightReport:
    """One weight of an unstructured pruning run."""

    name: str
    shape: tuple
    sparsity: float


@dataclass
class PruneReport:
    """Result of ``graphopt.prune``: FLOPs and parameters before/after, per group / weight."""

    method: str
    flops_before: int = 0
    flops_after: int = 0
    params_before: int = 0
    params_after: int = 0
    groups: list[GroupReport] = field(default_factory=list)
    weights: list[WeightReport] = field(default_factory=list)
    target: str = ""
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # PruneConfig.to_dict() of the run
    stage: Any = None  # the run's StageReport (time, peak memory; graphopt.stagereport)

    @property
    def flops_reduction(self) -> float:
        """before / after (2.0: half the FLOPs)."""
        return self.flops_before / max(self.flops_after, 1)

    @property
    def flops_cut(self) -> float:
        """Fraction of FLOPs removed (0.5: half)."""
        return 1.0 - self.flops_after / max(self.flops_before, 1)

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over the pruned weights (unstructured)."""
        total = sum(_numel(w.shape) for w in self.weights)
        zeros = sum(_numel(w.shape) * w.sparsity for w in self.weights)
        return zeros / total if total else 0.0

    def pruned_groups(self) -> list[GroupReport]:
        return [g for g in self.groups if g.removed]

    def skipped_groups(self) -> list[GroupReport]:
        return [g for g in self.groups if g.skipped]

    def __str__(self) -> str:
        lines = [f"prune ({self.method}{', ' + self.target if self.target else ''}): "
                 f"FLOPs {human(self.flops_before)} -> {human(self.flops_after)} "
                 f"({self.flops_reduction:.2f}x fewer, -{100 * self.flops_cut:.1f}%), "
                 f"params {human(self.params_before)} -> {human(self.params_after)}"]
        if self.weights:
            lines.append(f"  overall sparsity {100 * self.sparsity:.1f}% over "
                         f"{len(self.weights)} weights")
            for w in self.weights[:40]:
                lines.append(f"    {w.name:<50} {str(list(w.shape)):<16} "
                             f"{100 * w.sparsity:5.1f}% zeros")
        pruned = self.pruned_groups()
        if pruned:
            lines.append(f"  pruned {len(pruned)} groups:")
            for g in pruned:
                lines.append(f"    {g.name:<50} {g.kind:<11} {g.size:>5} -> {g.kept:<5} "
                             f"({g.importance})")
        skipped = self.skipped_groups()
        if skipped:
            lines.append(f"  left alone {len(skipped)} groups:")
            for g in skipped:
                lines.append(f"    {g.name:<50} {g.kind:<11} {g.size:>5}: {g.skipped}")
        lines += [f"  note: {n}" for n in self.notes]
        if self.stage is not None:
            lines.append(f"  {self.stage}")
        return "\n".join(lines)


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
