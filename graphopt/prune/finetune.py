"""Recovery after pruning: train the graph's weights with a loss or by distillation.

``finetune(graph, train_data, loss=..., teacher=...)`` lowers the graph with ``to_torch``, trains
its constants (as ``nn.Parameter``s) and writes the trained values back into a copy of the graph,
so the result keeps the graph's structure (and pruned shapes) exactly.

Knowledge distillation (``teacher=`` the unpruned graph, a module or a callable): the student
matches the teacher's softened outputs, ``T^2 * KL(softmax(t/T) || softmax(s/T))`` on the first
output (the logits), Hinton et al. 2015. With a ``loss`` and targets as well, the two are mixed:
``alpha * kd + (1 - alpha) * loss``. ``feature_matching`` adds an MSE between intermediate
values the two graphs share by name and shape (normalized by the teacher's variance), e.g. the
residual stream a structured pruning left whole.

Unstructured sparsity survives training: weights that carry a CSR record (``sparse.py``) keep
their zeros (the mask is re-applied after every step) and get a fresh record at the end.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ops.registry import NORMALIZATION, get_op


def _as_args(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _first_tensor(out: Any):
    import torch
    import torch.utils._pytree as pytree

    for leaf in pytree.tree_leaves(out):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            return leaf
    raise GraphoptError("the model has no floating-point output to train on")


def trainable_constants(graph: Graph) -> list[Value]:
    """Floating constants of rank >= 1, minus running statistics (``OpDef.statistics``:
    batch norm's mean / var)."""
    stats = {id(n.inputs[s]) for n in graph.nodes for s in get_op(n.op).statistics
             if s < len(n.inputs) and n.inputs[s] is not None}
    return [v for v in graph.constants.values()
            if v.data.dtype in (np.float16, np.float32, np.float64) and v.data.ndim >= 1
            and id(v) not in stats and v.uses]


def _module_params(graph: Graph, module) -> dict[str, Any]:
    """Constant name -> the module's Parameter holding it (constants that the code uses).

    Only ``trainable_constants`` keep ``requires_grad``: to_torch makes every floating constant
    a Parameter, but batch norm refuses gradients for its running statistics.
    """
    from graphopt.backends.torch_module import attribute_paths

    params = dict(module.graph_module.named_parameters())
    paths = attribute_paths(list(graph.constants))
    found = {name: params[path] for name, path in paths.items() if path in params}
    trainable = {v.name for v in trainable_constants(graph)}
    for name, p in found.items():
        p.requires_grad_(name in trainable)
    return found


def _with_features(graph: Graph, names: Sequence[str]) -> Graph:
    """A copy of ``graph`` returning its outputs flat, then the values ``names``."""
    g = graph.clone()
    by_name = {v.name: v for v in g.values()}
    g.outputs = list(g.outputs) + [by_name[n] for n in names]
    g.output_spec = None
    return g


def _on_residual_stream(node: Node) -> bool:
    """A norm, a residual add, or a layer with a fused residual operand."""
    opdef = get_op(node.op)
    if NORMALIZATION in opdef.traits:
        return True
    spec = opdef.weights
    if spec is not None and spec.residual is not None:
        return True
    # op-name check: the unfused residual join is an ``add`` by definition; a trait would mark
    # this one op only.
    return node.op == "add"


def _auto_features(student: Graph, teacher: Graph, limit: int = 8) -> list[str]:
    """Values both graphs have with the same name and shape: residual adds and norms."""
    theirs = {v.name: v for v in teacher.values()}
    found = []
    for node in student.nodes:
        if not _on_residual_stream(node):
            continue
        for v in node.outputs:
            t = theirs.get(v.name)
            if (t is not None and t.producer is not None and v.dtype.is_floating
                    and tuple(t.type.shape) == tuple(v.type.shape)
                    and not v.is_graph_output):
                found.append(v.name)
    if len(found) > limit:  # evenly spaced
        found = [found[round(i * (len(found) - 1) / (limit - 1))] for i in range(limit)]
    return found


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def finetune(
    graph: Graph,
    train_data: Iterable,
    loss: Callable | None = None,
    teacher: Graph | Callable | None = None,
    epochs: int = 1,
    lr: float = 1e-3,
    temperature: float = 4.0,
    feature_matching: bool | Sequence[str] = False,
    seed: int = 0,
    *,
    alpha: float = 0.5,
    feature_weight: float = 1.0,
    weight_decay: float = 0.0,
    progress: bool = True,
    config: Any = None,
) -> Graph:
    """Train a copy of ``graph`` and return it optimized (constants trained, then the "default"
    pipeline: batch norms folded, activations fused).

    Args:
        graph: the (pruned) graph; its batch dim must accept the training batches (trace with
            ``dynamic_shapes`` for a symbolic batch, or with the training batch size).
        train_data: a re-iterable of batches: ``(inputs, target)`` pairs, or ``inputs`` alone
            when distilling without targets. ``inputs`` is a tensor or a tuple of arguments.
        loss: ``loss(outputs, target) -> scalar`` (outputs in the model's structure).
        teacher: the unpruned graph (or any callable model) to distill from.
        epochs, lr: Adam epochs over ``train_data`` and learning rate.
        temperature: distillation temperature T.
        feature_matching: True (auto-pick shared values) or a list of value names.
        seed: seeds Python, numpy and torch (data order of torch loaders included).
        alpha: weight of distillation vs ``loss`` when both apply.
        feature_weight: weight of the feature-matching term.
        weight_decay: Adam weight decay.
        progress: show a tqdm progress bar.
        config: a ``graphopt.prune.FinetuneConfig`` holding the options ``epochs`` to
            ``progress`` (leave those keywords at their defaults then).

    Returns:
        A new graph with the trained weights, optimized.
    """
    from graphopt.prune.config import FinetuneConfig

    cfg = FinetuneConfig.resolve(
        config, epochs=epochs, lr=lr, temperature=temperature,
        feature_matching=feature_matching, seed=seed, alpha=alpha,
        feature_weight=feature_weight, weight_decay=weight_decay, progress=progress)
    if loss is None and teacher is None:
        raise GraphoptError("finetune needs a loss, a teacher, or both")
    _seed_everything(cfg.seed)
    run = _Training.start(graph, loss, teacher, cfg)
    _train(run, train_data)
    return _optimized(run.trained_graph())


def _optimized(graph: Graph) -> Graph:
    """The trained graph through the "default" pipeline (issue #24: every compression entry
    point returns an optimized graph): a graph trained with its batch norms comes back with
    them folded. Idempotent on an optimized graph, whose arrays (and CSR records) it keeps."""
    from graphopt.transform.manager import optimize

    return optimize(graph, "default")


class _Training:
    """One fine-tuning run: the student module, its parameters and masks, the teacher."""

    def __init__(self, graph: Graph, loss, teacher, cfg, features: list[str]) -> None:
        import torch

        from graphopt.backends.torch_module import to_torch
        from graphopt.prune.sparse import sparse_weight

        self.graph, self.loss, self.cfg = graph, loss, cfg
        self.n_out = len(graph.outputs)
        self.student = to_torch(_with_features(graph, features))
        self.student.train()
        self.params = _module_params(graph, self.student)
        self.trainable = {n for n, p in self.params.items() if p.requires_grad}
        self.masks = {}
        for name in self.trainable:
            value = graph.constants[name]
            if sparse_weight(value) is not None and name in self.params:
                self.masks[name] = torch.from_numpy(np.asarray(value.data) != 0)
        self.teacher_is_graph = isinstance(teacher, Graph)
        self.teach = (to_torch(_with_features(teacher, features)).eval()
                      if self.teacher_is_graph else teacher)
        self.optim = torch.optim.Adam(
            [p for n, p in self.params.items() if n in self.trainable], lr=cfg.lr,
            weight_decay=cfg.weight_decay)

    @classmethod
    def start(cls, graph: Graph, loss, teacher, cfg) -> "_Training":
        features: list[str] = []
        if cfg.feature_matching:
            if not isinstance(teacher, Graph):
                raise GraphoptError("feature_matching needs the teacher as a graphopt Graph")
            features = (list(cfg.feature_matching)
                        if not isinstance(cfg.feature_matching, bool)
                        else _auto_features(graph, teacher))
        return cls(graph, loss, teacher, cfg, features)

    def split(self, out):
        """The model's outputs (in its structure) and the extra feature values."""
        import torch.utils._pytree as pytree

        flat = list(out) if isinstance(out, tuple) else [out]
        main = flat[:self.n_out]
        structured = (pytree.tree_unflatten(main, self.graph.output_spec)
                      if self.graph.output_spec is not None else
                      (main[0] if self.n_out == 1 else tuple(main)))
        return structured, flat[self.n_out:]

    def step(self, batch) -> float:
        """One optimizer step on ``batch``; returns the loss."""
        import torch

        x, y = (batch if isinstance(batch, (tuple, list)) and len(batch) == 2
                else (batch, None))
        args = _as_args(x)
        out, feats = self.split(self.student(*args))
        terms = self._distill_terms(args, out, feats, has_target=y is not None)
        if self.loss is not None and y is not None:
            weight = (1.0 - self.cfg.alpha) if self.teach is not None else 1.0
            terms.append(weight * self.loss(out, y))
        if not terms:
            raise GraphoptError("batch without target and no teacher: nothing to train on")
        value = sum(terms)
        self.optim.zero_grad(set_to_none=True)
        value.backward()
        self.optim.step()
        if self.masks:
            with torch.no_grad():
                for name, mask in self.masks.items():
                    self.params[name].mul_(mask)
        return float(value.detach())

    def _distill_terms(self, args, out, feats, has_target: bool) -> list:
        """KD on the first output (+ feature matching) against the teacher, if any."""
        import torch
        import torch.nn.functional as F

        if self.teach is None:
            return []
        with torch.no_grad():
            t_raw = self.teach(*args)
        t_out, t_feats = self.split(t_raw) if self.teacher_is_graph else (t_raw, [])
        s_logits, t_logits = _first_tensor(out), _first_tensor(t_out)
        T = self.cfg.temperature
        kd = F.kl_div(F.log_softmax(s_logits / T, -1), F.log_softmax(t_logits / T, -1),
                      reduction="batchmean", log_target=True) * T * T
        weight = self.cfg.alpha if (self.loss is not None and has_target) else 1.0
        terms = [weight * kd]
        for s_f, t_f in zip(feats, t_feats):
            scale = t_f.var().clamp_min(1e-8)
            terms.append(self.cfg.feature_weight * F.mse_loss(s_f, t_f) / scale / len(feats))
        return terms

    def trained_graph(self) -> Graph:
        """A copy of the graph with the trained constants (and fresh CSR records)."""
        from graphopt.prune.sparse import attach_sparse, sparse_weight
        from graphopt.prune.structured import set_constant_data

        result = self.graph.clone()
        for name, p in self.params.items():
            if name in self.trainable:
                value = result.constants[name]
                set_constant_data(value, p.detach().cpu().numpy().astype(value.data.dtype))
                if name in self.masks:
                    attach_sparse(value, sparse_weight(self.graph.constants[name]).transposed)
        return result


def _train(run: _Training, train_data: Iterable) -> None:
    """``epochs`` passes over ``train_data`` with a progress bar; stops on a non-finite loss."""
    from tqdm.auto import tqdm

    total = None
    try:
        total = run.cfg.epochs * len(train_data)  # type: ignore[arg-type]
    except TypeError:
        pass
    bar = tqdm(total=total, desc="finetune", disable=not run.cfg.progress, leave=False)
    for epoch in range(run.cfg.epochs):
        for batch in train_data:
            value = run.step(batch)
            if not math.isfinite(value):
                raise GraphoptError(f"finetune diverged (loss {value}) in epoch {epoch}")
            bar.set_postfix(loss=f"{value:.4f}", epoch=epoch)
            bar.update(1)
    bar.close()
