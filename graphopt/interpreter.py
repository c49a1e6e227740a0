"""The reference interpreter: runs a graph node by node with each op's reference implementation.

It is the ground truth every pass and backend is checked against, so it favours clarity and
exact torch semantics over speed (it is still fast: the references are torch kernels).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import sympy
import torch
import torch.utils._pytree as pytree

from graphopt.errors import GraphoptError, InputMismatchError
from graphopt.ir.attrs import has_symbols, substitute_symbols
from graphopt.ir.dtypes import DType, numpy_to_torch
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.types import dims_equal


def reorder_kwargs(kwargs: dict, spec: Any) -> dict:
    """Keyword inputs in the order the model was traced with (pytree flattens dicts in order)."""
    if not kwargs or spec is None or spec.type is not tuple or spec.num_children != 2:
        return dict(kwargs)
    kwargs_spec = spec.child(1)
    if kwargs_spec.type is not dict or set(kwargs_spec.context) != set(kwargs):
        return dict(kwargs)
    return {k: kwargs[k] for k in kwargs_spec.context}


def flatten_inputs(graph: Graph, args: Sequence[Any], kwargs: dict | None) -> list[torch.Tensor]:
    """The tensor leaves of ``(args, kwargs)`` in graph-input order, as torch tensors."""
    leaves = pytree.tree_leaves((tuple(args), reorder_kwargs(kwargs or {}, graph.input_spec)))
    tensors = [
        torch.from_numpy(np.require(x, requirements="C")) if isinstance(x, np.ndarray) else x
        for x in leaves
        if isinstance(x, (torch.Tensor, np.ndarray))
    ]
    if len(tensors) != len(graph.inputs):
        expected = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
        raise InputMismatchError(
            f"graph '{graph.name}' takes {len(graph.inputs)} tensor input(s) ({expected}), "
            f"got {len(tensors)}"
        )
    return tensors


def bind_symbols(graph: Graph, tensors: Sequence[torch.Tensor]) -> dict[sympy.Symbol, int]:
    """Check input dtypes/shapes and bind each size symbol to its run-time value."""
    bindings: dict[sympy.Symbol, int] = {}
    for value, tensor in zip(graph.inputs, tensors):
        if DType.from_torch(tensor.dtype) != value.dtype:
            raise InputMismatchError(
                f"input %{value.name} expects dtype {value.dtype}, got {tensor.dtype}"
            )
        if tensor.dim() != value.type.rank:
            raise InputMismatchError(
                f"input %{value.name} expects shape {value.type}, got {tuple(tensor.shape)}"
            )
        for axis, (dim, actual) in enumerate(zip(value.shape, tensor.shape)):
            if isinstance(dim, int):
                if dim != actual:
                    raise InputMismatchError(
                        f"input %{value.name} expects {value.type}, got shape "
                        f"{tuple(tensor.shape)} (dim {axis})"
                    )
            elif dim.is_Symbol:
                if bindings.setdefault(dim, int(actual)) != actual:
                    raise InputMismatchError(
                        f"size {dim} is {bindings[dim]} elsewhere but {actual} on dim {axis} "
                        f"of input %{value.name}"
                    )
    for value, tensor in zip(graph.inputs, tensors):  # composite dims like 2*s0
        for axis, (dim, actual) in enumerate(zip(value.shape, tensor.shape)):
            if not isinstance(dim, int) and not dim.is_Symbol:
                if not dims_equal(dim.subs(bindings), actual):
                    raise InputMismatchError(
                        f"input %{value.name} dim {axis} must be {dim}, got {actual}"
                    )
    return bindings


def node_attrs(node: Node, bindings: dict) -> dict[str, Any]:
    attrs = dict(node.attrs)
    if bindings:
        attrs = {k: substitute_symbols(v, bindings) if has_symbols(v) else v
                 for k, v in attrs.items()}
    return attrs


def constant_tensors(graph: Graph) -> dict[int, torch.Tensor]:
    """The graph's constants as torch tensors, for ``run_flat(..., constants=)``: loops that run
    one graph many times (calibration) convert them once (a transposed weight is a copy)."""
    return {id(v): numpy_to_torch(v.data, v.dtype) for v in graph.constants.values()}


def run_flat(graph: Graph, tensors: Sequence[torch.Tensor],
             observe: Callable[[Value, torch.Tensor], None] | None = None,
             constants: dict[int, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Run on flat torch inputs; returns the flat list of outputs (graph.outputs order).

    Each intermediate tensor is released after its last use, so a run holds the live set of
    the forward pass, not every activation (what makes calibrating a large model one layer's
    activations at a time possible). ``observe(value, tensor)`` is called for each graph input
    and each node output as it is computed (before it can be released): calibration
    statistics stream through it without keeping the tensors. ``constants``: what
    ``constant_tensors(graph)`` returned (default: converted for this run).
    """
    bindings = bind_symbols(graph, tensors)
    last_use = _last_uses(graph)
    kept = {id(v) for v in graph.outputs} | {id(v) for v in graph.constants.values()}
    env: dict[int, torch.Tensor] = {}
    for value, tensor in zip(graph.inputs, tensors):
        env[id(value)] = tensor
        if observe is not None:
            observe(value, tensor)
    env.update(constants if constants is not None else constant_tensors(graph))
    with torch.no_grad():
        for index, node in enumerate(graph.nodes):
            args = [None if v is None else env[id(v)] for v in node.inputs]
            result = _call_reference(node, args, bindings)
            results = result if isinstance(result, (tuple, list)) else (result,)
            del args, result
            for out, tensor in zip(node.outputs, results):
                if observe is not None:
                    observe(out, tensor)
                if last_use.get(id(out), -1) > index or id(out) in kept:
                    env[id(out)] = tensor
            for value in node.inputs:
                if value is not None and last_use.get(id(value)) == index \
                        and id(value) not in kept:
                    env.pop(id(value), None)
    return [env[id(v)] for v in graph.outputs]


def _last_uses(graph: Graph) -> dict[int, int]:
    """id(value) -> index of the last node reading it."""
    last: dict[int, int] = {}
    for index, node in enumerate(graph.nodes):
        for value in node.inputs:
            if value is not None:
                last[id(value)] = index
    return last


def _call_reference(node: Node, args: list, bindings: dict) -> Any:
    try:
        return node.opdef.call_reference(args, node_attrs(node, bindings))
    except GraphoptError:
        raise
    except Exception as exc:
        shapes = ", ".join("None" if a is None else str(tuple(a.shape)) for a in args)
        raise GraphoptError(
            f"reference implementation failed at {node.describe()} on inputs "
            f"({shapes}): {type(exc).__name__}: {exc}"
        ) from exc


def unflatten_outputs(graph: Graph, outputs: list[torch.Tensor]) -> Any:
    """Put flat outputs back into the traced model's output structure."""
    if graph.output_spec is not None:
        return pytree.tree_unflatten(outputs, graph.output_spec)
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def run(graph: Graph, *args: Any, **kwargs: Any) -> Any:
    """Run ``graph`` with the reference interpreter.

    Args:
        graph: the graph to run.
        *args, **kwargs: the model's inputs (torch tensors or numpy arrays, in any pytree
            structure the traced model accepted); their tensor leaves feed the graph inputs.

    Returns:
        torch tensors in the model's own output structure (a single tensor or tuple for graphs
        built by hand or parsed from text).
    """
    tensors = flatten_inputs(graph, args, kwargs)
    return unflatten_outputs(graph, run_flat(graph, tensors))


def value_env(graph: Graph, *args: Any, **kwargs: Any) -> dict[Value, torch.Tensor]:
    """Run and return every value's tensor (for debugging and numeric bisection)."""
    tensors = flatten_inputs(graph, args, kwargs)
    saved = graph.outputs
    everything = [v for v in graph.values()]
    graph.outputs = everything
    try:
        results = run_flat(graph, tensors)
    finally:
        graph.outputs = saved
    return dict(zip(everything, results))
