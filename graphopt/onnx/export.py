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

import os

import numpy as np
import onnx
from onnx import helper

from graphopt.errors import GraphoptError, LoweringError
from graphopt.fileio import atomic_write, safe_output_path
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph, Node
from graphopt.ir.types import Dim, TensorType
from graphopt.onnx._common import DEFAULT_OPSET, TO_ONNX_DTYPE, tensor_buffer
from graphopt.onnx.int8_weights import check_encoding
from graphopt.onnx.lowering_context import OnnxLowering
from graphopt.stagereport import reports_stage

__all__ = ["OnnxLowering", "lower_graph", "to_onnx", "load_lowerings", "external_data_location",
           "onnx_dim", "value_info", "EXTERNAL_DATA_THRESHOLD", "EXTERNAL_MIN_BYTES",
           "EXTERNAL_ALIGNMENT", "INT64_MAX", "INT64_MIN", "TO_ONNX_DTYPE"]

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
def lower_graph(graph: Graph, opset: int = DEFAULT_OPSET, contrib: bool = True,
                int8_weights: str = "s8") -> tuple[onnx.GraphProto, dict[str, int]]:
    """Lower every node of ``graph``; returns the ONNX graph and the opset imports it needs.

    Raises:
        LoweringError: listing every node whose op has no ONNX lowering or that its lowering
            rejected.
    """
    onnx_graph, domains, data = _lower_graph(graph, opset, contrib, int8_weights)
    _fill_initializers(onnx_graph, data)
    return onnx_graph, domains


def _lower_graph(graph: Graph, opset: int, contrib: bool, int8_weights: str = "s8"
                 ) -> tuple[onnx.GraphProto, dict[str, int], dict[str, tuple]]:
    """``lower_graph`` with the initializers' bytes left out (returned by name instead).

    Raises:
        LoweringError: listing every node whose op has no ONNX lowering or that its lowering
            rejected.
    """
    load_lowerings()
    ctx = OnnxLowering(graph, opset, contrib, check_encoding(int8_weights))
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


@reports_stage("to_onnx")
def to_onnx(graph: Graph, path: str | os.PathLike | None = None, opset: int | None = None, *,
            contrib_ops: bool = True, external_data: bool | None = None,
            check: bool = True, int8_weights: str = "s8") -> onnx.ModelProto:
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
        int8_weights: "s8" (default) stores integer GEMM / conv weights as int8 (onnxruntime's
            fast U8S8 kernels, exact only on CPUs with VNNI); "u8" stores them as u8 with zero
            point 128 (U8U8 kernels, exact on every CPU). See ``graphopt.onnx.int8_weights``.
        report: also return a :class:`~graphopt.stagereport.StageReport` (time, peak RSS).

    Returns:
        The model. With external data, its initializers point at the file written next to
        ``path``. ``(model, StageReport)`` with ``report=True``.

    Raises:
        LoweringError: ops without an ONNX lowering (all of them are listed).
        UnsafeInputError: ``path`` or ``<path>.data`` is a symlink (files are written
            atomically and never through a link; see ``graphopt.fileio``).
        StaleConstantError: weights the graph borrowed from the traced model were changed in
            place since the trace.
    """
    opset = DEFAULT_OPSET if opset is None else int(opset)
    graph.check_borrowed_constants()
    if path is not None:
        path = safe_output_path(path)  # refuse a symlinked target before the (slow) lowering
    onnx_graph, domains, data = _lower_graph(graph, opset, contrib_ops, int8_weights)
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
