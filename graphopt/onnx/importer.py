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

Safety: external data is read only from files inside the model's directory (no absolute paths,
no ``..``, no symlinks leading outside), within the file's size; malformed protobufs, unknown
ops and unsupported types raise :class:`OnnxImportError`, never a crash.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import sympy
import torch
from onnx import AttributeProto

from graphopt.errors import GraphoptError, OnnxImportError
from graphopt.ir.dtypes import DType, torch_to_numpy
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.types import TensorType, normalize_dim
from graphopt.onnx._common import FROM_ONNX_DTYPE, onnx_dtype_name, tensor_to_array
from graphopt.onnx.import_symbolic import evaluate_new_nodes
from graphopt.onnx.loading import (
    check_model,
    has_external_data,
    load_external_data,
    load_model,
    tensors_of,
)

Converter = Callable[["ImportContext", "OnnxNode"], Any]
CONVERTERS: dict[tuple[str, str], Converter] = {}
REQUIRED = object()

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
            import_elementwise,
            import_misc,
            import_nn,
            import_reduce,
            import_resize,
            import_shape,
        )


class NeedsStaticValue(GraphoptError):
    """A converter needs a tensor's value at import time but it depends on run-time data."""

    def __init__(self, tensor: str, what: str):
        self.tensor = tensor
        super().__init__(f"{what} '{tensor}' must be a constant (or computable from shapes), "
                         "but it depends on run-time data")


class OnnxNode:
    """A read-only view of one ONNX node for converters."""

    def __init__(self, proto: onnx.NodeProto, opset: int):
        self.proto = proto
        self.op_type = proto.op_type
        self.domain = proto.domain
        self.opset = opset
        self.inputs = list(proto.input)
        while self.inputs and not self.inputs[-1]:
            self.inputs.pop()
        self.outputs = list(proto.output)
        self.name = proto.name or (proto.output[0] if proto.output else proto.op_type)
        self._attrs = {a.name: a for a in proto.attribute}

    def has_input(self, i: int) -> bool:
        return i < len(self.inputs) and bool(self.inputs[i])

    def has_attr(self, name: str) -> bool:
        return name in self._attrs

    def attr(self, name: str, default: Any = REQUIRED) -> Any:
        """The attribute as a Python value (str for strings, list for repeated, numpy array
        for tensors)."""
        a = self._attrs.get(name)
        if a is None:
            if default is REQUIRED:
                raise GraphoptError(f"{self.op_type} node '{self.name}' lacks attribute '{name}'")
            return default
        if a.ref_attr_name:
            raise GraphoptError(f"attribute references ('{a.ref_attr_name}') only exist inside "
                                "functions")
        t = a.type
        if t == AttributeProto.INT:
            return int(a.i)
        if t == AttributeProto.FLOAT:
            return float(a.f)
        if t == AttributeProto.STRING:
            return a.s.decode("utf-8", errors="replace")
        if t == AttributeProto.INTS:
            return [int(v) for v in a.ints]
        if t == AttributeProto.FLOATS:
            return [float(v) for v in a.floats]
        if t == AttributeProto.STRINGS:
            return [s.decode("utf-8", errors="replace") for s in a.strings]
        if t == AttributeProto.TENSOR:
            return a.t
        raise GraphoptError(f"attribute '{name}' of {self.op_type} node '{self.name}' has "
                            f"unsupported type {AttributeProto.AttributeType.Name(t)}")

    def describe(self) -> str:
        return f"{self.op_type} node '{self.name}'"


class ImportContext:
    """The graph under construction, the ONNX-name environment and import-time known values."""

    def __init__(self, graph: Graph, fold_constants: bool):
        self.graph = graph
        self.fold_constants = fold_constants
        self.env: dict[str, Value] = {}
        # Import-time values of small tensors: numpy arrays, object dtype when holding dims.
        self.known: dict[Value, np.ndarray] = {}
        self.node: OnnxNode | None = None
        # Layout nodes a converter added only to reach the IR's layout (e.g. head split/merge
        # around contrib attention); they cancel against the model's own inverse layout ops.
        self.synthetic: set[Node] = set()

    def mark_synthetic(self, value: Value) -> Value:
        """Record that ``value``'s producer is an adapter reshape/permute (see synthetic)."""
        if value.producer is not None:
            self.synthetic.add(value.producer)
        return value

    # ---------------------------------------------------------------------------- operands
    def value(self, node: OnnxNode, i: int) -> Value | None:
        """Operand ``i`` as an IR value (None when absent)."""
        if not node.has_input(i):
            return None
        name = node.inputs[i]
        try:
            return self.env[name]
        except KeyError:
            raise GraphoptError(f"{node.describe()} reads '{name}', which nothing defines") \
                from None

    def values(self, node: OnnxNode) -> list[Value | None]:
        return [self.value(node, i) for i in range(len(node.inputs))]

    def known_value(self, value: Value | None) -> np.ndarray | None:
        if value is None:
            return None
        if value.kind == "const":
            if value.dtype is DType.bfloat16:
                return None
            return value.data
        return self.known.get(value)

    def maybe_const(self, node: OnnxNode, i: int) -> np.ndarray | None:
        """Operand ``i``'s import-time value, or None (absent or run-time dependent)."""
        v = self.known_value(self.value(node, i))
        if v is None or v.dtype == object:
            return None
        return v

    def const(self, node: OnnxNode, i: int, what: str = "input") -> np.ndarray:
        """Operand ``i``'s value at import time (concrete numbers).

        Raises:
            NeedsStaticValue: it depends on run-time data (or on a symbolic dim).
        """
        v = self.known_value(self.value(node, i))
        if v is None or v.dtype == object:
            raise NeedsStaticValue(node.inputs[i], f"{what} of {node.describe()}")
        return v

    def dims(self, node: OnnxNode, i: int, what: str = "input") -> list:
        """Operand ``i`` as a list of ints or symbolic dims (for shapes, sizes, pads)."""
        v = self.known_value(self.value(node, i))
        if v is None:
            raise NeedsStaticValue(node.inputs[i], f"{what} of {node.describe()}")
        return [normalize_dim(d) if v.dtype == object else int(d) for d in v.reshape(-1)]

    # ------------------------------------------------------------------------------- emit
    def emit(self, op: str, inputs: Sequence[Value | None], attrs: dict | None = None):
        """Create an IR node; returns its output (a tuple for multi-output ops)."""
        hint = self.node.outputs[0] if self.node is not None and self.node.outputs else op
        source = self.node.describe() if self.node is not None else None
        node = self.graph.create_node(op, list(inputs), attrs or {}, name=hint, source=source)
        return node.outputs[0] if len(node.outputs) == 1 else tuple(node.outputs)

    def constant(self, array, dtype: DType | None = None, name: str = "const") -> Value:
        if isinstance(array, torch.Tensor):
            array, dtype = torch_to_numpy(array)
        return self.graph.add_constant(np.asarray(array), name, dtype)

    def scalar(self, value, dtype: DType) -> Value:
        """A 0-d constant (scalars do not promote tensors in IR arithmetic, as in torch)."""
        if dtype is DType.bfloat16:
            return self.constant(torch.tensor(value, dtype=torch.bfloat16))
        return self.graph.add_constant(np.array(value, dtype=dtype.numpy), "scalar", dtype)

    def cast(self, value: Value, dtype: DType) -> Value:
        return value if value.dtype == dtype else self.emit("cast", [value], {"dtype": dtype})


def _symbol(name: str, cache: dict[str, sympy.Symbol]) -> sympy.Symbol:
    clean = re.sub(r"\W", "_", name) or "d"
    if not clean[0].isalpha():
        clean = "d_" + clean
    if hasattr(sympy, clean) or len(clean) == 1 and clean in "NSEIOQ":
        clean += "_"
    if clean not in cache:
        cache[clean] = sympy.Symbol(clean, integer=True, positive=True)
    return cache[clean]


def _value_type(info: onnx.ValueInfoProto, symbols: dict, what: str) -> TensorType:
    which = info.type.WhichOneof("value")
    if which != "tensor_type":
        raise OnnxImportError(f"{what} '{info.name}' is a {which or 'untyped value'}; graphopt "
                              "graphs take tensors only")
    tt = info.type.tensor_type
    dtype = FROM_ONNX_DTYPE.get(tt.elem_type)
    if dtype is None:
        raise OnnxImportError(f"{what} '{info.name}' has element type "
                              f"{onnx_dtype_name(tt.elem_type)}, which graphopt does not support")
    if not tt.HasField("shape"):
        raise OnnxImportError(f"{what} '{info.name}' has no shape (not even a rank)")
    dims = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.dim_param:
            dims.append(_symbol(d.dim_param, symbols))
        else:
            dims.append(_symbol(f"{info.name}_dim{i}", symbols))
    return TensorType(tuple(dims), dtype)


# ------------------------------------------------------------------------------ cleanup
def cancel_synthetic_layout(graph: Graph, synthetic: set[Node]) -> None:
    """Fold reshape/permute chains that involve an adapter node (``ImportContext.synthetic``).

    ``reshape(reshape(x))`` becomes one reshape, ``permute(permute(x))`` one permute, and
    reshapes/permutes that change nothing disappear. Only chains through an adapter are
    touched, so layout ops the model itself contains stay as they are.
    """
    from graphopt.ir.types import dims_equal

    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node._erased or node.op not in ("reshape", "permute"):
                continue
            x = node.inputs[0]
            prev = x.producer
            if (prev is not None and not prev._erased and prev.op == node.op
                    and (node in synthetic or prev in synthetic) and len(x.uses) == 1
                    and not x.is_graph_output):
                if node.op == "permute":
                    inner, outer = prev.attrs["perm"], node.attrs["perm"]
                    node.attrs = node.attrs.replace(perm=tuple(inner[p] for p in outer))
                node.set_input(0, prev.inputs[0])
                graph.erase_node(prev)
                synthetic.add(node)
                changed = True
                x = node.inputs[0]
            if node not in synthetic:
                continue
            out = node.outputs[0]
            noop = (node.op == "permute" and list(node.attrs["perm"]) == list(range(x.type.rank))
                    ) or (node.op == "reshape" and x.type.rank == out.type.rank and all(
                        dims_equal(a, b) for a, b in zip(x.shape, out.shape)))
            if noop and not (out.is_graph_output and x.kind != "node"):
                out.replace_all_uses_with(x)
                graph.erase_node(node)
                changed = True


def _dead_code_elimination(graph: Graph) -> None:
    for node in reversed(list(graph.nodes)):
        if node.has_trait("pure") and not any(o.uses or o.is_graph_output for o in node.outputs):
            graph.erase_node(node)
    for value in list(graph.constants.values()):
        if not value.uses and not value.is_graph_output:
            graph.remove_constant(value)


def _needs_static_inputs(model: onnx.ModelProto, tensor: str) -> list[str]:
    """The graph inputs that ``tensor`` depends on."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    found, stack, seen = [], [tensor], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in inputs:
            found.append(name)
        elif name in producers:
            stack.extend(i for i in producers[name].input if i)
    return sorted(found, key=inputs.index)


def _toposort(nodes: Sequence[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    ordered, pending = [], list(nodes)
    available = set(available)
    while pending:
        progress, rest = False, []
        for n in pending:
            if all(not i or i in available for i in n.input):
                ordered.append(n)
                available.update(o for o in n.output if o)
                progress = True
            else:
                rest.append(n)
        if not progress:
            missing = sorted({i for n in rest for i in n.input if i and i not in available})
            raise OnnxImportError(f"the graph reads tensors nothing defines (or has a cycle): "
                                  f"{missing[:10]}")
        pending = rest
    return ordered


def _rename(graph: Graph, value: Value, name: str) -> None:
    """Give a node output the ONNX tensor's name when that name is still free."""
    clean = re.sub(r"[^A-Za-z0-9_.]", "_", name) or "v"
    if value.kind != "node" or value.name == clean or clean in graph._names:
        return
    graph._release_name(value.name)
    value.name = graph.unique_name(clean)


# ------------------------------------------------------------------------------ public API
def from_onnx(model_or_path, *, base_dir: str | os.PathLike | None = None,
              constant_inputs: dict[str, Any] | None = None, fold_constants: bool = True,
              check: bool = True, name: str | None = None) -> Graph:
    """Import an ONNX model as a graphopt Graph.

    Args:
        model_or_path: an ``onnx.ModelProto``, serialized bytes, or a path to a .onnx file.
        base_dir: directory of the external data files (default: the model file's directory).
        constant_inputs: graph inputs to freeze as constants, ``{name: array}`` (e.g. the
            ``shape`` input of a Reshape, which the IR needs at import time).
        fold_constants: evaluate nodes whose operands are all constants at import time.
        check: run ``onnx.checker.check_model`` first (malformed models raise).
        name: the graph's name (default: the ONNX graph's name).

    Returns:
        The graph; its inputs are the ONNX graph inputs that are neither initializers nor
        frozen, in order; its outputs are the ONNX outputs.

    Raises:
        OnnxImportError: malformed file, unsafe external data, unsupported element types, ops
            without a converter (all listed, with node names), or values the IR needs at import
            time that depend on run-time data (``needs_static`` lists the inputs).
    """
    _load_converters()
    model, folder = load_model(model_or_path, base_dir)
    if any(has_external_data(t) for t in tensors_of(model)):
        if model is model_or_path:  # do not fill the caller's proto with weight bytes
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            model = copy
        for t in tensors_of(model):
            if has_external_data(t):
                load_external_data(t, folder)
    if check:
        check_model(model, model_or_path)
    opsets = {o.domain: int(o.version) for o in model.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx", 1))

    unsupported = []
    for n in model.graph.node:
        domain = "" if n.domain in _DEFAULT_DOMAINS else n.domain
        if (domain, n.op_type) not in CONVERTERS:
            label = n.op_type if not domain else f"{domain}.{n.op_type}"
            unsupported.append((label, n.name or (n.output[0] if n.output else "?")))
    if unsupported:
        listing = "\n".join(f"  - {op} (node '{where}')" for op, where in unsupported)
        distinct = ", ".join(sorted({op for op, _ in unsupported}))
        raise OnnxImportError(f"{len(unsupported)} node(s) use ops graphopt cannot import "
                              f"({distinct}):\n{listing}", unsupported=unsupported)


    graph = Graph(name or model.graph.name or "main")
    ctx = ImportContext(graph, fold_constants)
    symbols: dict[str, sympy.Symbol] = {}
    frozen = dict(constant_inputs or {})
    for init in model.graph.initializer:
        try:
            array, dtype = tensor_to_array(init)
        except KeyError:
            raise OnnxImportError(f"initializer '{init.name}' has element type "
                                  f"{onnx_dtype_name(init.data_type)}, which graphopt does not "
                                  "support") from None
        except (ValueError, TypeError) as exc:
            raise OnnxImportError(f"initializer '{init.name}' is malformed: {exc}") from exc
        ctx.env[init.name] = graph.add_constant(array, init.name, dtype)
    for info in model.graph.input:
        if info.name in ctx.env:
            continue  # an initializer listed as input (IR version < 4): a constant
        if info.name in frozen:
            t = _value_type(info, symbols, "input")
            data = frozen.pop(info.name)
            if isinstance(data, torch.Tensor):
                array, _ = torch_to_numpy(data.to(t.dtype.torch))
            else:
                array = np.asarray(data).astype(t.dtype.numpy)
            ctx.env[info.name] = graph.add_constant(array, info.name, t.dtype)
            continue
        ctx.env[info.name] = graph.add_input(info.name, _value_type(info, symbols, "input"))
    if frozen:
        raise OnnxImportError(f"constant_inputs names no graph input: {sorted(frozen)}")

    available = set(ctx.env)
    consumed = {i for n in model.graph.node for i in n.input} | {o.name for o in
                                                                model.graph.output}
    for proto in _toposort(model.graph.node, available):
        domain = "" if proto.domain in _DEFAULT_DOMAINS else proto.domain
        node = OnnxNode(proto, opsets.get(proto.domain, opset) if domain else opset)
        ctx.node = node
        before = graph._root._prev
        try:
            result = CONVERTERS[(domain, proto.op_type)](ctx, node)
        except NeedsStaticValue as exc:
            needs = _needs_static_inputs(model, exc.tensor)
            hint = f" (it depends on graph input(s) {needs})" if needs else ""
            raise OnnxImportError(f"cannot import {node.describe()}: {exc}{hint}",
                                  needs_static=needs) from exc
        except OnnxImportError:
            raise
        except GraphoptError as exc:
            raise OnnxImportError(f"cannot import {node.describe()}: {exc}") from exc
        except (ValueError, TypeError, IndexError, KeyError, NotImplementedError) as exc:
            raise OnnxImportError(f"cannot import {node.describe()}: {type(exc).__name__}: "
                                  f"{exc}") from exc
        results = list(result) if isinstance(result, (tuple, list)) else [result]
        new_nodes = []
        cursor = before._next
        while cursor is not graph._root:
            new_nodes.append(cursor)
            cursor = cursor._next
        for out_name, value in zip(node.outputs, results):
            if out_name and value is not None:
                ctx.env[out_name] = value
                if value.producer is not None and value.producer in new_nodes:
                    _rename(graph, value, out_name)
        evaluate_new_nodes(ctx, new_nodes)
        missing = [o for o, v in zip(node.outputs, results + [None] * len(node.outputs))
                   if o and v is None and o in consumed]
        if missing:
            raise OnnxImportError(f"cannot import {node.describe()}: its output(s) {missing} "
                                  "are used but graphopt does not compute them")
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
    if ctx.synthetic:
        cancel_synthetic_layout(graph, ctx.synthetic)
    _dead_code_elimination(graph)
    graph.verify()
    return graph
