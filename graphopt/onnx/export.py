"""Lowering graphopt IR to an ONNX model, op by op through the registry.

Every IR op declares its ONNX lowering with ``@register_lowering("onnx", op)``; the lowering
receives an :class:`OnnxLowering` context and the node, and emits ONNX nodes that write the
node's outputs (``ctx.output(node, i)``)::

    @register_lowering("onnx", "relu")
    def _relu(ctx, node):
        ctx.op("Relu", [ctx.input(node, 0)], out=ctx.output(node))

Ops without a lowering (e.g. a fused op whose author did not add one) are all listed in one
:class:`LoweringError`; nothing is dropped silently. Fused ops may lower to onnxruntime contrib
ops (``domain=MICROSOFT``) when ``ctx.contrib`` is true, and must fall back to standard ONNX
otherwise.

The exported model keeps the IR's value names, declares a ``value_info`` for every
intermediate IR value (size symbols become ``dim_param``), deduplicates initializers with
identical bytes, and moves weights to an external data file next to ``path`` when they would
not fit in one 2 GB protobuf. Both files are written atomically and never through a symlink;
the external data file always lies in the model's own folder (``graphopt.fileio``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Sequence

import numpy as np
import onnx
import sympy
from onnx import helper

from graphopt.errors import GraphoptError, LoweringError
from graphopt.fileio import atomic_write, safe_output_path
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.types import Dim, TensorType
from graphopt.onnx._common import DEFAULT_OPSET, TO_ONNX_DTYPE, array_to_tensor, tensor_buffer

# A serialized ModelProto must stay below 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

_LOWERINGS_LOADED = False


def load_lowerings() -> None:
    """Register every op's "onnx" lowering (``OpDef.lowerings``); importing them is deferred."""
    global _LOWERINGS_LOADED
    if not _LOWERINGS_LOADED:
        _LOWERINGS_LOADED = True
        from graphopt.onnx import (  # noqa: F401  (registers the lowerings)
            lower_attention,
            lower_elementwise,
            lower_extra,
            lower_fused,
            lower_indexing,
            lower_nn,
            lower_quant,
            lower_quant_int,
            lower_reduce,
            lower_shape,
        )


class OnnxLowering:
    """What a lowering sees: names of the node's operands/results and helpers to emit ONNX.

    Attributes:
        graph: the IR graph being lowered.
        opset: the default-domain opset of the model being built.
        contrib: whether onnxruntime contrib ops (``com.microsoft``) may be used.
    """

    def __init__(self, graph: Graph, opset: int, contrib: bool):
        self.graph = graph
        self.opset = opset
        self.contrib = contrib
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []  # headers; bytes in initializer_data
        self.initializer_data: dict[str, tuple[np.ndarray, DType]] = {}
        self.domains: dict[str, int] = {"": opset}
        self.current: Node | None = None
        self._names: dict[Value, str] = {}
        self._used: set[str] = {v.name for v in graph.values()}
        self._init_by_key: dict[tuple, str] = {}
        self._dim_cache: dict[Any, str] = {}
        self._node_count = 0
        self._temp_count = 0

    # ------------------------------------------------------------------------------ names
    def fresh(self, hint: str = "t") -> str:
        """A tensor name used nowhere else in the model."""
        base = f"{self.current.name}__{hint}" if self.current is not None else hint
        while True:
            self._temp_count += 1
            name = f"{base}_{self._temp_count}"
            if name not in self._used:
                self._used.add(name)
                return name

    def name(self, value: Value) -> str:
        """The ONNX tensor name of an IR value (constants become initializers on first use)."""
        name = self._names.get(value)
        if name is None:
            if value.kind != "const":
                raise GraphoptError(f"%{value.name} is used before it is lowered")
            name = self._add_initializer(value.data, value.dtype, value.name)
            self._names[value] = name
        return name

    def input(self, node: Node, i: int) -> str:
        """The ONNX name of operand ``i`` ('' for an absent optional operand)."""
        v = node.inputs[i] if i < len(node.inputs) else None
        return "" if v is None else self.name(v)

    def output(self, node: Node, i: int = 0) -> str:
        value = node.outputs[i]
        self._names[value] = value.name
        return value.name

    def alias(self, node: Node, name: str, i: int = 0) -> None:
        """Output ``i`` of ``node`` is the existing tensor ``name`` (no node is emitted)."""
        self._names[node.outputs[i]] = name

    def finish(self, node: Node, name: str, i: int = 0) -> None:
        """Make tensor ``name`` output ``i`` of ``node``: a temporary that this lowering just
        produced is renamed to the output's name (keeping IR names in the model), anything
        else is aliased."""
        producer = next((n for n in reversed(self.nodes) if name in n.output), None)
        lowered_here = producer is not None and producer.name.startswith(
            f"{self.current.name}/") and name.startswith(f"{self.current.name}__")
        if not lowered_here:
            self.alias(node, name, i)
            return
        out = self.output(node, i)
        for n in self.nodes:
            for k, inp in enumerate(n.input):
                if inp == name:
                    n.input[k] = out
        producer.output[list(producer.output).index(name)] = out

    # ------------------------------------------------------------------------------ emit
    def op(self, op_type: str, inputs: Sequence[str], *, out: str | None = None,
           outs: int | Sequence[str] | None = None, domain: str = "", **attrs: Any):
        """Emit one ONNX node; returns its output name (a list when ``outs`` is given).

        Attribute values are passed to ``onnx.helper.make_node``: give floats as ``float``
        (an ``int`` becomes an INT attribute). ``None`` attributes are left out.
        """
        if outs is None:
            names = [out if out is not None else self.fresh(op_type.lower())]
        elif isinstance(outs, int):
            names = [self.fresh(f"{op_type.lower()}{i}") for i in range(outs)]
        else:
            names = list(outs)
        if domain:
            self.domains.setdefault(domain, 1)
        base = self.current.name if self.current is not None else "graph"
        self._node_count += 1
        node = helper.make_node(
            op_type, list(inputs), names, name=f"{base}/{op_type}_{self._node_count}",
            domain=domain or None, **{k: v for k, v in attrs.items() if v is not None},
        )
        self.nodes.append(node)
        return names if outs is not None else names[0]

    def const(self, array, dtype: DType | None = None, hint: str = "const") -> str:
        """An initializer holding ``array`` (deduplicated by content)."""
        array = np.asarray(array)
        if dtype is None:
            dtype = DType.from_numpy(array.dtype)
        elif dtype is not DType.bfloat16:
            array = array.astype(dtype.numpy)
        return self._add_initializer(array, dtype, hint)

    def scalar(self, value, dtype: DType) -> str:
        """A 0-d initializer of ``dtype`` (bf16 from a Python float is rounded to nearest)."""
        if dtype is DType.bfloat16:
            import torch

            bits = torch.tensor(value, dtype=torch.bfloat16).view(torch.int16).numpy()
            return self.const(bits.astype(np.uint16), DType.bfloat16, "scalar")
        return self.const(np.array(value, dtype=dtype.numpy), dtype, "scalar")

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 initializer (for shapes, axes, pads...)."""
        return self.const(np.array([int(v) for v in values], dtype=np.int64), DType.int64, "ints")

    def cast(self, name: str, src: DType, dst: DType) -> str:
        """``name`` converted to ``dst`` (no node when it already is)."""
        if src == dst:
            return name
        return self.op("Cast", [name], to=TO_ONNX_DTYPE[dst])

    def input_as(self, node: Node, i: int, dtype: DType) -> str:
        """Operand ``i`` cast to ``dtype`` (torch promotion made explicit for ONNX)."""
        return self.cast(self.input(node, i), node.inputs[i].dtype, dtype)

    def fail(self, reason: str) -> LoweringError:
        """A typed error naming the node being lowered; ``raise ctx.fail("why")``."""
        node = self.current
        return LoweringError("onnx", [(node.op, node.describe(), reason)])

    # -------------------------------------------------------------------- symbolic sizes
    def shape_tensor(self, dims: Sequence[Dim]) -> str:
        """A 1-D int64 tensor holding ``dims`` (computed from input shapes for size symbols)."""
        if all(isinstance(d, int) for d in dims):
            return self.ints(dims)
        pieces: list[str] = []
        run: list[int] = []
        for d in dims:
            if isinstance(d, int):
                run.append(d)
                continue
            if run:
                pieces.append(self.ints(run))
                run = []
            pieces.append(self.dim_tensor(d))
        if run:
            pieces.append(self.ints(run))
        return pieces[0] if len(pieces) == 1 else self.op("Concat", pieces, axis=0)

    def dim_tensor(self, dim: Dim) -> str:
        """A 1-element int64 tensor holding the run-time value of ``dim``."""
        if isinstance(dim, int):
            return self.ints([dim])
        if dim.is_number:
            return self.ints([int(dim)])
        key = sympy.srepr(dim)
        if key not in self._dim_cache:
            self._dim_cache[key] = self._lower_dim_expr(dim)
        return self._dim_cache[key]

    def _lower_dim_expr(self, expr: sympy.Expr) -> str:
        if expr.is_Integer:
            return self.ints([int(expr)])
        if expr.is_Symbol:
            source = self.graph.symbol_sources.get(expr)
            if source is None:
                raise self.fail(f"size symbol {expr} is not a dim of any graph input")
            index, axis = source
            shape_input = self.name(self.graph.inputs[index])
            if self.opset >= 15:
                return self.op("Shape", [shape_input], start=axis, end=axis + 1)
            return self.op("Gather", [self.op("Shape", [shape_input]), self.ints([axis])], axis=0)
        if expr.is_Add:
            terms = [self.dim_tensor(a) for a in expr.args]
            out = terms[0]
            for t in terms[1:]:
                out = self.op("Add", [out, t])
            return out
        if expr.is_Mul:
            coeff, rest = expr.as_coeff_Mul()
            num, den = sympy.fraction(sympy.Rational(coeff))
            out = self.dim_tensor(rest) if rest != 1 else self.ints([1])
            if num != 1:
                out = self.op("Mul", [out, self.ints([int(num)])])
            if den != 1:
                out = self.op("Div", [out, self.ints([int(den)])])
            return out
        if expr.is_Pow and expr.exp.is_Integer and int(expr.exp) > 0:
            base = self.dim_tensor(expr.base)
            out = base
            for _ in range(int(expr.exp) - 1):
                out = self.op("Mul", [out, base])
            return out
        if isinstance(expr, (sympy.floor, sympy.ceiling)):
            arg = expr.args[0]
            num, den = sympy.fraction(sympy.together(arg))
            if den.is_Integer:
                n = self.dim_tensor(num)
                if isinstance(expr, sympy.ceiling):
                    n = self.op("Add", [n, self.ints([int(den) - 1])])
                # Sizes are non-negative, where ONNX's truncating Div equals floor division.
                return self.op("Div", [n, self.ints([int(den)])])
        if isinstance(expr, sympy.Mod):
            return self.op("Mod", [self.dim_tensor(expr.args[0]), self.dim_tensor(expr.args[1])])
        if isinstance(expr, (sympy.Max, sympy.Min)):
            args = [self.dim_tensor(a) for a in expr.args]
            return self.op("Max" if isinstance(expr, sympy.Max) else "Min", args)
        raise self.fail(f"cannot compute the size expression {expr} in ONNX")

    # ------------------------------------------------------------------------------ internals
    def _add_initializer(self, array: np.ndarray, dtype: DType, hint: str) -> str:
        array = np.require(array, requirements="C")
        # No copy of the weights while lowering: the key hashes the array's own buffer, and the
        # bytes are written once at the end (_fill_initializers), in place or to the data file.
        key = (dtype, array.shape, array.dtype.str,
               hashlib.sha1(memoryview(array.reshape(-1).view(np.uint8))).digest())
        name = self._init_by_key.get(key)
        if name is None:
            name = hint if hint not in self._used else self.fresh(hint)
            self._used.add(name)
            self._init_by_key[key] = name
            self.initializers.append(array_to_tensor(array, dtype, name, data=False))
            self.initializer_data[name] = (array, dtype)
        return name


# ---------------------------------------------------------------------------------- types
def onnx_dim(dim: Dim) -> int | str:
    """An ONNX dim: an int, or a ``dim_param`` string for a size expression."""
    if isinstance(dim, int):
        return dim
    if dim.is_number:
        return int(dim)
    return str(dim).replace(" ", "")


def value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    if t.dtype not in TO_ONNX_DTYPE:
        raise GraphoptError(f"dtype {t.dtype} of %{name} has no ONNX equivalent")
    return helper.make_tensor_value_info(name, TO_ONNX_DTYPE[t.dtype],
                                         [onnx_dim(d) for d in t.shape])


# ------------------------------------------------------------------------------------ driver
def lower_graph(graph: Graph, opset: int = DEFAULT_OPSET, contrib: bool = True
                ) -> tuple[onnx.GraphProto, dict[str, int]]:
    """Lower every node of ``graph``; returns the ONNX graph and the opset imports it needs.

    Raises:
        LoweringError: listing every node whose op has no ONNX lowering or that its lowering
            rejected.
    """
    onnx_graph, domains, data = _lower_graph(graph, opset, contrib)
    _fill_initializers(onnx_graph, data)
    return onnx_graph, domains


def _lower_graph(graph: Graph, opset: int, contrib: bool
                 ) -> tuple[onnx.GraphProto, dict[str, int], dict[str, tuple]]:
    """``lower_graph`` with the initializers' bytes left out (returned by name instead).

    Raises:
        LoweringError: listing every node whose op has no ONNX lowering or that its lowering
            rejected.
    """
    load_lowerings()
    ctx = OnnxLowering(graph, opset, contrib)
    for value in graph.inputs:
        ctx._names[value] = value.name
    failures: list[tuple[str, str, str]] = []
    live = _live_nodes(graph)
    for node in graph.nodes:
        fn = node.opdef.lowerings.get("onnx")
        if fn is None:
            failures.append((node.op, node.describe(), "no ONNX lowering is registered for this "
                             "op (add one with @register_lowering('onnx', op))"))
            continue
        if failures or node not in live:
            continue  # keep collecting ops without lowerings; dead pure nodes emit nothing
        ctx.current = node
        try:
            fn(ctx, node)
        except LoweringError as exc:
            failures.extend(exc.failures)
            continue
        missing = [v.name for v in node.outputs if v not in ctx._names]
        if missing:
            raise GraphoptError(f"the ONNX lowering of {node.describe()} did not write "
                                f"output(s) {missing}")
    ctx.current = None
    if failures:
        raise LoweringError("onnx", failures)

    outputs: list[onnx.ValueInfoProto] = []
    seen_outputs: set[str] = {v.name for v in graph.inputs}
    for value in graph.outputs:
        name = ctx.name(value)
        if name in seen_outputs or value.kind != "node" or name != value.name:
            # ONNX outputs must be distinct tensors produced by nodes: copy with Identity.
            alias = ctx.fresh(f"{value.name}_output")
            ctx.op("Identity", [name], out=alias)
            name = alias
        seen_outputs.add(name)
        outputs.append(value_info(name, value.type))

    _drop_dead_onnx_nodes(ctx, {o.name for o in outputs})
    output_names = {o.name for o in outputs}
    infos = [
        value_info(v.name, v.type)
        for node in graph.nodes if node in live for v in node.outputs
        if v.name not in output_names and v in ctx._names and ctx._names[v] == v.name
    ]
    onnx_graph = helper.make_graph(
        ctx.nodes, graph.name,
        [value_info(v.name, v.type) for v in graph.inputs],
        outputs, initializer=ctx.initializers, value_info=infos,
    )
    return onnx_graph, ctx.domains, ctx.initializer_data


# Initializers smaller than this stay inside the model file when weights go external.
EXTERNAL_MIN_BYTES = 1024
# Offsets in the external data file are multiples of this (a page), so readers can map the
# weights instead of copying them.
EXTERNAL_ALIGNMENT = 4096


def _nbytes(array: np.ndarray, dtype: DType) -> int:
    return array.size * (1 if dtype is DType.bool else np.dtype(dtype.numpy).itemsize)


def _fill_initializers(onnx_graph: onnx.GraphProto, data: dict[str, tuple]) -> None:
    """Put each initializer's bytes into the model (one copy of every weight)."""
    for tensor in onnx_graph.initializer:
        array, dtype = data[tensor.name]
        tensor.raw_data = tensor_buffer(array, dtype).tobytes()


def external_data_location(path: str | os.PathLike) -> str:
    """The external data file of the model saved at ``path``: ``<file name>.data``.

    A bare file name: the model only ever refers to a file in its own folder.
    """
    return os.path.basename(os.fspath(path)) + ".data"


def _write_external_data(onnx_graph: onnx.GraphProto, data: dict[str, tuple], f,
                         location: str) -> None:
    """Stream the initializers' bytes from the IR's arrays into the open data file ``f``.

    Written straight from the arrays: the model never holds the weights as protobuf bytes
    (protobuf keeps bytes in the message's arena until the whole message dies, so bytes put
    in and cleared again would stay resident as long as the caller keeps the model). ``f`` is
    the temporary file of an ``atomic_write`` that becomes ``location`` (see ``_save``).
    """
    for tensor in onnx_graph.initializer:
        array, dtype = data[tensor.name]
        buf = tensor_buffer(array, dtype)
        if buf.nbytes < EXTERNAL_MIN_BYTES:
            tensor.raw_data = buf.tobytes()
            continue
        f.write(b"\0" * (-f.tell() % EXTERNAL_ALIGNMENT))
        offset = f.tell()
        f.write(memoryview(buf.reshape(-1).view(np.uint8)))
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)),
                           ("length", str(buf.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value


def _save(model: onnx.ModelProto, data: dict[str, tuple] | None, path: str) -> None:
    """Write ``model`` to ``path`` (and, with ``data``, its weights to ``<path>.data``).

    Both files are written atomically (``graphopt.fileio.atomic_write``: temp file + rename)
    and never through a symlink; the data file must stay in the model's folder. Both temporary
    files are complete before either is renamed into place, so an error while writing (disk
    full while streaming the weights) leaves the old model and the old data file untouched.

    Raises:
        UnsafeInputError: ``path`` or ``<path>.data`` is a symlink, or the data file would
            resolve outside the model's folder.
    """
    target = safe_output_path(path)
    if data is None:
        with atomic_write(target) as f:
            f.write(model.SerializeToString())
        return
    folder = os.path.dirname(target)
    location = external_data_location(target)
    with atomic_write(os.path.join(folder, location), root=folder) as data_file:
        _write_external_data(model.graph, data, data_file, location)
        with atomic_write(target) as model_file:
            model_file.write(model.SerializeToString())


def _drop_dead_onnx_nodes(ctx: OnnxLowering, outputs: set[str]) -> None:
    """Remove emitted nodes (and initializers) nothing reads: a lowering may read a tensor
    from before some IR nodes (e.g. attention reading q before its head split), leaving the
    lowered IR nodes unused."""
    needed = set(outputs)
    kept = []
    for node in reversed(ctx.nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    ctx.nodes[:] = reversed(kept)
    ctx.initializers[:] = [t for t in ctx.initializers if t.name in needed]
    for value, name in list(ctx._names.items()):
        if name not in needed and value.kind == "node":
            del ctx._names[value]


def _live_nodes(graph: Graph) -> set[Node]:
    """Nodes that contribute to an output (impure nodes always count)."""
    live: set[Node] = set()
    needed = {id(v) for v in graph.outputs}
    for node in reversed(graph.nodes):
        if node.has_trait("pure") and not any(id(o) in needed for o in node.outputs):
            continue
        live.add(node)
        needed.update(id(v) for v in node.inputs if v is not None)
    return live


def to_onnx(graph: Graph, path: str | os.PathLike | None = None, opset: int | None = None, *,
            contrib_ops: bool = True, external_data: bool | None = None,
            check: bool = True) -> onnx.ModelProto:
    """Lower ``graph`` to an ONNX model (and save it to ``path`` when given).

    Args:
        graph: the IR graph.
        path: where to save the model; weights go to ``<path>.data`` next to it when external.
        opset: default-domain opset (default: the highest opset onnxruntime fully supports).
        contrib_ops: allow onnxruntime contrib ops (``com.microsoft``, e.g. MultiHeadAttention);
            False gives a model any ONNX runtime can load.
        external_data: store weights in an external file (None: only when they exceed 2 GB,
            which needs ``path``).
        check: run ``onnx.checker.check_model(full_check=True)`` on the result.

    Returns:
        The model. With external data, its initializers point at the file written next to
        ``path``.

    Raises:
        LoweringError: ops without an ONNX lowering (all of them are listed).
        UnsafeInputError: ``path`` or ``<path>.data`` is a symlink (files are written
            atomically and never through a link; see ``graphopt.fileio``).
    """
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if path is not None:
        path = safe_output_path(path)  # refuse a symlinked target before the (slow) lowering
    onnx_graph, domains, data = _lower_graph(graph, opset, contrib_ops)
    total = sum(_nbytes(array, dtype) for array, dtype in data.values())
    if external_data is None:
        external_data = total > EXTERNAL_DATA_THRESHOLD
    if external_data and path is None:
        raise GraphoptError(
            f"the weights ({total / 2**30:.2f} GiB) need an external data file: pass path=")
    opset_imports = [helper.make_opsetid(d, v) for d, v in domains.items()]
    # make_model copies the graph, so it gets the initializers' headers alone; the bytes go
    # into the model's own graph afterwards (or to the data file), each weight copied once.
    model = helper.make_model(onnx_graph, opset_imports=opset_imports,
                              producer_name="graphopt", producer_version=_version())
    del onnx_graph
    model.ir_version = helper.find_min_ir_version_for(opset_imports, ignore_unknown=True)
    if external_data:
        _save(model, data, path)
    else:
        _fill_initializers(model.graph, data)
        if path is not None:
            _save(model, None, path)
    del data
    if check:
        try:
            onnx.checker.check_model(path if external_data else model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise LoweringError("onnx", [("<model>", f"opset {opset}", (
                f"onnx.checker rejects the exported model: {exc}. Usually an op/dtype "
                "combination ONNX does not define at this opset (e.g. bfloat16 Elu); "
                "otherwise a graphopt bug, please report it"))]) from exc
    return model


def _version() -> str:
    from graphopt.version import __version__

    return __version__
