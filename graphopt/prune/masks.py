"""Unstructured pruning: masks over weight constants, folded into the weights as zeros.

A mask is a boolean array per weight (True = keep). ``magnitude_masks`` keeps the largest
``|w|`` (or the largest user-given score) either per weight (``scope="layer"``: every weight
reaches ``sparsity``) or with one threshold across all weights (``scope="global"``: the union
reaches ``sparsity``; layers with small weights lose more). ``apply_masks`` multiplies the masks
into the constants (the graph stays dense and runs everywhere) and records each weight's CSR
form (``sparse.attach_sparse``) so a backend can pick a sparse kernel. Masking one weight is one
rewrite (``mask-weight``) through the rewriter's edit API: the pass report counts them and
``graphopt.bisect`` can stop after any one of them.

Eligible weights: the ``weights`` operand of the ops with the PRUNABLE trait
(``linear``/``conv``/``conv_transpose``/``matmul`` and their fused forms; for matmul either
constant operand), floating, rank >= 2. Embeddings, biases and norm parameters are never masked.
"""

from __future__ import annotations

import fnmatch
from typing import Mapping, Sequence

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph, Value
from graphopt.ops.registry import IN_OUT, PRUNABLE, get_op
from graphopt.prune.flops import count_flops
from graphopt.prune.report import PruneReport, WeightReport
from graphopt.prune.sparse import attach_sparse
from graphopt.rewrite.rewriter import Rewriter

MASK_WEIGHT = "mask-weight"


def weight_operands(graph: Graph) -> dict[Value, bool]:
    """Eligible weight constants -> whether their CSR is of the transpose (matmul ``[K, N]``)."""
    out: dict[Value, bool] = {}
    for node in graph.nodes:
        opdef = get_op(node.op)
        spec = opdef.weights
        if PRUNABLE not in opdef.traits or spec is None:
            continue
        # An [in, out] weight (matmul's right operand) is stored as the CSR of its transpose.
        candidates: list[tuple[Value | None, bool]] = [
            (node.inputs[spec.slot], spec.layout_for(node.attrs) == IN_OUT)]
        if spec.lhs_slot is not None:
            candidates.append((node.inputs[spec.lhs_slot], False))
        for value, transposed in candidates:
            if (value is not None and value.is_constant and value.dtype.is_floating
                    and value.data.ndim >= 2 and value.data.size > 1):
                if transposed and value.data.ndim != 2:
                    continue
                out.setdefault(value, transposed)
    return out


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*")
               for p in exclude)


def magnitude_masks(
    graph: Graph,
    sparsity: float,
    scope: str = "layer",
    scores: Mapping[str, np.ndarray] | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """Boolean keep-masks ``{constant name: mask}`` reaching ``sparsity`` (see module doc).

    Ties at the threshold are broken by position so that exactly ``round(sparsity * n)``
    weights are dropped.
    """
    if not 0.0 <= sparsity < 1.0:
        raise GraphoptError(f"sparsity={sparsity} must be in [0, 1)")
    if scope not in ("layer", "global"):
        raise GraphoptError(f"scope='{scope}' must be 'layer' or 'global'")
    scores = dict(scores or {})
    weights = [v for v in weight_operands(graph) if not _excluded(v.name, exclude)]
    unknown = set(scores) - {v.name for v in weights}
    if unknown:
        raise GraphoptError(f"scores given for constants that are not prunable weights: "
                            f"{sorted(unknown)[:5]}")

    def score(v: Value) -> np.ndarray:
        s = scores.get(v.name)
        s = np.abs(v.data) if s is None else np.asarray(s, dtype=np.float64)
        if s.shape != v.data.shape:
            raise GraphoptError(f"scores for %{v.name} have shape {s.shape}, weight {v.type}")
        return s.astype(np.float64).ravel()

    masks: dict[str, np.ndarray] = {}
    if scope == "layer":
        for v in weights:
            masks[v.name] = _keep_top(score(v), sparsity).reshape(v.data.shape)
    elif weights:
        flat = [score(v) for v in weights]
        keep = _keep_top(np.concatenate(flat), sparsity)
        start = 0
        for v, s in zip(weights, flat):
            masks[v.name] = keep[start: start + s.size].reshape(v.data.shape)
            start += s.size
    return masks


def _keep_top(score: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask dropping the ``round(sparsity * n)`` lowest scores, ties by position.

    Same result as dropping the first entries of a stable argsort, in O(n): the threshold is
    the drop-th smallest score (``np.partition``); everything below it goes, and of the scores
    equal to it the first ones by position (a stable sort of BERT-base's weights took seconds).
    """
    drop = int(round(sparsity * score.size))
    keep = np.ones(score.size, dtype=bool)
    if drop:
        threshold = np.partition(score, drop - 1)[drop - 1]
        below = score < threshold
        keep[below] = False
        ties = np.flatnonzero(score == threshold)
        keep[ties[: drop - int(below.sum())]] = False
    return keep


def apply_masks(graph: Graph, masks: Mapping[str, np.ndarray],
                rw: Rewriter | None = None) -> list[WeightReport]:
    """Fold ``masks`` into the constants (zeros) and record their CSR form; in place.

    Each weight is one rewrite (``mask-weight``) through ``rw`` (default: a new one on
    ``graph``); when the rewrite budget is spent the remaining weights stay as they are (the
    report lists the masked ones)."""
    from graphopt.prune.structured import set_constant_data

    rw = rw if rw is not None else Rewriter(graph)
    transposed = {v.name: t for v, t in weight_operands(graph).items()}
    checked = []
    for name, mask in masks.items():
        value = graph.constants.get(name)
        if value is None:
            raise GraphoptError(f"mask for unknown constant '{name}'")
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != value.data.shape:
            raise GraphoptError(f"mask for %{name} has shape {mask.shape}, weight {value.type}")
        checked.append((name, value, mask))
    out = []
    for name, value, mask in checked:  # all masks checked first: no half-applied error
        if not rw.edit(MASK_WEIGHT, f"const %{name}"):
            break
        set_constant_data(value, np.where(mask, value.data, np.zeros((), value.data.dtype)))
        sw = attach_sparse(value, transposed.get(name, False))
        out.append(WeightReport(name, tuple(value.data.shape), sw.sparsity))
    return out


def prune_magnitude(
    graph: Graph,
    sparsity: float,
    scope: str = "layer",
    scores: Mapping[str, np.ndarray] | None = None,
    exclude: Sequence[str] = (),
    rw: Rewriter | None = None,
) -> PruneReport:
    """Unstructured pruning of ``graph`` in place; returns the report. Each masked weight is
    one rewrite (``mask-weight``) through ``rw`` (default: a new one on ``graph``)."""
    flops = count_flops(graph).total
    report = PruneReport("magnitude", flops_before=flops, flops_after=flops,
                         target=f"sparsity={sparsity:.0%}, scope={scope}")
    report.params_before = report.params_after = sum(
        v.data.size for v in weight_operands(graph))
    masks = magnitude_masks(graph, sparsity, scope, scores, exclude)
    report.weights = apply_masks(graph, masks, rw)
    report.notes.append("weights stay dense (zeros folded in); FLOPs are dense FLOPs. "
                        "CSR records let a backend pick a sparse kernel.")
    return report
