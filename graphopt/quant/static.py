"""Static int8 post-training quantization: calibrate, write the QDQ form, fold to integer ops.

1. **Units.** Every 2-D ``conv`` / ``fused_conv`` and every ``linear`` / ``fused_linear`` /
   ``matmul`` by a constant f32 weight is a quantization unit; a fused activation stays inside
   its unit. ``prepare`` rewrites a unit's residual epilogue out of it (``add`` + activation
   after the unit: the integer ops take no residual) and a matmul by a constant into a linear.
2. **Calibration.** The prepared float graph runs in the reference interpreter over the user's
   argument tuples; an observer (graphopt/quant/observers.py) per observed value collects its
   range. Observed: every unit's output (after its fused activation) unless it is only a graph
   output, and every unit's input, traced back through data-movement ops and max_pool
   (the ops with the ``QDQ_TRANSPARENT`` trait) so those share their source's parameters (as
   onnxruntime does).
3. **QDQ form.** Each observed value ``v`` gets ``dequantize_linear(quantize_linear(v))``
   (per-tensor u8, asymmetric) right after its definition, and all its users read that; each
   unit's weight becomes ``dequantize_linear(w_q i8, w_scale){axis=0}`` (symmetric per output
   channel; the ``w_q`` constant's type carries the ``QuantInfo``). This is the graph
   onnxruntime's quantizer would write, and still a float graph ("fake quantization").
4. **Folding.** ``fold-qdq`` (passes/fold_qdq.py) turns each ``DQ -> unit -> Q`` into
   ``qconv`` / ``qlinear`` and removes the ``Q(DQ(.))`` pairs that the placement created.

Every change is one rewrite through the rewriter (``Rewriter.edit``), so the pass report counts
them and ``graphopt.bisect`` can stop after any one: ``static-matmul-to-linear`` /
``static-unfuse-residual`` (``prepare``, per unit), ``static-quantize-activation`` (the Q/DQ of
one observed value and of the values that share its parameters), ``static-quantize-weight``
(one unit's weight), then the rules of ``fold-qdq`` / ``fuse-activation`` and the ``dce``
removals, run by name inside the same rewrite log. Every prefix is a valid, runnable graph.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from graphopt.errors import InputMismatchError, QuantizationError
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.types import QuantInfo, TensorType
from graphopt.ops.registry import IN_OUT, OUT_IN, OUT_IN_SPATIAL, QDQ_TRANSPARENT, get_op
from graphopt.quant.dynamic import (
    quantizable_weights,
    quantize_conv_per_channel,
    quantize_weight_per_channel,
)
from graphopt.quant.observers import Observer, make_observer
from graphopt.rewrite.rewriter import Rewriter

MATMUL_TO_LINEAR = "static-matmul-to-linear"
UNFUSE_RESIDUAL = "static-unfuse-residual"
QUANTIZE_ACTIVATION = "static-quantize-activation"
QUANTIZE_WEIGHT = "static-quantize-weight"


# ------------------------------------------------------------------------------------ units
def _is_unit(node: Node) -> bool:
    spec = quantizable_weights(node, OUT_IN_SPATIAL, OUT_IN, IN_OUT)
    if spec is None or len(node.inputs) <= spec.slot:
        return False
    x, w = node.inputs[0], node.inputs[spec.slot]
    if x is None or w is None or x.dtype is not DType.float32 or not w.is_constant:
        return False
    if w.dtype is not DType.float32:
        return False
    if spec.layout == OUT_IN_SPATIAL:
        return x.type.rank == 4 and w.type.rank == 4
    return w.type.rank == 2 and x.type.rank >= 1


def static_candidates(graph: Graph, exclude: Sequence[str] = ()) -> list[Node]:
    """The units of ``graph`` in order; ``exclude`` globs match node or weight names."""
    out = []
    for node in graph.nodes:
        if not _is_unit(node):
            continue
        if any(fnmatch.fnmatch(n, pat) for pat in exclude
               for n in (node.name, node.inputs[1].name)):
            continue
        out.append(node)
    return out


def activation_nodes(graph: Graph, y: Value, activation: str, params: tuple,
                     rw: Rewriter | None = None) -> Value:
    """``activation(y)`` as plain IR ops (the inverse of fuse-activation's ``epilogue_of``);
    built through ``rw`` when given (inside its open rewrite), else at the graph's insertion
    point."""
    if activation == "none":
        return y
    attrs: dict = {}
    op = activation
    if activation == "relu6":
        op, attrs = "clamp", {"min": 0.0, "max": 6.0}
    elif activation == "clamp":
        lo, hi = params
        op, attrs = "clamp", {"min": None if np.isinf(lo) else lo,
                              "max": None if np.isinf(hi) else hi}
    elif activation == "leaky_relu":
        attrs = {"negative_slope": float(params[0])}
    elif activation in ("gelu", "gelu_tanh"):
        op, attrs = "gelu", {"approximate": "tanh" if activation == "gelu_tanh" else "none"}
    create = rw.create_node if rw is not None else graph.create_node
    return create(op, [y], attrs, name=f"{y.name}_{activation}").outputs[0]


def _take_name(graph: Graph, value: Value, name: str) -> None:
    """Give ``value`` the (released) ``name`` of the node it replaced, so that layer names
    stay stable across ``prepare``."""
    if name in graph._names or value.name == name:
        return
    graph._release_name(value.name)
    value.name = name
    graph._names.add(name)


def prepare(graph: Graph, names: set[str], rw: Rewriter | None = None) -> bool:
    """In place, for the named units: residual epilogues moved out of the unit
    (``fused_P(x, w, b, r){act}`` -> ``act(add(fused_P(x, w, b){none}, r))``) and
    ``matmul(x, W)`` by a constant -> ``linear(x, W^T)``. Numerically exact: the same torch
    ops run in the same order. Each unit is one rewrite through ``rw`` (default: a new one);
    returns False when the rewrite budget ran out (the remaining units are left as they are).
    """
    rw = rw if rw is not None else Rewriter(graph)
    for node in list(graph.nodes):
        if node.name not in names:
            continue
        out = node.outputs[0]
        spec = get_op(node.op).weights
        residual = (node.inputs[spec.residual]
                    if spec is not None and spec.residual is not None
                    and len(node.inputs) > spec.residual else None)
        if spec is not None and spec.layout == IN_OUT:
            if not rw.edit(MATMUL_TO_LINEAR, node):
                return False
            w = node.inputs[spec.slot]
            wt = rw.constant(np.ascontiguousarray(w.data.T), f"{w.name}_t")
            new = rw.create_node("linear", [node.inputs[0], wt, None], name=out.name)
        elif residual is not None:
            if not rw.edit(UNFUSE_RESIDUAL, node):
                return False
            attrs = dict(node.attrs)
            act, params = attrs.pop("activation"), attrs.pop("activation_params")
            core = rw.create_node(node.op, list(node.inputs[:3]) + [None],
                                  {**attrs, "activation": "none", "activation_params": ()},
                                  name=out.name)
            added = rw.create_node("add", [core.outputs[0], residual],
                                   name=f"{out.name}_residual")
            result = activation_nodes(graph, added.outputs[0], act, tuple(params), rw)
            name = out.name
            rw.replace_value(out, result)
            rw.erase_node(node)
            _take_name(graph, core.outputs[0], name)
            continue
        else:
            continue
        old_w, name = node.inputs[1], out.name
        rw.replace_value(out, new.outputs[0])
        rw.erase_node(node)
        _take_name(graph, new.outputs[0], name)
        if not old_w.uses and not old_w.is_graph_output:
            rw.remove_constant(old_w)
    return True


# ------------------------------------------------------------------------------ calibration
def parameter_source(value: Value) -> list[Value]:
    """``value`` and the values it is moved from through transparent ops, source last."""
    chain = [value]
    while (value.producer is not None and value.producer.has_trait(QDQ_TRANSPARENT)
           and value.producer.inputs[0].dtype is DType.float32):
        value = value.producer.inputs[0]
        chain.append(value)
    return chain


def observed_values(graph: Graph, units: Sequence[Node]) -> dict[str, list[str]]:
    """Observed value name -> the value names that take its parameters (itself included)."""
    plan: dict[str, list[str]] = {}
    for unit in units:
        chain = parameter_source(unit.inputs[0])
        source = chain[-1].name
        plan.setdefault(source, [source])
        for v in chain[:-1]:
            if v.name not in plan[source]:
                plan[source].append(v.name)
        y = unit.outputs[0]
        if y.uses:  # only-a-graph-output results stay float (f32-output qconv/qlinear)
            plan.setdefault(y.name, [y.name])
    return plan


def as_arguments(item, index: int) -> tuple:
    """A calibration item as an argument tuple (a bare tensor / array is one argument)."""
    if isinstance(item, (torch.Tensor, np.ndarray)):
        return (item,)
    if isinstance(item, (tuple, list)):
        return tuple(item)
    raise QuantizationError(
        f"calibration item {index} is a {type(item).__name__}; expected a tuple of the "
        "graph's arguments (or one tensor)")


def calibrate(
    graph: Graph,
    names: Iterable[str],
    calibration: Iterable,
    observer: str = "minmax",
    observer_options: dict | None = None,
    progress: bool | None = None,
) -> dict[str, Observer]:
    """Run ``graph`` over ``calibration`` and feed each named value to its own observer.

    Streams: items are read one at a time from ``calibration`` (any iterable, e.g. a
    generator reading batches from disk) and each value's statistics are updated as the
    interpreter computes it, so memory holds one item's live activations, not every observed
    tensor.

    Raises:
        QuantizationError: empty data, an item that does not fit the graph's inputs (arity,
            shape, dtype; the message names the batch and the input), non-finite values
            (names the value and the node producing it), an unknown observer.
    """
    names = list(names)
    unknown = sorted(set(names) - {v.name for v in graph.values()})
    if unknown:
        raise QuantizationError(f"cannot observe %{unknown[0]}: no such value in the graph")
    make_observer(observer, **(observer_options or {}))  # unknown name/option: fail early
    observers = {n: make_observer(observer, **(observer_options or {})) for n in names}
    run_calibration(graph, calibration, lambda index: _observer_feed(observers, index), progress,
                    "calibration data is empty: static quantization needs at least one "
                    "argument tuple")
    return observers


def run_calibration(graph: Graph, calibration: Iterable, observe_for, progress: bool | None,
                    empty_message: str) -> None:
    """Run ``graph`` in the reference interpreter over each calibration item, one at a time,
    with ``observe_for(index)`` as its ``observe`` hook (graphopt/interpreter.py).

    Raises:
        QuantizationError: an item that does not fit the graph; no items (``empty_message``).
    """
    from graphopt.interpreter import constant_tensors, flatten_inputs, run_flat

    total = len(calibration) if hasattr(calibration, "__len__") else None
    bar = _progress(total, progress)
    seen = 0
    constants = constant_tensors(graph)  # once: a transposed weight is a copy per conversion
    for index, item in enumerate(calibration):
        args = as_arguments(item, index)
        # Statistics stream from the interpreter as each value is computed; the run releases
        # every activation after its last use (one layer's activations live at a time).
        try:
            run_flat(graph, flatten_inputs(graph, args, {}), observe=observe_for(index),
                     constants=constants)
        except InputMismatchError as exc:
            raise QuantizationError(
                f"calibration item {index} does not fit the graph: {exc}") from None
        seen += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if seen == 0:
        raise QuantizationError(empty_message)


def _observer_feed(observers: dict[str, Observer], index: int):
    """The interpreter's ``observe`` hook: feeds each observed value to its observer."""

    def observe(value: Value, tensor: torch.Tensor) -> None:
        target = observers.get(value.name)
        if target is None:
            return
        try:
            target.update(tensor)
        except QuantizationError as exc:
            where = value.producer.describe() if value.producer is not None else "an input"
            raise QuantizationError(
                f"calibration item {index}: %{value.name} ({where}): {exc}") from None

    return observe


def _progress(total: int | None, progress: bool | None):
    if progress is None:
        progress = (total is None or total >= 32) and sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="calibrate", leave=False, file=sys.stderr)


# --------------------------------------------------------------------------------- QDQ form
def _qdq_value(rw: Rewriter, value: Value, scale: np.float32, zp: int) -> None:
    """``dequantize_linear(quantize_linear(value))`` right after ``value``'s definition, read
    by all its users (not by the graph outputs); inside the rewrite ``rw`` has open."""
    graph = rw.graph
    uses = list(value.uses)
    if not uses:
        return
    s = rw.constant(np.array(scale, np.float32), f"{value.name}_scale")
    z = rw.constant(np.array(zp, np.uint8), f"{value.name}_zp")
    anchor = value.producer._next if value.producer is not None else next(iter(graph.nodes))
    rw.begin(rw.rule_name, anchor)  # insert right after the definition
    q = rw.create_node("quantize_linear", [value, s, z], {"dtype": "u8"},
                       name=f"{value.name}_q").outputs[0]
    dq = rw.create_node("dequantize_linear", [q, s, z], name=f"{value.name}_dq")
    for node, slot in uses:
        node.set_input(slot, dq.outputs[0])


def quantized_weight(graph: Graph, weight: Value, rw: Rewriter | None = None
                     ) -> tuple[Value, Value]:
    """``(w_q, w_scale)`` constants: symmetric int8 per output channel (axis 0); the type of
    ``w_q`` records the scales as ``QuantInfo``. Added through ``rw`` when given."""
    if weight.type.rank == 4:
        w_q, scale = quantize_conv_per_channel(weight.data)
    else:
        w_q, scale = quantize_weight_per_channel(weight.data)
    add = rw.constant if rw is not None else graph.add_constant
    wq = add(w_q, f"{weight.name}_q")
    wq.type = TensorType(wq.shape, DType.int8, QuantInfo(
        tuple(float(s) for s in scale), (0,) * len(scale), axis=0, bits=8))
    return wq, add(scale, f"{weight.name}_scale")


def _dq_weight(rw: Rewriter, unit: Node) -> None:
    weight = unit.inputs[1]
    wq, ws = quantized_weight(rw.graph, weight, rw)
    dq = rw.create_node("dequantize_linear", [wq, ws, None], {"axis": 0},
                        name=f"{weight.name}_dq")
    unit.set_input(1, dq.outputs[0])
    if not weight.uses and not weight.is_graph_output:
        rw.remove_constant(weight)


def write_qdq(graph: Graph, names: set[str], qparams: dict[str, tuple[np.float32, int]],
              rw: Rewriter | None = None) -> bool:
    """In place: the QDQ form of the named units of a prepared graph (see the module doc).

    One rewrite per observed value (``static-quantize-activation``: its Q/DQ and those of the
    values that share its parameters) and per unit weight (``static-quantize-weight``), through
    ``rw`` (default: a new one); returns False when the rewrite budget ran out (the rest stays
    float: a valid, partly fake-quantized graph)."""
    rw = rw if rw is not None else Rewriter(graph)
    units = [n for n in graph.nodes if n.name in names and _is_unit(n)]
    by_name = {v.name: v for v in graph.values()}
    for source, members in observed_values(graph, units).items():
        value = by_name[source]
        where = value.producer if value.producer is not None else f"input %{source}"
        if not rw.edit(QUANTIZE_ACTIVATION, where):
            return False
        scale, zp = qparams[source]
        for name in members:
            _qdq_value(rw, by_name[name], scale, zp)
    for unit in units:
        if not rw.edit(QUANTIZE_WEIGHT, unit):
            return False
        _dq_weight(rw, unit)
    return True


def fold(graph: Graph, refuse: bool = False) -> None:
    """``fold-qdq`` then ``dce`` (and ``fuse-activation`` to re-fuse float units' epilogues).

    The passes run by name inside the caller's rewrite log (not in a pass manager of their
    own), so their individual rewrites count as the caller's and honour its bisect budget."""
    from graphopt.transform import create_pass

    for name in ("fold-qdq", "fuse-activation", "dce") if refuse else ("fold-qdq", "dce"):
        create_pass(name).run(graph)


def static_forward(qparams: dict[str, tuple[np.float32, int]], graph: Graph):
    """``quantized_forward`` for local sensitivity: the unit in QDQ form on real inputs."""
    from graphopt.interpreter import node_attrs
    from graphopt.ops.quant import dequantize_linear, quantize_linear

    def qdq(t, params):
        s, z = torch.tensor(params[0]), torch.tensor(params[1], dtype=torch.uint8)
        return dequantize_linear(quantize_linear(t, s, z), s, z)

    def forward(node: Node, inputs: list) -> torch.Tensor:
        chain = parameter_source(node.inputs[0])
        inputs = list(inputs)
        inputs[0] = qdq(inputs[0], qparams[chain[-1].name])
        w = node.inputs[1].data
        if w.ndim == 4:
            w_q, scale = quantize_conv_per_channel(w)
        else:
            w_q, scale = quantize_weight_per_channel(w)
        inputs[1] = dequantize_linear(torch.from_numpy(w_q), torch.from_numpy(scale), axis=0)
        y = node.opdef.reference(*inputs, **node_attrs(node, {}))
        out = node.outputs[0]
        return qdq(y, qparams[out.name]) if out.name in qparams else y

    return forward

def static_plan(graph: Graph, calibration: Iterable, exclude: Sequence[str], observer: str,
                observer_options: dict, progress: bool | None):
    """The static mode's plan for ``graphopt.quantize``: prepare a copy, calibrate once on it,
    then ``build(names)`` writes the QDQ form of the named units and folds it."""
    from graphopt.quant.api import Plan, layer_records

    base = graph.clone()
    prepare(base, {n.name for n in static_candidates(base)})
    every = static_candidates(base)
    chosen = static_candidates(base, exclude)
    plan = observed_values(base, every)
    observers = calibrate(base, plan, calibration, observer, observer_options, progress)
    qparams = {name: obs.qparams() for name, obs in observers.items()}

    def shape_of(node: Node) -> tuple[int, ...]:
        return tuple(int(d) for d in node.inputs[1].shape)

    def build(names: set[str]) -> Graph:
        g = base.clone()
        write_qdq(g, names, qparams)
        fold(g, refuse=True)
        return g

    records = layer_records(base, chosen, every, shape_of)
    mode = f"static {observer}" + "".join(f" {k}={v}" for k, v in observer_options.items())
    return Plan(mode, "int8", base, records, build, static_forward(qparams, base))


def quantize_static_in_place(graph: Graph, calibration: list[tuple], observer: str = "minmax",
                             observer_options: dict | None = None,
                             exclude: Sequence[str] = (), rw: Rewriter | None = None) -> int:
    """Static quantization of every unit (no error budget), in place; returns the unit count.
    What the ``quantize-static`` pass runs. Every change is one rewrite through ``rw``
    (default: a new one; see the module doc); when the rewrite budget of ``graphopt.bisect``
    runs out the graph is left as it is from there on (valid and runnable)."""
    rw = rw if rw is not None else Rewriter(graph)
    if not prepare(graph, {n.name for n in static_candidates(graph)}, rw):
        return 0
    units = static_candidates(graph, exclude)
    if not units:
        return 0
    plan = observed_values(graph, units)
    observers = calibrate(graph, plan, calibration, observer, observer_options or {})
    qparams = {name: obs.qparams() for name, obs in observers.items()}
    if not write_qdq(graph, {n.name for n in units}, qparams, rw):
        return 0
    fold(graph, refuse=True)
    return len(units)
