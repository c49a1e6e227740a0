"""The ``.graphopt`` bundle: a torch-backend model saved without pickle.

``torch.save`` of a module is a pickle, and loading a pickle runs whatever code the file names,
so graphopt never asks anyone to ``torch.load(..., weights_only=False)`` its outputs. A bundle is
one `safetensors <https://huggingface.co/docs/safetensors>`_ file instead:

* the tensors are the graph's constants, by IR name (any safetensors reader sees a plain state
  dict; bfloat16 as ``BF16``);
* the header's ``__metadata__`` holds ``format`` (``graphopt-torch/1``), ``graph`` (the IR text
  of :func:`graphopt.parse`, constants declared by type only) and ``input_spec`` /
  ``output_spec`` (the model's pytree I/O structure, torch's ``treespec_dumps`` JSON, or empty
  for flat tensors).

Loading reads the header with ``json`` and validates every entry (dtype known, shape of
non-negative ints, byte range matching the shape and lying inside the file, entries tiling the
data exactly) and the total size against ``graphopt.limits`` *before* reading any tensor; then
the IR text goes through ``graphopt.ir.parser.parse_graph`` (a grammar, no ``eval``) and the
module is rebuilt with ``to_torch``. No step unpickles or imports anything named by the file:
the I/O structure is decoded by our own reader, which only accepts container types that are
already registered with ``torch.utils._pytree`` (torch's own ``treespec_loads`` would import a
module named in the file). Any inconsistency raises :class:`~graphopt.errors.ArtifactError`
naming the file and the entry; a declared size over the memory budget raises
:class:`~graphopt.errors.ResourceLimitError`.

Loading a bundle from a path memory-maps it (:mod:`graphopt.filemap`): the graph's constants
and the loaded module's weights are copy-on-write views of the file's pages, so a load reads
nothing up front and several processes loading one bundle share its pages. Every tensor is
aligned to its element size in the files :func:`save_bundle` writes, and those whose size is a
multiple of 64 bytes to 64 (64-byte padded header); a misaligned tensor from another writer,
or a file object, is read instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import warnings
from typing import Any, BinaryIO

import numpy as np
import torch.utils._pytree as pytree

from graphopt.errors import ArtifactError, GraphoptError, ParseError, entry_point
from graphopt.fileio import atomic_write
from graphopt.filemap import map_region, view_of
from graphopt.ir.dtypes import DType, torch_to_numpy
from graphopt.ir.graph import Graph
from graphopt.limits import check_bytes, numel_of
from graphopt.stagereport import reports_stage

FORMAT = "graphopt-torch/1"
SUFFIX = ".graphopt"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit: other readers must accept our files
MAX_SPEC_DEPTH = 64
MAX_SPEC_NODES = 100_000
_ST_DTYPE = {
    DType.float32: "F32", DType.float16: "F16", DType.bfloat16: "BF16", DType.float64: "F64",
    DType.int8: "I8", DType.uint8: "U8", DType.int16: "I16", DType.int32: "I32",
    DType.int64: "I64", DType.bool: "BOOL",
}
_FROM_ST = {v: k for k, v in _ST_DTYPE.items()}
_METADATA = "__metadata__"


# ------------------------------------------------------------------------------- public API
def save_module(module_or_graph: Any, path: str | os.PathLike) -> None:
    """Save a ``to_torch`` module (with its current weights) or a graph as a bundle.

    Nothing in the file is pickled, so :func:`load_module` can read one from an untrusted
    source. The file is written atomically and never through a symlink. Example::

        save_module(graphopt.to_torch(graph), "model.graphopt")
        module = load_module("model.graphopt")   # a TorchModule, same outputs

    Raises:
        GraphoptError: not a Graph or a ``to_torch`` module, or its weights were changed to
            another dtype/shape than the IR declares (names the weight).
        UnsafeInputError: ``path`` is a symlink.
    """
    graph = module_or_graph if isinstance(module_or_graph, Graph) else \
        graph_of_module(module_or_graph)
    save_bundle(graph, path)


@reports_stage("load bundle")
@entry_point("loading a .graphopt bundle")
def load_module(path: str | os.PathLike | BinaryIO):
    """Rebuild the module saved by :func:`save_module`: parse the IR, lower it with ``to_torch``.

    Safe on untrusted files: no pickle, no ``eval``, no import of anything the file names; the
    declared tensor sizes are checked against ``graphopt.limits`` before reading.

    Returns:
        A ``graphopt.backends.torch_module.TorchModule``; with ``report=True``, it and a
        :class:`~graphopt.stagereport.StageReport` (time, peak RSS).

    Raises:
        ArtifactError: not a bundle, truncated, or inconsistent (names the file and the entry).
        ResourceLimitError: the declared tensors exceed the memory budget.
    """
    from graphopt.backends.torch_module import to_torch  # it imports this module

    return to_torch(load_graph(path), share_mapped_weights=True)


def module_ir_text(graph: Graph, used: set[str]) -> str:
    """The IR text a ``to_torch`` module keeps for :func:`save_module`: the graph without the
    constants no node reads (the module has no weight for them to save)."""
    if len(used) == len(graph.constants):
        return str(graph)
    from graphopt.ir.clone import clone_graph

    trimmed = clone_graph(graph)  # shares the (read-only) arrays: cheap
    for name in [n for n in trimmed.constants if n not in used]:
        trimmed.remove_constant(trimmed.constants[name])
    return str(trimmed)


# ------------------------------------------------------------------------------------ save
def save_bundle(graph: Graph, path: str | os.PathLike) -> None:
    """Write ``graph`` (IR text, constants, I/O structure) to ``path`` as a bundle.

    The file is written atomically and never through a symlink (``graphopt.fileio``).

    Raises:
        GraphoptError: a constant named ``__metadata__`` (reserved by safetensors) or IR text
            over the safetensors header limit.
        UnsafeInputError: ``path`` is a symlink.
    """
    metadata = {"format": FORMAT, "graph": str(graph),
                "input_spec": encode_spec(graph.input_spec, "input"),
                "output_spec": encode_spec(graph.output_spec, "output")}
    tensors = []
    for name, value in graph.constants.items():
        if name == _METADATA:
            raise GraphoptError(f"constant %{name}: the name is reserved by safetensors; "
                                "rename it before saving")
        tensors.append((name, np.require(value.data, requirements="C"), value.dtype))
    # Data starts 64-byte aligned (header padding) and tensors whose size is a multiple of 64
    # bytes come first, so each of those (every weight matrix in practice) starts 64-byte
    # aligned in the file and in a map of it: torch's GEMM and convolution kernels sum in an
    # order that depends on their operands' alignment, so a loaded model computes bit for bit
    # what the saved one did. The rest follow, widest elements first, so every tensor's
    # offset is still a multiple of its item size.
    tensors.sort(key=lambda t: (t[1].size * t[2].itemsize % 64 != 0, -t[2].itemsize, t[0]))
    header: dict[str, Any] = {_METADATA: metadata}
    offset = 0
    for name, array, dtype in tensors:
        nbytes = array.size * dtype.itemsize
        header[name] = {"dtype": _ST_DTYPE[dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-(8 + len(blob)) % 64)  # (8: the length prefix)
    if len(blob) > MAX_HEADER_BYTES:
        raise GraphoptError(f"cannot save {os.fspath(path)}: the IR text and header take "
                            f"{len(blob)} bytes, over the safetensors limit of "
                            f"{MAX_HEADER_BYTES}")
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, array, _ in tensors:
            if array.size:
                f.write(memoryview(array.reshape(-1).view(np.uint8)))


def graph_of_module(module: Any) -> Graph:
    """The graph of a ``to_torch`` module with the module's *current* weights (after training).

    Raises:
        GraphoptError: ``module`` was not made by ``graphopt.to_torch``, or a weight's dtype or
            shape no longer matches the IR (e.g. after ``module.half()``), naming the weight.
    """
    from graphopt.ir.parser import parse_graph

    text = getattr(module, "ir_text", None)
    if text is None:
        raise GraphoptError(f"save_module takes a Graph or a module made by graphopt.to_torch, "
                            f"got {type(module).__name__}; trace it first (graphopt.trace)")
    tensors = dict(module.graph_module.named_parameters(remove_duplicate=False))
    tensors.update(module.graph_module.named_buffers(remove_duplicate=False))
    constants = {}
    for name, attribute in module.constant_paths.items():
        if attribute not in tensors:
            raise GraphoptError(f"the module has no weight {attribute} (constant %{name}); "
                                "it was removed after to_torch")
        constants[name] = torch_to_numpy(tensors[attribute])[0]
    try:
        graph = parse_graph(text, constants)
    except ParseError as exc:
        raise GraphoptError(f"the module's weights no longer match its graph: {exc}") from exc
    graph.input_spec, graph.output_spec = module.input_spec, module.output_spec
    return graph


def encode_spec(spec: Any, what: str) -> str:
    """``treespec_dumps`` JSON of a pytree spec; "" for None or a structure it cannot write."""
    if spec is None:
        return ""
    try:
        return pytree.treespec_dumps(spec)
    except Exception as exc:  # a container type registered without a serialized name
        warnings.warn(f"the model's {what} structure cannot be saved ({exc}); the loaded "
                      f"module takes/returns flat tensors", stacklevel=3)
        return ""


# ------------------------------------------------------------------------------------ load
@entry_point("loading a .graphopt bundle")
def load_graph(source: str | os.PathLike | BinaryIO) -> Graph:
    """Read a bundle written by :func:`save_bundle`; returns the graph with its I/O structure.

    Args:
        source: the file's path, or a seekable binary file object (``io.BytesIO(data)``).

    Raises:
        ArtifactError: not a bundle, truncated, or any entry inconsistent (names the entry).
        ResourceLimitError: the tensors declared by the header exceed the memory budget.
    """
    from graphopt.ir.parser import parse_graph

    if hasattr(source, "read"):
        where = str(getattr(source, "name", "<bundle bytes>"))
        opened = contextlib.nullcontext(source)
    else:
        where = os.fspath(source)
        try:
            opened = open(where, "rb")
        except OSError as exc:
            raise ArtifactError(f"cannot read {where}: {exc.strerror or exc}") from exc
    with opened as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        metadata, entries, data_start = _read_header(f, where, size)
        # A path is memory-mapped (graphopt.filemap): tensors are views of the file's pages.
        region = None if hasattr(source, "read") else \
            map_region(where, data_start, size - data_start)
        arrays = {}
        for name, entry in entries.items():
            mapped = None if region is None else _mapped_tensor(region, where, name, entry)
            arrays[name] = mapped if mapped is not None else \
                _read_tensor(f, where, name, entry, data_start)
    try:
        graph = parse_graph(metadata["graph"], arrays)
    except ParseError as exc:
        raise ArtifactError(f"{where}: entry '{_METADATA}.graph' is not valid IR text: "
                            f"{exc}") from exc
    for name, value in graph.constants.items():
        if name not in arrays:
            raise ArtifactError(f"{where}: constant %{name} of the graph has no tensor entry")
        stored = arrays[name]
        if np.may_share_memory(stored, value.data):
            continue  # the parser took the entry itself
        inline = np.require(value.data, requirements="C")  # (ascontiguousarray makes 0-d 1-d)
        if stored.shape != inline.shape or stored.tobytes() != inline.tobytes():
            raise ArtifactError(f"{where}: entry '{name}' differs from the constant's inline "
                                "data in the IR text")
    extra = sorted(set(arrays) - set(graph.constants))
    if extra:
        raise ArtifactError(f"{where}: entry '{extra[0]}' is not a constant of the graph "
                            f"({len(extra)} such entries)")
    graph.input_spec = decode_spec(metadata.get("input_spec", ""), where, "input_spec",
                                   len(graph.inputs))
    graph.output_spec = decode_spec(metadata.get("output_spec", ""), where, "output_spec",
                                    len(graph.outputs))
    return graph


def _read_header(f, where: str, size: int) -> tuple[dict, dict, int]:
    """Validated ``(metadata, entries, data start)``; nothing sized by the file is allocated
    before its size has been checked against the file and the budget."""
    if size < 8:
        raise ArtifactError(f"{where} is not a {FORMAT} bundle: {size} bytes, truncated "
                            "(a safetensors file starts with an 8-byte header length)")
    head = f.read(8)
    if len(head) != 8:
        raise ArtifactError(f"{where}: the file shrank while being read")
    (length,) = struct.unpack("<Q", head)
    if length > min(MAX_HEADER_BYTES, size - 8):
        raise ArtifactError(f"{where} is not a {FORMAT} bundle: its header length {length} is "
                            f"beyond the file ({size} bytes) or the {MAX_HEADER_BYTES}-byte "
                            "safetensors limit (truncated or not safetensors)")
    raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{where} is not a {FORMAT} bundle: the header is not JSON "
                            f"({exc})") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{where}: the header is a JSON {type(header).__name__}, not an "
                            "object")
    metadata = header.pop(_METADATA, None)
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise ArtifactError(f"{where} is not a {FORMAT} bundle (entry '{_METADATA}.format' is "
                            f"{found!r}); a plain safetensors state dict has no graph to load")
    for key in ("graph", "input_spec", "output_spec"):
        if not isinstance(metadata.get(key, ""), str):
            raise ArtifactError(f"{where}: entry '{_METADATA}.{key}' must be a string")
    if "graph" not in metadata:
        raise ArtifactError(f"{where}: entry '{_METADATA}.graph' (the IR text) is missing")
    data_size = size - 8 - length
    total = 0
    spans = []
    for name, entry in header.items():
        nbytes = _check_entry(where, name, entry)
        total += nbytes
        spans.append((entry["data_offsets"][0], entry["data_offsets"][1], name))
    check_bytes(total, f"{where}: the tensors its header declares")
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise ArtifactError(f"{where}: entry '{name}' starts at byte {begin} of the data, "
                                f"expected {position} (entries overlap or leave a gap)")
        position = end
    if position != data_size:
        raise ArtifactError(f"{where}: the entries cover {position} bytes of data but the file "
                            f"holds {data_size} (truncated or trailing bytes)")
    return metadata, header, 8 + length


def _check_entry(where: str, name: str, entry: Any) -> int:
    """Byte size of a validated tensor entry."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ArtifactError(f"{where}: entry '{name}' must be an object with exactly dtype, "
                            "shape and data_offsets")
    dtype = _FROM_ST.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise ArtifactError(f"{where}: entry '{name}' has dtype {entry['dtype']!r}; graphopt "
                            f"reads {', '.join(_FROM_ST)}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ArtifactError(f"{where}: entry '{name}' has shape {shape!r}; expected a list of "
                            "non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets)) \
            or offsets[0] > offsets[1]:
        raise ArtifactError(f"{where}: entry '{name}' has data_offsets {offsets!r}; expected "
                            "[begin, end] with 0 <= begin <= end")
    nbytes = numel_of(shape) * dtype.itemsize
    check_bytes(nbytes, f"{where}: entry '{name}' ({entry['dtype']}{shape})")
    if offsets[1] - offsets[0] != nbytes:
        raise ArtifactError(f"{where}: entry '{name}' is {entry['dtype']}{shape} ({nbytes} "
                            f"bytes) but its data_offsets span {offsets[1] - offsets[0]} bytes")
    return nbytes


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _mapped_tensor(region: np.ndarray, where: str, name: str, entry: dict) -> np.ndarray | None:
    """The entry as a view of the mapped data region; None where it is not aligned."""
    dtype = _FROM_ST[entry["dtype"]]
    array = view_of(region, entry["data_offsets"][0], tuple(entry["shape"]), dtype.numpy)
    if array is not None:
        _check_bool(array, dtype, where, name)
    return array


def _check_bool(array: np.ndarray, dtype: DType, where: str, name: str) -> None:
    if dtype is DType.bool and array.size and array.view(np.uint8).max() > 1:
        raise ArtifactError(f"{where}: entry '{name}' is BOOL but holds bytes other than 0/1")


def _read_tensor(f, where: str, name: str, entry: dict, data_start: int) -> np.ndarray:
    dtype = _FROM_ST[entry["dtype"]]
    array = np.empty(tuple(entry["shape"]), dtype=dtype.numpy)
    if array.size:
        f.seek(data_start + entry["data_offsets"][0])
        if f.readinto(memoryview(array.reshape(-1).view(np.uint8))) != array.nbytes:
            raise ArtifactError(f"{where}: entry '{name}' is cut short (the file changed or is "
                                "truncated)")
    _check_bool(array, dtype, where, name)
    return array


def decode_spec(text: str, where: str, key: str, leaves: int) -> Any:
    """A pytree spec from ``treespec_dumps`` JSON, without importing anything it names.

    Only types already registered with ``torch.utils._pytree`` under a serialized name and
    whose context is plain JSON are accepted (tuple, list, dict, OrderedDict, dataclass-like
    model outputs...); a type that is not registered in this process (its package was not
    imported) gives a warning and flat tensors.

    Raises:
        ArtifactError: malformed JSON, too deep, or a structure whose leaf count differs from
            the graph's inputs/outputs.
    """
    if not text:
        return None
    try:
        protocol, tree = json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ArtifactError(f"{where}: entry '{_METADATA}.{key}' is not a pytree spec "
                            f"({exc})") from None
    if protocol != 1:
        raise ArtifactError(f"{where}: entry '{_METADATA}.{key}' uses pytree protocol "
                            f"{protocol!r}; graphopt reads protocol 1")
    budget = [MAX_SPEC_NODES]
    try:
        spec = _spec_node(tree, 0, budget)
    except _UnknownType as exc:
        warnings.warn(f"{where}: the {key.replace('_', ' ')} uses the container type {exc} "
                      "that is not registered in this process (import its package before "
                      "loading to get it back); the module takes/returns flat tensors",
                      stacklevel=3)
        return None
    except ArtifactError as exc:
        raise ArtifactError(f"{where}: entry '{_METADATA}.{key}': {exc}") from None
    try:  # the structure must rebuild and flatten back to itself, with one leaf per tensor
        dummy = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
        consistent = pytree.tree_structure(dummy) == spec
    except Exception as exc:
        raise ArtifactError(f"{where}: entry '{_METADATA}.{key}' is inconsistent "
                            f"({type(exc).__name__}: {exc})") from None
    if not consistent or spec.num_leaves != leaves:
        raise ArtifactError(f"{where}: entry '{_METADATA}.{key}' has {spec.num_leaves} leaves "
                            f"for {leaves} graph {key.split('_')[0]}s")
    return spec


class _UnknownType(Exception):
    pass


_LEAF = pytree.tree_structure(0)


def _spec_node(node: Any, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if depth > MAX_SPEC_DEPTH or budget[0] < 0:
        raise ArtifactError(f"nested deeper than {MAX_SPEC_DEPTH} or more than "
                            f"{MAX_SPEC_NODES} nodes")
    if not isinstance(node, dict) or set(node) != {"type", "context", "children_spec"} \
            or not isinstance(node["children_spec"], list):
        raise ArtifactError("a node must be {type, context, children_spec}")
    name, context, children = node["type"], node["context"], node["children_spec"]
    if name is None:
        if context is not None or children:
            raise ArtifactError("a leaf has a context or children")
        return _LEAF
    typ = pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE.get(name) if isinstance(name, str) else None
    if typ is None:
        raise _UnknownType(repr(name))
    node_def = pytree.SUPPORTED_SERIALIZED_TYPES.get(typ)
    if node_def is None or node_def.from_dumpable_context is not None:
        raise _UnknownType(f"{name!r} (it has a custom context decoder)")
    if not isinstance(context, str):
        raise ArtifactError(f"the context of {name} is not JSON text")
    try:
        context = json.loads(context)
    except (ValueError, RecursionError):
        raise ArtifactError(f"the context of {name} is not JSON") from None
    if not _plain_json(context, 0):
        raise ArtifactError(f"the context of {name} is not a list of names")
    specs = [_spec_node(c, depth + 1, budget) for c in children]
    try:
        return pytree.TreeSpec(typ, context, specs)
    except Exception as exc:  # the type's own checks on its context and children
        raise ArtifactError(f"{name}: {type(exc).__name__}: {exc}") from None


def _plain_json(value: Any, depth: int) -> bool:
    """None, a string, an int, or a (shallow) list of those: what builtin contexts hold."""
    if value is None or isinstance(value, (str, int)):
        return True
    return depth == 0 and isinstance(value, list) and all(_plain_json(v, 1) for v in value)


__all__ = ["FORMAT", "SUFFIX", "decode_spec", "encode_spec", "graph_of_module", "load_graph",
           "load_module", "module_ir_text", "save_bundle", "save_module"]
