"""Pruning that turns into real speed: structured (channels, heads, conv groups) and
unstructured (sparse weights), plus recovery by fine-tuning / distillation.

Modules:
    dependency  coupled-dimension analysis: the channel groups of a graph
    importance  l1 / l2 / bn / taylor channel importance
    structured  choose channels per group (ratio or FLOPs target) and remove them
    masks       unstructured magnitude / score masks, folded into the weights
    sparse      CSR metadata on sparse constants, for sparse kernels
    flops       FLOPs counter over IR ops
    finetune    recovery training with a loss or knowledge distillation
    report      PruneReport

Entry points: ``graphopt.prune(graph, method=...)`` and ``graphopt.finetune(...)``; the passes
``prune-channels`` and ``prune-magnitude``. See docs/pruning.md.
"""

from __future__ import annotations

import contextlib
from typing import Mapping, Sequence

from graphopt.errors import GraphoptError, PruneError, entry_point
from graphopt.ir.graph import Graph
from graphopt.prune.config import METHODS, FinetuneConfig, PruneConfig
from graphopt.prune.flops import FlopCount, count_flops
from graphopt.prune.report import GroupReport, PruneReport, WeightReport
from graphopt.stagereport import measure


@entry_point("graphopt.prune")
def prune(
    graph: Graph,
    method: str = "channels",
    *,
    ratio: float | Mapping[str, float] | None = None,
    flops: float | None = None,
    importance="l1",
    sparsity: float | None = None,
    scope: str = "layer",
    scores: Mapping[str, object] | None = None,
    exclude: Sequence[str] | str = (),
    data=None,
    loss=None,
    max_ratio: float = 0.9,
    round_to: int = 1,
    optimize: bool = True,
    report: bool = False,
    config: PruneConfig | None = None,
):
    """Prune a copy of ``graph``; the input graph is not modified.

    Args:
        graph: the graph to prune.
        method: ``"channels"`` (structured: remove channels / heads / conv groups, giving a
            smaller dense graph) or ``"magnitude"`` (unstructured: zero individual weights and
            record their CSR form for sparse kernels).
        ratio: channels: fraction of every group's channels to remove, or ``{glob: ratio}``.
        flops: channels: fraction of the graph's FLOPs to remove (``scope="layer"``: bisects a
            uniform ratio; ``"global"``: removes the weakest channels across all groups).
        importance: channels: ``l1``, ``l2``, ``bn``, ``taylor`` (needs ``data``), or
            ``fn(analysis, group) -> scores`` (one score per ``group.channels``, higher = keep).
        sparsity: magnitude: fraction of weights to zero.
        scope: magnitude: ``"layer"`` (each weight to ``sparsity``) or ``"global"`` (one
            threshold across all weights, reaching ``sparsity`` overall). channels:
            ``"layer"`` (the same ratio in every group) or ``"global"`` (channel groups ranked
            together by normalized importance; uneven per layer, each group keeps at least
            ``1 - max_ratio`` of its channels).
        scores: magnitude: ``{constant name: array}`` importance scores replacing ``|w|``.
        exclude: glob patterns of constant names (``"classifier.*"``, ``"layer.0.*"``) that are
            never modified.
        data, loss: batches ``(inputs, target)`` and ``loss(outputs, target)`` for taylor.
        max_ratio: channels: the most of any group that may be removed (the per-layer floor of
            the global ranking).
        round_to: channels: keep a multiple of this many channels (e.g. 8) in groups of at
            least 4x as many, which vectorized kernels prefer.
        optimize: bring the graph to the form pruning needs and return it optimized (the
            "default" pipeline: batch norms folded, activations fused; issue #24), so the
            result compiles to the kernels it will be timed with. Channel pruning runs on the
            graph as given (batch-norm importance reads its batch norms; attention heads are
            found before attention is fused) and optimizes the result; the report's FLOPs
            before are the given graph's, after the returned graph's. Magnitude pruning zeroes the weights of the
            optimized graph (the arrays that will run, so their CSR records survive), so
            ``scores`` and ``exclude`` name its constants. ``False``: return the graph exactly
            as pruned.
        report: also return a ``PruneReport`` (its ``config`` holds the options; its
            ``stage`` the run's time and peak memory, a ``graphopt.stagereport.StageReport``).
        config: a ``PruneConfig`` holding the options (``method`` to ``round_to``; leave the
            keywords at their defaults then). ``scores``, ``data`` and ``loss`` are data and
            stay arguments.

    Returns:
        The pruned graph, or ``(graph, PruneReport)`` with ``report=True``.

    Example::

        small, rep = graphopt.prune(graph, "channels", flops=0.5, report=True)
        print(rep)      # per group: what was removed; FLOPs before / after
    """
    if not isinstance(graph, Graph):
        raise PruneError(f"graphopt.prune takes a graphopt Graph, got {type(graph).__name__}")
    cfg = PruneConfig.resolve(config, method=method, ratio=ratio, flops=flops,
                              importance=importance, sparsity=sparsity, scope=scope,
                              exclude=exclude, max_ratio=max_ratio, round_to=round_to)
    try:
        with measure(f"prune {cfg.method}") if report else contextlib.nullcontext() as stage:
            out, rep = prune_with_config(graph, cfg, scores=scores, data=data, loss=loss,
                                         optimize=optimize)
    except ValueError as exc:  # option checks deep in the analyses: a typed error, same text
        if isinstance(exc, GraphoptError):
            raise
        raise PruneError(str(exc)) from exc
    rep.stage = stage
    return (out, rep) if report else out


def prune_with_config(graph: Graph, cfg: PruneConfig, *, scores=None, data=None,
                      loss=None, optimize: bool = True) -> tuple[Graph, PruneReport]:
    """``prune`` once its options are checked: a pruned copy of ``graph`` (optimized unless
    ``optimize=False``, see ``prune``) and the report."""
    from graphopt.transform.manager import optimize as run_pipeline

    # Channel pruning reads the graph as given (batch norms for importance="bn", attention
    # still unfused so heads can be found) and is cleaned up after; magnitude pruning zeroes
    # the arrays that will run.
    channels = cfg.method == "channels"
    out = run_pipeline(graph, "default") if optimize and not channels else graph.clone()
    if cfg.method == "channels":
        from graphopt.prune.structured import prune_channels

        rep = prune_channels(out, ratio=cfg.ratio, flops=cfg.flops, importance=cfg.importance,
                             exclude=cfg.exclude, data=data, loss=loss, max_ratio=cfg.max_ratio,
                             round_to=cfg.round_to, scope=cfg.scope)
    else:
        from graphopt.prune.masks import prune_magnitude

        rep = prune_magnitude(out, sparsity=cfg.sparsity, scope=cfg.scope, scores=scores,
                              exclude=cfg.exclude)
    if optimize and channels:
        from graphopt.prune.flops import count_flops

        out = run_pipeline(out, "default")
        rep.flops_after = count_flops(out).total  # the graph returned (batch norms folded)
    rep.config = cfg.to_dict()
    return out, rep


def finetune(*args, **kwargs) -> Graph:
    """See ``graphopt.prune.finetune.finetune``."""
    from graphopt.prune.finetune import finetune as _finetune

    return _finetune(*args, **kwargs)


__all__ = ["FinetuneConfig", "FlopCount", "GroupReport", "METHODS", "PruneConfig", "PruneReport",
           "WeightReport", "count_flops", "finetune", "prune", "prune_with_config"]
