"""Channel importance for structured pruning: L1/L2 magnitude, BN scale, first-order Taylor.

Every criterion scores each channel of a ``ChannelGroup`` from the group's constant members:

* ``l1`` / ``l2``: the L1 norm / squared L2 norm of the channel's slice of every weight in the
  group (producer rows *and* consumer columns, as in DepGraph's group norm);
* ``bn``: ``|gamma|`` of the group's batch norms (Network Slimming); groups without a batch
  norm fall back to ``l1`` (reported);
* ``taylor``: ``|sum(w * dL/dw)|`` over the channel's slice (Molchanov et al. 2019), with
  gradients averaged over a few batches run through ``graphopt.to_torch``.

A group mixes weights of different scales (a conv's rows, the next conv's columns), so each
member's per-channel scores are divided by their mean before they are summed.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.prune.dependency import WEIGHT_ROLES, ChannelGroup, DependencyGraph

CRITERIA = ("l1", "l2", "bn", "taylor")


def _per_position(data: np.ndarray, axis: int, fn: Callable[[np.ndarray], np.ndarray]):
    other = tuple(i for i in range(data.ndim) if i != axis)
    return fn(data).sum(axis=other) if other else fn(data)


def group_scores(
    analysis: DependencyGraph,
    group: ChannelGroup,
    criterion: str = "l1",
    grads: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, str]:
    """Scores of ``group.channels`` (higher = keep) and the criterion actually used."""
    if criterion not in CRITERIA:
        raise GraphoptError(f"unknown importance '{criterion}'; known: {', '.join(CRITERIA)}")
    every = np.sort(np.concatenate([group.channels, group.frozen_channels]))
    used = criterion
    members = [m for m in group.members if m.role in WEIGHT_ROLES]
    if criterion == "bn":
        bn = [m for m in group.members if m.role == "bn"]
        if bn:
            members = bn
        else:
            used = "l1"
    if criterion == "taylor":
        if grads is None:
            raise GraphoptError("taylor importance needs gradients: pass data (and loss)")
        members = [m for m in members if m.value.name in grads] or members
    total = np.zeros(len(every))
    for m in members:
        data = m.value.data.astype(np.float64)
        if used in ("l1", "bn"):
            per_pos = _per_position(data, m.axis, np.abs)
        elif used == "l2":
            per_pos = _per_position(data, m.axis, np.square)
        else:
            g = grads.get(m.value.name) if grads else None
            if g is None:
                per_pos = _per_position(data, m.axis, np.abs)
            else:
                per_pos = _per_position(data * g.astype(np.float64), m.axis, lambda a: a)
        local = np.searchsorted(every, analysis.labels_of(m.value, m.axis))
        per_channel = np.bincount(local, weights=per_pos, minlength=len(every))
        if used == "taylor":
            per_channel = np.abs(per_channel)
        covered = np.bincount(local, minlength=len(every)) > 0
        mean = per_channel[covered].mean() if covered.any() else 0.0
        if mean > 0:
            total += per_channel / mean
    return total[np.searchsorted(every, group.channels)], used


def taylor_gradients(
    graph: Graph,
    data: Iterable,
    loss: Callable | None = None,
    batches: int = 4,
) -> dict[str, np.ndarray]:
    """Mean gradient of the loss w.r.t. every floating constant, over up to ``batches`` batches.

    ``data`` yields ``(inputs, target)`` pairs (inputs: a tensor or a tuple of model arguments);
    ``loss(outputs, target)`` defaults to cross-entropy on the first output.
    """
    import torch

    from graphopt.prune.finetune import _as_args, _first_tensor, _module_params

    module = graphopt_to_torch(graph)
    module.eval()
    params = _module_params(graph, module)
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for i, batch in enumerate(data):
        if i >= batches:
            break
        x, y = batch if isinstance(batch, (tuple, list)) and len(batch) == 2 else (batch, None)
        module.zero_grad(set_to_none=True)
        out = module(*_as_args(x))
        if loss is not None:
            value = loss(out, y)
        elif y is not None:
            value = torch.nn.functional.cross_entropy(_first_tensor(out), y)
        else:
            raise GraphoptError("taylor importance needs a loss or (inputs, target) batches")
        value.backward()
        for name, p in params.items():
            if p.grad is not None:
                sums[name] = sums.get(name, 0) + p.grad.detach()
        count += 1
    if not count:
        raise GraphoptError("taylor importance got no batches")
    return {name: (g / count).numpy() for name, g in sums.items()}


def graphopt_to_torch(graph: Graph):
    from graphopt.backends.torch_module import to_torch

    return to_torch(graph)
