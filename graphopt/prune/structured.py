"""Structured pruning: choose channels per group, then physically remove them.

``prune_channels(graph, ratio=... | flops=...)`` rewrites ``graph`` in place into a smaller
dense graph:

1. ``DependencyGraph(graph)`` finds the channel groups (``dependency.py``);
2. every prunable group not excluded ranks its channels by importance (``importance.py``);
3. ``scope="layer"`` (default): a per-group ratio (uniform, or per glob pattern) removes the
   lowest-ranked channels; with a FLOPs target the uniform ratio is found by bisection over the
   FLOPs counted on the planned shapes (``flops.py``), the smallest ratio whose cut reaches the
   target. ``scope="global"``: the channels of all groups are ranked together (``global_order``)
   and removed from the bottom until the target holds (the fewest channels whose cut reaches
   it, found by bisection on their number); every group keeps at least ``1 - max_ratio`` of its
   channels, so no layer vanishes;
4. ``remove_channels`` slices every constant of every group, rewrites shape attributes
   (reshape targets, split sizes, conv/group-norm groups, layer-norm shapes), re-infers every
   changed node's type against the planned shape and verifies the graph. Each group is one
   rewrite (``prune-channel-group``) through the rewriter's edit API, so the pass report counts
   them and ``graphopt.bisect`` can stop after any one group.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from graphopt.errors import PruneError
from graphopt.ir.graph import Graph, Value
from graphopt.ir.types import TensorType
from graphopt.prune.dependency import ChannelGroup, DependencyGraph, attr_rewrite
from graphopt.prune.flops import count_flops
from graphopt.prune.importance import group_scores, taylor_gradients
from graphopt.prune.report import GroupReport, PruneReport
from graphopt.rewrite.rewriter import Rewriter

ImportanceFn = Callable[[DependencyGraph, ChannelGroup], np.ndarray]

PRUNE_GROUP = "prune-channel-group"


def set_constant_data(value: Value, data: np.ndarray) -> None:
    """Replace a constant's array (and its type's shape); the old array is left untouched."""
    data = np.require(np.asarray(data, dtype=value.data.dtype), requirements="C")
    data.flags.writeable = False
    value.data = data
    value.owner = None  # the graph's own array now
    value.type = TensorType(data.shape, value.dtype, value.type.quant)


def remove_channels(graph: Graph, analysis: DependencyGraph, removed: np.ndarray,
                    before: np.ndarray | None = None, verify: bool = True) -> int:
    """Remove the channel ids ``removed`` from every tensor of ``graph``; returns #nodes changed.

    ``analysis`` must have been built from this very graph object. ``before``: channel ids that
    earlier calls on this graph removed already (its shapes reflect them), so that groups can
    be removed one call (one rewrite) at a time; the result is the same as removing all of
    them at once. ``verify``: ``graph.verify()`` at the end.
    """
    removed = np.asarray(removed, dtype=np.int64)
    if not len(removed):
        return 0
    before = np.zeros(0, np.int64) if before is None else np.asarray(before, dtype=np.int64)
    size = int(analysis.labels.max()) + 1
    mask, mask_before = np.zeros(size, dtype=bool), np.zeros(size, dtype=bool)
    mask[removed] = True
    mask_before[before] = True
    mask_total = mask | mask_before
    new_shape = analysis.new_shapes(np.flatnonzero(mask_total))
    for value in list(graph.constants.values()):
        if all(k is None for k in analysis.keep_indices(value, mask)):
            continue  # no channel of this call in it
        kept_before = analysis.keep_indices(value, mask_before)
        keep = analysis.keep_indices(value, mask_total)
        data = value.data
        for axis, k in enumerate(keep):
            if k is not None:
                # positions (in the current, already pruned axis) of the indices that stay
                current = kept_before[axis]
                data = np.take(data, k if current is None else np.searchsorted(current, k),
                               axis=axis)
        set_constant_data(value, data)
    changed = 0
    for node in graph.nodes:
        expected = [new_shape(o) for o in node.outputs]
        rewrite = attr_rewrite(node.op)
        attrs = node.attrs
        if rewrite is not None:
            updates = rewrite(node, new_shape)
            if any(attrs[k] != v for k, v in updates.items()):
                attrs = node.opdef.check_attrs({**dict(attrs), **updates}, context=node.describe())
        inputs_changed = any(v is not None and tuple(v.type.shape) != tuple(new_shape(v))
                             for v in node.inputs)
        outputs_changed = any(tuple(o.type.shape) != e for o, e in zip(node.outputs, expected))
        if attrs is node.attrs and not outputs_changed:
            continue
        types = node.opdef.infer_types([None if v is None else v.type for v in node.inputs],
                                       attrs)
        for t, e in zip(types, expected):
            if tuple(t.shape) != tuple(e):
                raise PruneError(
                    f"internal error: after pruning, {node.describe()} infers {t} but the plan "
                    f"says {list(e)} (inputs changed: {inputs_changed})")
        node.attrs = attrs
        for out, t in zip(node.outputs, types):
            out.type = t
        changed += 1
    if verify:
        graph.verify()
    return changed


def _group_ratio(group: ChannelGroup, ratio: float | Mapping[str, float]) -> float:
    if not isinstance(ratio, Mapping):
        return float(ratio)
    for pattern, r in ratio.items():
        if group.matches([pattern]) or fnmatch.fnmatchcase(group.name, pattern):
            return float(r)
    return 0.0


def _count(group: ChannelGroup, ratio: float, max_ratio: float, available: int,
           round_to: int = 1) -> int:
    """Channels to remove at ``ratio`` of the group (``available`` = removable ones).

    With ``round_to`` > 1, groups of at least ``4 * round_to`` channels keep a multiple of it
    (rounded up: GEMM/conv kernels like widths that fill their vectors).
    """
    ratio = min(ratio, max_ratio)
    return _rounded(group, int(math.floor(ratio * group.size + 1e-9)), available, round_to)


def _rounded(group: ChannelGroup, k: int, available: int, round_to: int) -> int:
    """``k`` removals lowered so that a multiple of ``round_to`` channels stays (see _count)."""
    if round_to > 1 and group.size >= 4 * round_to and k:
        kept = -(-(group.size - k) // round_to) * round_to
        k = group.size - min(kept, group.size)
    return max(0, min(k, available))


def normalized(scores: np.ndarray) -> np.ndarray:
    """A group's scores divided by their mean (all zeros when the mean is not positive).

    A group's scores sum each member weight's mean-normalized scores, so their scale grows with
    the group's member count (a ResNet stream with 16 convs vs one conv); on a mean-1 scale the
    global ranking compares how weak a channel is within its own group.
    """
    scores = np.asarray(scores, np.float64)
    mean = float(scores.mean()) if len(scores) else 0.0
    return scores / mean if mean > 0 else np.zeros(len(scores))


def global_order(scores: Mapping[int, np.ndarray]) -> np.ndarray:
    """The cross-group removal order: the group index of each position.

    ``scores[g]``: group g's normalized candidate scores, ascending (its own removal order).
    All candidates are sorted by score (stable: ties keep group order, and each group's own
    order is kept), so the first k positions remove, in every group, its weakest channels.
    """
    if not scores:
        return np.zeros(0, np.int64)
    gids = np.concatenate([np.full(len(sc), g, np.int64) for g, sc in scores.items()])
    flat = np.concatenate([np.asarray(sc, np.float64) for sc in scores.values()])
    return gids[np.argsort(flat, kind="stable")]


def prune_channels(
    graph: Graph,
    ratio: float | Mapping[str, float] | None = None,
    flops: float | None = None,
    importance: str | ImportanceFn = "l1",
    exclude: Sequence[str] = (),
    data=None,
    loss=None,
    max_ratio: float = 0.9,
    round_to: int = 1,
    scope: str = "layer",
    rw: Rewriter | None = None,
) -> PruneReport:
    """Structured pruning of ``graph`` in place; see the module docstring.

    Args:
        ratio: fraction of each group's channels to remove (a float, or ``{glob: ratio}``
            matched against the group's constant names, first match wins, others 0).
        flops: fraction of the graph's FLOPs to remove (0.5: half); overrides ``ratio``.
        importance: ``l1``, ``l2``, ``bn``, ``taylor`` or ``fn(analysis, group) -> scores``.
        exclude: glob patterns of constant names; a group touching one is left alone.
        data, loss: batches (and loss) for ``taylor``.
        max_ratio: never remove more than this fraction of a group.
        round_to: keep a multiple of this many channels in groups of >= 4x as many.
        scope: ``"layer"`` (every group pruned by the same ratio, or per pattern) or
            ``"global"`` (one ranking of all groups' channels by normalized importance: the
            weakest go first, wherever they are, until ``flops`` or the float ``ratio`` of all
            channels is reached; each group keeps at least ``1 - max_ratio`` of its channels).
        rw: the rewriter to count into (default: a new one on ``graph``); removing one group's
            channels is one rewrite (``prune-channel-group``), and when the rewrite budget of
            ``graphopt.bisect`` is spent the remaining groups stay whole.

    Raises:
        PruneError: the FLOPs target cannot be reached, or inconsistent options.
    """
    _check_options(ratio, flops, scope)
    target = flops if flops is not None else ratio
    analysis = DependencyGraph(graph)
    before = count_flops(graph).total
    report = PruneReport("channels", flops_before=before, params_before=_params(graph),
                         target=(f"flops=-{flops:.0%}" if flops is not None else
                                 f"ratio={target}") + (", scope=global" if scope == "global"
                                                       else ""))
    grads = None
    if importance == "taylor":
        if data is None:
            raise PruneError("importance=taylor needs data=[(inputs, target), ...] (and loss=)")
        grads = taylor_gradients(graph, data, loss)
    order, ranked_scores, used = _rank_groups(analysis, report, importance, exclude, grads)

    if scope == "global":
        counts = _solve_global(graph, analysis, order, ranked_scores, before, flops, ratio,
                               max_ratio, round_to)
    else:
        counts = _layer_counts_for_target(graph, analysis, order, before, flops, ratio,
                                          max_ratio, round_to)
    _remove_groups(graph, analysis, order, counts, report,
                   rw if rw is not None else Rewriter(graph))
    graph.verify()
    report.flops_after = count_flops(graph).total
    report.params_after = _params(graph)
    _note_importance_fallback(report, importance, used)
    return report


def _check_options(ratio, flops: float | None, scope: str) -> None:
    """Raise PruneError for a combination of ``prune_channels`` options that has no meaning."""
    if (ratio is None) == (flops is None):
        raise PruneError("give exactly one of ratio= (per group) or flops= (global target)")
    if scope not in ("layer", "global"):
        raise PruneError(f"scope='{scope}' must be 'layer' or 'global'")
    if scope == "global" and isinstance(ratio, Mapping):
        raise PruneError("scope='global' ranks all groups together: give flops= or one float "
                         "ratio= (per-pattern ratios need scope='layer')")
    if flops is not None and not 0.0 <= flops < 1.0:
        raise PruneError(f"flops={flops}: the fraction of FLOPs to remove must be in [0, 1)")


def _rank_groups(analysis: DependencyGraph, report: PruneReport, importance, exclude, grads):
    """Report every group, and rank the channels of each one that may be pruned.

    Returns ``(order, ranked_scores, used)`` keyed by group index: the removable channels
    weakest first, their normalized scores in the same order, and the importance actually used.
    """
    order: dict[int, np.ndarray] = {}
    ranked_scores: dict[int, np.ndarray] = {}  # normalized, ascending, aligned with order[g]
    used: dict[int, str] = {}
    for g in analysis.groups:
        entry = GroupReport(g.name, g.kind, g.size,
                            members=[f"{m.value.name}[{m.axis}]:{m.role}" for m in g.members])
        report.groups.append(entry)
        if not g.prunable:
            entry.skipped = "; ".join(g.reasons) if g.reasons else "nothing to prune"
            continue
        if exclude and g.matches(exclude):
            entry.skipped = "excluded by pattern"
            continue
        if callable(importance):
            scores, used[g.index] = np.asarray(importance(analysis, g), np.float64), "custom"
        else:
            scores, used[g.index] = group_scores(analysis, g, importance, grads)
        protected = analysis.protected(g, scores)
        by_score = np.argsort(scores, kind="stable")
        ranked = g.channels[by_score]
        candidate = ~np.isin(ranked, protected)
        order[g.index] = ranked[candidate]
        ranked_scores[g.index] = normalized(scores)[by_score][candidate]
        entry.importance = used[g.index]
        if g.reasons:
            entry.skipped = ""
            report.notes.append(f"{g.name}: {len(g.frozen_channels)} channels kept "
                                f"({'; '.join(g.reasons[:2])})")
    return order, ranked_scores, used


def _layer_counts_for_target(graph, analysis, order, before, flops, ratio, max_ratio,
                             round_to) -> dict[int, int]:
    """``scope="layer"``: channels to remove per group, from the ratio or the FLOPs target."""
    def layer_counts(r: float | Mapping[str, float]) -> dict[int, int]:
        return {g.index: _count(g, _group_ratio(g, r), max_ratio, len(order[g.index]),
                                round_to) for g in analysis.groups if g.index in order}

    if flops is not None:
        ratio = _solve_ratio(graph, analysis, order, layer_counts, before, flops, max_ratio)
    return layer_counts(ratio)


def _remove_groups(graph, analysis, order, counts, report: PruneReport, rw: Rewriter) -> None:
    """Remove the planned channels group by group, recording each group's count in ``report``."""
    # One rewrite per group (its channels out of every tensor that carries them), through the
    # rewriter's edit API: counted in the pass report, and bisect can stop after any group.
    done = np.zeros(0, np.int64)
    for g, k in counts.items():
        if not k:
            continue
        group = analysis.groups[g]
        if not rw.edit(PRUNE_GROUP, f"group {group.name} (-{k} of {group.size} {group.kind})"):
            break
        part = order[g][:k]
        remove_channels(graph, analysis, part, before=done, verify=False)
        done = np.concatenate([done, part])
        report.groups[g].removed = k


def _note_importance_fallback(report: PruneReport, importance, used: Mapping[int, str]) -> None:
    """Note in ``report`` the groups that could not use the requested importance."""
    if used and any(v != importance for v in used.values()) and isinstance(importance, str):
        fallback = sorted({report.groups[i].name for i, v in used.items() if v != importance})
        report.notes.append(f"{importance} unavailable for {len(fallback)} groups "
                            f"(no batch norm): used l1")


def _removed(order: Mapping[int, np.ndarray], counts: Mapping[int, int]) -> np.ndarray:
    parts = [order[g][:k] for g, k in counts.items()]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _cut(graph, analysis, before: int, order, counts) -> float:
    return 1.0 - count_flops(graph, analysis.new_shapes(_removed(order, counts))).total / \
        max(before, 1)


def _unreachable(flops: float, best: float, max_ratio: float) -> PruneError:
    return PruneError(
        f"cannot remove {flops:.0%} of the FLOPs: pruning every prunable group by "
        f"{max_ratio:.0%} removes {best:.1%} (raise max_ratio, or see "
        f"DependencyGraph(graph).report() for the groups left alone and why)")


def _solve_ratio(graph, analysis, order, layer_counts, before: int, flops: float,
                 max_ratio: float) -> float:
    def cut(r: float) -> float:
        return _cut(graph, analysis, before, order, layer_counts(r))

    best = cut(max_ratio)
    if best + 1e-9 < flops:
        raise _unreachable(flops, best, max_ratio)
    lo, hi = 0.0, max_ratio
    for _ in range(40):
        mid = (lo + hi) / 2
        if cut(mid) >= flops:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-4:
            break
    return hi


def _solve_global(graph, analysis, order, ranked_scores, before: int, flops: float | None,
                  ratio: float | None, max_ratio: float, round_to: int) -> dict[int, int]:
    """Per-group removal counts for scope='global': the shortest prefix of the global order
    (each group's candidates past ``max_ratio`` of it dropped; counts then rounded) reaching
    the FLOPs target, or holding the float ``ratio`` of all the groups' channels."""
    groups = {g.index: g for g in analysis.groups if g.index in order}
    gids = global_order(ranked_scores)
    # The floor: a group's candidates past its cap leave the order (the next ones move up).
    keep = np.zeros(len(gids), dtype=bool)
    for i, g in groups.items():
        keep[np.flatnonzero(gids == i)[: _count(g, max_ratio, max_ratio, len(order[i]))]] = True
    gids = gids[keep]
    size = max(groups, default=-1) + 1

    def counts(k: int) -> dict[int, int]:
        taken = np.bincount(gids[:k], minlength=size)
        return {i: _rounded(g, int(taken[i]), len(order[i]), round_to)
                for i, g in groups.items()}

    n = len(gids)
    if flops is None:  # a fraction of all the groups' channels
        total = sum(g.size for g in groups.values())
        return counts(min(n, int(math.floor(float(ratio) * total + 1e-9))))
    best = _cut(graph, analysis, before, order, counts(n))
    if best + 1e-9 < flops:
        raise _unreachable(flops, best, max_ratio)
    lo, hi = 0, n  # cut(hi) >= flops; the cut only grows with k
    while lo < hi:
        mid = (lo + hi) // 2
        if _cut(graph, analysis, before, order, counts(mid)) >= flops:
            hi = mid
        else:
            lo = mid + 1
    return counts(hi)


def _params(graph: Graph) -> int:
    return int(sum(v.data.size for v in graph.constants.values()
                   if v.dtype.is_floating and v.data.ndim >= 1))
