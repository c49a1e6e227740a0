"""Drift of a deployed model: its accuracy on new labelled data against the accuracy it was
deployed with (``graphopt drift DIR --data new.npz``).

A scheduler runs it on fresh data; a drop past the threshold exits non-zero, which is the
signal to re-tune (``graphopt tune --storage ... --study ...`` continues the same study). The
model is a model directory (graphopt.save, or the ``model/`` that ``graphopt tune`` writes);
the baseline is ``--baseline`` or the ``accuracy`` (else ``metric``) the manifest's figures
hold. Accuracy is top-1: the first output's argmax over its last axis against the labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph


@dataclass
class DriftReport:
    items: int
    accuracy: float  # % on the new data
    baseline: float  # %
    max_drop: float

    @property
    def drop(self) -> float:
        return self.baseline - self.accuracy

    @property
    def drifted(self) -> bool:
        return self.drop > self.max_drop

    def __str__(self) -> str:
        verdict = "DRIFTED: re-tune" if self.drifted else "ok"
        return (f"accuracy {self.accuracy:.2f}% on {self.items} new items, baseline "
                f"{self.baseline:.2f}% ({-self.drop:+.2f} pt; allowed drop {self.max_drop} "
                f"pt): {verdict}")


def accuracy(graph: Graph, data: list[tuple], labels: np.ndarray) -> float:
    """Top-1 accuracy (%) of ``graph`` on ``data`` (one item per label)."""
    import torch.utils._pytree as pytree

    from graphopt.interpreter import flatten_inputs, run_flat

    labels = np.asarray(labels).reshape(len(data), -1)
    right = total = 0
    for item, want in zip(data, labels):
        out = run_flat(graph, flatten_inputs(graph, tuple(item), {}))
        first = np.asarray(pytree.tree_leaves(out)[0])
        got = first.reshape(-1, first.shape[-1]).argmax(-1)
        if got.size != want.size:
            raise GraphoptError(f"labels: {want.size} per item, the model gives {got.size} "
                                "predictions per item")
        right += int((got == want).sum())
        total += got.size
    return 100.0 * right / max(total, 1)


def baseline_of(figures: dict | None, given: float | None) -> float:
    if given is not None:
        return float(given)
    for key in ("accuracy", "metric"):
        value = (figures or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    raise GraphoptError("no baseline: the manifest's figures hold no 'accuracy' or 'metric'; "
                        "pass --baseline (the accuracy in % the model was deployed with)")
