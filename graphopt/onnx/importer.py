"""Importing ONNX models as graphopt graphs.

Each ONNX op has a converter registered with ``@onnx_converter("Relu")`` (optionally with a
domain) in one of the ``import_*.py`` files; it reads the node through an :class:`OnnxNode`
view and emits IR ops through the :class:`ImportContext`::

    @onnx_converter("LeakyRelu")
    def _leaky_relu(ctx, node):
        return ctx.emit("leaky_relu", [ctx.value(node, 0)],
                        {"negative_slope": node.attr("alpha", 0.01)})

ONNX passes shapes, axes and pads as tensors that the IR wants as attributes. The importer
therefore evaluates, alongside the graph it builds, every small tensor it can: constants, and
shape arithmetic (``Shape -> Gather -> Concat -> Reshape``) including symbolic dims. Converters
read such values with ``ctx.const``/``ctx.dims``; a value that depends on run-time data raises an
:class:`OnnxImportError` naming the graph inputs it depends on (which ``constant_inputs=`` can
freeze). With ``fold_constants`` (the default) nodes whose operands are all constants become
constants.

Safety: a model file is untrusted input. External data is read only from regular files inside
the model's directory (no absolute paths, no ``..``, no symlinks leading outside), with a length
that matches the tensor and within the memory budget (:mod:`graphopt.limits`);
:mod:`graphopt.onnx.validation` checks schemas, dims, axes and attributes where they enter; dim
names are plain symbols, never evaluated. Every failure is a
:class:`~graphopt.errors.GraphoptError` (mostly :class:`OnnxImportError`) naming the file, node
and op; an unexpected exception is wrapped as :class:`OnnxInternalError` ("please report").
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import onnx
import sympy

from graphopt.errors import GraphoptError, OnnxImportError, ResourceLimitError
from graphopt.ir.graph import Graph, Node, Value
from graphopt.onnx._common import FROM_ONNX_DTYPE, onnx_dtype_name, tensor_to_array
from graphopt.onnx.import_context import ImportContext, NeedsStaticValue
from graphopt.onnx.import_function import expanded_body, has_function_body
from graphopt.onnx.import_graph import cancel_synthetic_layout, needs_static_inputs, toposort
from graphopt.onnx.import_inputs import add_graph_inputs, with_external_data
from graphopt.onnx.import_symbolic import evaluate_new_nodes
from graphopt.onnx.loading import load_model
from graphopt.onnx.validation import REQUIRED, OnnxNode, check_node_schema, check_opsets
from graphopt.rewrite import eliminate_dead_code, track_rewrites
from graphopt.stagereport import reports_stage

Converter = Callable[["ImportContext", "OnnxNode"], Any]
CONVERTERS: dict[tuple[str, str], Converter] = {}
__all__ = ["CONVERTERS", "REQUIRED", "ImportContext", "NeedsStaticValue", "OnnxInternalError",
           "OnnxNode", "from_onnx", "onnx_converter"]

_DEFAULT_DOMAINS = ("", "ai.onnx")


def onnx_converter(*op_types: str, domain: str = ""):
    """Register a converter for ONNX ``op_types`` of ``domain`` ("" is the default domain)."""

    def decorate(fn: Converter) -> Converter:
        for op_type in op_types:
            CONVERTERS[(domain, op_type)] = fn
        return fn

    return decorate


_CONVERTERS_LOADED = False


def _load_converters() -> None:
    global _CONVERTERS_LOADED
    if not _CONVERTERS_LOADED:
        _CONVERTERS_LOADED = True
        from graphopt.onnx import (  # noqa: F401  (registers the converters)
            import_attention,
            import_control,
            import_creation,
            import_elementwise,
            import_indexing,
            import_misc,
            import_nn,
            import_pool,
            import_quant,
            import_reduce,
            import_resize,
            import_shape,
        )


class OnnxInternalError(OnnxImportError):
    """An unexpected exception while importing: a validation gap in graphopt, not (only) a bad
    model. The message names the node and op; the fuzz harness treats it as a finding."""


def _rename(graph: Graph, value: Value, name: str) -> None:
    """Give a node output the ONNX tensor's name when that name is still free."""
    clean = re.sub(r"[^A-Za-z0-9_.]", "_", name) or "v"
    if value.kind != "node" or value.name == clean or clean in graph._names:
        return
    graph._release_name(value.name)
    value.name = graph.unique_name(clean)


# ------------------------------------------------------------------------------ public API
@reports_stage("from_onnx")
def from_onnx(model_or_path, *, base_dir: str | os.PathLike | None = None,
              constant_inputs: dict[str, Any] | None = None, fold_constants: bool = True,
              check: bool = True, name: str | None = None) -> Graph:
    """Import an ONNX model as a graphopt Graph.

    The model is untrusted input: ``onnx.checker`` (unless ``check=False``) and graphopt's own
    checks (dims, axes, strides, dtypes, quantization parameters, external data confinement and
    sizes, the memory budget of :mod:`graphopt.limits`) run before anything is trusted, and
    every failure is a :class:`~graphopt.errors.GraphoptError` naming the file, node and op.

    Args:
        model_or_path: an ``onnx.ModelProto``, serialized bytes, or a path to a .onnx file.
        base_dir: directory of the external data files (default: the model file's directory).
        constant_inputs: graph inputs to freeze as constants, ``{name: array}`` (e.g. the
            ``shape`` input of a Reshape, which the IR needs at import time).
        fold_constants: evaluate nodes whose operands are all constants at import time.
        check: run ``onnx.checker.check_model`` first (malformed models raise).
        name: the graph's name (default: the ONNX graph's name).
        report: also return a :class:`~graphopt.stagereport.StageReport` (time, peak RSS).

    Returns:
        The graph; its inputs are the ONNX graph inputs that are neither initializers nor
        frozen, in order; its outputs are the ONNX outputs. ``(graph, StageReport)`` with
        ``report=True``.

    Raises:
        OnnxImportError: malformed file, unsafe external data, unsupported element types, ops
            without a converter (all listed, with node names), invalid attributes or operands
            (named), or values the IR needs at import time that depend on run-time data
            (``needs_static`` lists the inputs). :class:`OnnxInternalError`, a subclass, is a
            bug in graphopt met by this model: please report it.
        ResourceLimitError: a tensor or the external data is over the memory budget.
    """
    _load_converters()
    from_file = isinstance(model_or_path, (str, os.PathLike))
    where = os.fspath(model_or_path) if from_file else "<model>"
    try:
        model, folder, where = load_model(model_or_path, base_dir)
        return _import(model, model_or_path is model, folder, where if from_file else None,
                       constant_inputs, fold_constants, check, name)
    except OnnxImportError as exc:
        if not from_file or where in str(exc):
            raise
        raise type(exc)(f"{where}: {exc}", exc.unsupported, exc.needs_static) from exc
    except GraphoptError:
        raise
    except Exception as exc:  # noqa: BLE001  (last line of defence; see OnnxInternalError)
        raise OnnxInternalError(f"{where}: internal error while importing the model: "
                                f"{type(exc).__name__}: {exc}; please report this model") \
            from exc


def _import(model: onnx.ModelProto, callers_proto: bool, folder: str | None, path: str | None,
            constant_inputs, fold_constants: bool, check: bool, name: str | None) -> Graph:
    """from_onnx on a decoded model: external data, checks, graph inputs, nodes, outputs."""
    model, preloaded = with_external_data(model, callers_proto, folder, path, check)
    opsets = {o.domain: int(o.version) for o in model.opset_import}
    check_opsets(opsets, "the model")
    opset = opsets.get("", opsets.get("ai.onnx", 1))
    _check_supported(model, opset)

    graph = Graph(name or model.graph.name or "main")
    ctx = ImportContext(graph, fold_constants)
    ctx.model, ctx.opsets, ctx.opset = model, opsets, opset
    add_graph_inputs(ctx, model, dict(constant_inputs or {}), preloaded)
    del preloaded  # the constants hold the arrays now
    consumed = {i for n in model.graph.node for i in n.input} | {o.name for o in
                                                                model.graph.output}
    _convert_nodes(ctx, model.graph.node, consumed)
    ctx.node = None

    outputs = []
    for info in model.graph.output:
        value = ctx.env.get(info.name)
        if value is None:
            raise OnnxImportError(f"graph output '{info.name}' is not computed by the graph")
        declared = info.type.tensor_type.elem_type if info.type.HasField("tensor_type") else 0
        if declared and FROM_ONNX_DTYPE.get(declared) not in (None, value.dtype):
            raise OnnxImportError(f"graph output '{info.name}' is declared "
                                  f"{onnx_dtype_name(declared)} but graphopt computes "
                                  f"{value.dtype}; please report this model")
        outputs.append(value)
    graph.set_outputs(outputs)
    # Cleanup with the passes' own rewrites (layout rules, DCE); a log of its own so that an
    # enclosing pass manager's rewrite budget (bisect) never cuts the import short.
    with track_rewrites():
        if ctx.synthetic:
            cancel_synthetic_layout(graph, ctx.synthetic)
        eliminate_dead_code(graph)
    graph.verify()
    return graph


def _convert_nodes(ctx: ImportContext, nodes, consumed: set[str]) -> None:
    for proto in toposort(nodes, set(ctx.env)):
        domain = "" if proto.domain in _DEFAULT_DOMAINS else proto.domain
        node = OnnxNode(proto, ctx.opsets.get(proto.domain, ctx.opset) if domain else ctx.opset)
        ctx.node = node
        _convert_node(ctx, ctx.model, node, domain, consumed)


# Nodes that unrolling control flow (Scan bodies, once per iteration) may add to one import: a
# crafted trip count must not make the import run for hours or fill the memory with nodes.
MAX_UNROLLED_NODES = 100_000


def run_subgraph(ctx: ImportContext, body: onnx.GraphProto, bindings: dict[str, Value],
                 what: str) -> list[Value]:
    """Converts a control-flow body once, its inputs bound to ``bindings`` (the names of the
    enclosing graphs stay visible, as ONNX scoping says); returns the values of its outputs.
    ``what`` names the node for errors. Counts against MAX_UNROLLED_NODES."""
    ctx.unrolled_nodes += len(body.node)
    if ctx.unrolled_nodes > MAX_UNROLLED_NODES:
        raise ResourceLimitError(f"{what}: unrolled loop bodies", ctx.unrolled_nodes,
                                 MAX_UNROLLED_NODES, "nodes")
    for init in body.initializer:
        array, dtype = tensor_to_array(init, f"initializer '{init.name}' of the body")
        ctx.env[init.name] = ctx.graph.add_constant(array, init.name, dtype)
    ctx.env.update(bindings)
    consumed = {i for n in body.node for i in n.input} | {o.name for o in body.output}
    outer = ctx.node
    try:
        _convert_nodes(ctx, body.node, consumed)
    finally:
        ctx.node = outer
    missing = [o.name for o in body.output if o.name not in ctx.env]
    if missing:
        raise OnnxImportError(f"{what}: its body does not compute output(s) {missing}")
    return [ctx.env[o.name] for o in body.output]


def _expand_function(ctx: ImportContext, node: OnnxNode, domain: str) -> list[Value]:
    """A node without a converter whose schema defines it as a function (import_function)."""
    operands = [ctx.value(node, i) for i in range(len(node.inputs))]
    body, bindings = expanded_body(node, operands, node.opset, domain, ctx.function_depth)
    ctx.function_depth += 1
    try:
        return run_subgraph(ctx, body, bindings, node.describe())
    finally:
        ctx.function_depth -= 1


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]


def _check_supported(model: onnx.ModelProto, opset: int) -> None:
    """Every node (loop bodies included) must have a converter or a schema function body
    (import_function); lists all that have neither, at once."""
    unsupported, stack = [], [model.graph]
    nodes = []
    while stack:
        g = stack.pop()
        for n in g.node:
            nodes.append(n)
            if (("" if n.domain in _DEFAULT_DOMAINS else n.domain), n.op_type) in CONVERTERS:
                stack.extend(_subgraphs(n))
    for n in nodes:
        domain = "" if n.domain in _DEFAULT_DOMAINS else n.domain
        if (domain, n.op_type) not in CONVERTERS and not (
                not domain and has_function_body(n.op_type, opset, domain)):
            label = n.op_type if not domain else f"{domain}.{n.op_type}"
            unsupported.append((label, n.name or (n.output[0] if n.output else "?")))
    if unsupported:
        listing = "\n".join(f"  - {op} (node '{where}')" for op, where in unsupported)
        distinct = ", ".join(sorted({op for op, _ in unsupported}))
        raise OnnxImportError(f"{len(unsupported)} node(s) use ops graphopt cannot import "
                              f"({distinct}):\n{listing}", unsupported=unsupported)


# Symbolic sizes nested deeper than this are refused: each conv/pool over a symbolic length adds
# a floor() level, and simplifying nested floors costs time exponential in the depth (about 2x
# per level), so a crafted chain of pools would hang the import. Real models stay far below.
MAX_SYMBOLIC_DEPTH = 16


def _check_symbolic_depth(node: OnnxNode, new_nodes: list[Node]) -> None:
    for created in new_nodes:
        for out in created.outputs:
            for dim in out.shape:
                if isinstance(dim, sympy.Basic) and _height(dim) > MAX_SYMBOLIC_DEPTH:
                    raise OnnxImportError(
                        f"cannot import {node.describe()}: its output size {str(dim)[:80]}... "
                        f"nests more than {MAX_SYMBOLIC_DEPTH} levels of symbolic arithmetic; "
                        "give the model's inputs static sizes")


def _height(expr: sympy.Basic) -> int:
    best, stack = 0, [(expr, 1)]
    while stack:
        current, depth = stack.pop()
        best = max(best, depth)
        if depth <= MAX_SYMBOLIC_DEPTH:
            stack.extend((arg, depth + 1) for arg in current.args)
    return best


def _convert_node(ctx: ImportContext, model: onnx.ModelProto, node: OnnxNode, domain: str,
                  consumed: set[str]) -> None:
    """Run the node's converter, record its outputs, evaluate what can be at import time."""
    graph = ctx.graph
    before = graph._root._prev
    try:
        check_node_schema(node.proto, node.opset, domain)
        converter = CONVERTERS.get((domain, node.op_type))
        result = converter(ctx, node) if converter is not None else _expand_function(ctx, node,
                                                                                     domain)
        results = list(result) if isinstance(result, (tuple, list)) else [result]
        if any(r is not None and not isinstance(r, Value) for r in results):
            raise OnnxInternalError(f"the {node.op_type} converter returned {results!r}")
    except NeedsStaticValue as exc:
        needs = needs_static_inputs(model, exc.tensor)
        hint = f" (it depends on graph input(s) {needs})" if needs else ""
        raise OnnxImportError(f"cannot import {node.describe()}: {exc}{hint}",
                              needs_static=needs) from exc
    except OnnxImportError as exc:
        if node.describe() in str(exc):
            raise
        raise type(exc)(f"cannot import {node.describe()}: {exc}", exc.unsupported,
                        exc.needs_static) from exc
    except ResourceLimitError as exc:  # stays a ResourceLimitError (a MemoryError too)
        raise ResourceLimitError(f"{node.describe()}: {exc.what}", exc.requested, exc.limit,
                                 exc.unit) from exc
    except GraphoptError as exc:
        raise OnnxImportError(f"cannot import {node.describe()}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001  (a validation gap: report it as ours)
        raise OnnxInternalError(f"internal error while importing {node.describe()} (op "
                                f"{node.op_type}): {type(exc).__name__}: {exc}; please report "
                                "this model") from exc
    new_nodes = []
    cursor = before._next
    while cursor is not graph._root:
        new_nodes.append(cursor)
        cursor = cursor._next
    _check_symbolic_depth(node, new_nodes)
    for out_name, value in zip(node.outputs, results):
        if out_name and value is not None:
            ctx.env[out_name] = value
            if value.producer is not None and value.producer in new_nodes:
                _rename(graph, value, out_name)
    try:
        evaluate_new_nodes(ctx, new_nodes)
    except ResourceLimitError as exc:
        raise ResourceLimitError(f"{node.describe()}: {exc.what}", exc.requested, exc.limit,
                                 exc.unit) from exc
    except GraphoptError as exc:
        raise OnnxImportError(f"cannot import {node.describe()}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001
        raise OnnxInternalError(f"internal error while evaluating {node.describe()} (op "
                                f"{node.op_type}) at import time: {type(exc).__name__}: "
                                f"{exc}; please report this model") from exc
    missing = [o for o, v in zip(node.outputs, results + [None] * len(node.outputs))
               if o and v is None and o in consumed]
    if missing:
        raise OnnxImportError(f"cannot import {node.describe()}: its output(s) {missing} "
                              "are used but graphopt does not compute them")
