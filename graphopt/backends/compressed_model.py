"""The compressed model file (``.gcm``): a graph with Deep-Compression-coded weights.

``save_compressed(graph, path)`` writes the graph's IR text and its constants into a ``.gcm``
container (``graphopt.codec.container``: versioned header, zlib JSON directory, CRC-32 per
section, no pickle); ``load_compressed(path)`` reads it back into an equal graph (every constant
bit-exact). Each constant is stored in the smallest of the encodings that fit it:

* ``indices``: codebook indices, the first operand of ``codebook_decode`` (graphopt/ops/
  codebook.py, made by ``graphopt.quantize(graph, "codebook")``): sparse index coding plus
  canonical Huffman codes (``graphopt.codec.index_stream``). This is where the weights shrink:
  a 5-bit codebook index of a weight that pruning kept costs about 3-5 bits, a pruned one a
  share of a gap.
* ``deflate``: the little-endian bytes, zlib-compressed, where that saves at least 1/8.
* ``raw``: the little-endian bytes.
* constants of at most ``INLINE_LIMIT`` elements are written in the IR text itself.

The directory's ``meta`` holds ``{"format": "graphopt-model", "graph": IR text, "constants":
{name: entry}, "input_spec", "output_spec"}``; an entry gives the encoding, the IR dtype and the
shape. Reading checks everything before trusting it (dtype known, shape within the memory
budget, byte counts, decoded index ranges) and raises ``CompressionError`` naming the file and
the constant (or section) on any inconsistency; the container has already refused truncated or
bit-flipped sections by their checksums.
"""

from __future__ import annotations

import os
import time
import zlib

import numpy as np

from graphopt.backends.compressed_report import CompressedFile, ConstantRecord
from graphopt.backends.torch_bundle import decode_spec, encode_spec
from graphopt.codec.container import read_container, read_container_bytes, write_container
from graphopt.codec.index_stream import decode_indices, encode_indices
from graphopt.errors import (
    ArtifactError,
    CompressionError,
    GraphoptError,
    ParseError,
    entry_point,
)
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph, Value
from graphopt.ir.printer import INLINE_LIMIT
from graphopt.limits import check_shape, numel_of
from graphopt.ops.registry import CODEBOOK

FORMAT = "graphopt-model"
SUFFIX = ".gcm"
_INDEX_DTYPES = (DType.uint8, DType.uint16)
_DEFLATE_GAIN = 0.875  # deflate only where it saves at least 1/8


# ------------------------------------------------------------------------------------- write
def _codebook_tables(graph: Graph) -> dict[Value, Value]:
    """Index constants read only as the indices of CODEBOOK ops -> their codebook."""
    tables: dict[Value, Value] = {}
    for node in graph.nodes:
        if node.has_trait(CODEBOOK):
            tables[node.inputs[0]] = node.inputs[1]
    return {v: c for v, c in tables.items()
            if v.is_constant and v.dtype in _INDEX_DTYPES
            and all(n.has_trait(CODEBOOK) and slot == 0 for n, slot in v.uses)}


def _encode_constant(value: Value, table: Value | None, is_codebook: bool):
    """(entry, sections, record) of one constant. ``table``: the codebook ``value`` indexes
    (its record counts the float weight the indices stand for); ``is_codebook``: ``value`` is
    a codebook (not a parameter of the float model: it counts 0 dense bytes)."""
    data = np.ascontiguousarray(value.data)
    shape, dtype = tuple(int(d) for d in data.shape), value.dtype
    entry = {"dtype": str(dtype), "shape": list(shape)}
    if table is not None:
        alphabet = int(data.max()) + 1 if data.size else 1
        stream, sections = encode_indices(value.name, data, alphabet)
        entry.update(encoding="indices", **stream)
    else:
        raw = data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
        packed = zlib.compress(raw, 9)
        deflate = len(packed) <= _DEFLATE_GAIN * len(raw)
        entry["encoding"] = "deflate" if deflate else "raw"
        sections = {value.name: packed if deflate else raw}
    stored = sum(len(s) for s in sections.values())
    return entry, sections, _record(value, entry, stored, table, is_codebook)


def _record(value: Value, entry: dict | None, stored: int, table: Value | None,
            is_codebook: bool) -> ConstantRecord:
    data = value.data
    if table is not None:
        dense = data.size * table.dtype.itemsize
    else:
        dense = 0 if is_codebook else data.size * value.dtype.itemsize
    entry = entry or {"encoding": "inline"}
    return ConstantRecord(value.name, entry["encoding"], tuple(int(d) for d in data.shape),
                          str(value.dtype), dense, stored, int(np.count_nonzero(data)),
                          int(entry.get("entries", 0)), int(entry.get("index_bits", 0)),
                          table.name if table is not None else None)


@entry_point("writing a compressed model (.gcm)")
def save_compressed(graph: Graph, path: str | os.PathLike) -> CompressedFile:
    """Write ``graph`` to ``path`` (written atomically); returns the per-constant report."""
    where = os.fspath(path)
    if not isinstance(graph, Graph):
        raise CompressionError(f"saving {where}: expected a graphopt Graph, got "
                               f"{type(graph).__name__}")
    tables = _codebook_tables(graph)
    codebooks = set(tables.values())
    entries, sections, records = {}, {}, []
    for name, value in graph.constants.items():
        if value.data.size <= INLINE_LIMIT:  # printed with its data in the IR text
            records.append(_record(value, None, 0, tables.get(value), value in codebooks))
            continue
        entries[name], parts, record = _encode_constant(value, tables.get(value),
                                                        value in codebooks)
        sections.update(parts)
        records.append(record)
    meta = {"format": FORMAT, "graph": str(graph), "constants": entries,
            "input_spec": encode_spec(graph.input_spec, "input"),
            "output_spec": encode_spec(graph.output_spec, "output")}
    size = write_container(where, sections, meta)
    return CompressedFile(where, size, records)


# -------------------------------------------------------------------------------------- read
def _decode_constant(name: str, entry: dict, sections: dict) -> np.ndarray:
    if not isinstance(entry, dict):
        raise CompressionError("the entry is not an object")
    try:
        dtype = DType.parse(str(entry["dtype"]))
        shape = tuple(int(d) for d in entry["shape"])
        encoding = entry["encoding"]
    except (KeyError, TypeError, ValueError, ParseError) as exc:
        raise CompressionError(f"malformed entry ({exc})") from None
    if any(d < 0 for d in shape):
        raise CompressionError(f"negative dim in shape {list(shape)}")
    check_shape(shape, dtype.itemsize, f"constant %{name}")
    count = numel_of(shape)
    if encoding == "indices":
        if dtype not in _INDEX_DTYPES:
            raise CompressionError(f"codebook indices must be u8 or u16, not {dtype}")
        flat = decode_indices(name, entry, sections, count)
        if flat.size and int(flat.max()) > np.iinfo(dtype.numpy).max:
            raise CompressionError(f"an index exceeds the range of {dtype}")
        return flat.astype(dtype.numpy).reshape(shape)
    if encoding not in ("raw", "deflate"):
        raise CompressionError(f"unknown encoding {encoding!r}")
    key = name
    if key not in sections:
        raise CompressionError(f"section '{key}' is missing")
    nbytes = count * dtype.itemsize
    data = sections[key]
    if encoding == "deflate":
        inflate = zlib.decompressobj()
        try:
            data = inflate.decompress(data, nbytes + 1)  # never more than the shape allows
        except zlib.error as exc:
            raise CompressionError(f"section '{key}' does not inflate ({exc})") from None
    if len(data) != nbytes:
        raise CompressionError(f"section '{key}' holds {len(data)} bytes for {dtype}"
                               f"{list(shape)} ({nbytes} bytes)")
    storage = np.dtype(dtype.numpy).newbyteorder("<")
    array = np.frombuffer(data, dtype=storage).astype(dtype.numpy).reshape(shape)
    if dtype is DType.bool and array.size and array.view(np.uint8).max() > 1:
        raise CompressionError(f"section '{key}' is bool but holds bytes other than 0/1")
    return array


def _contents(where: str, meta: dict):
    if meta.get("format") != FORMAT:
        raise CompressionError(f"{where}: a .gcm container of format {meta.get('format')!r}, "
                               f"not a compressed model ({FORMAT}); weights files are read "
                               "by graphopt.codec.load_weights")
    text, entries = meta.get("graph"), meta.get("constants")
    if not isinstance(text, str) or not isinstance(entries, dict):
        raise CompressionError(f"{where}: the directory has no graph text or constants table")
    return text, entries


@entry_point("reading a compressed model (.gcm)")
def load_compressed(path: str | os.PathLike, report: bool = False):
    """The graph stored in ``path`` (with the codebooks as ``codebook_decode`` nodes, ready for
    every backend); with ``report=True`` also its ``CompressedFile`` (with the decode time)."""
    start = time.perf_counter()
    where = os.fspath(path)
    meta, sections = read_container(where)
    graph = _graph(where, meta, sections)
    if not report:
        return graph
    info = _records(where, graph, meta["constants"], sections)
    info.decode_seconds = time.perf_counter() - start
    return graph, info


@entry_point("reading a compressed model (.gcm)")
def load_compressed_bytes(data: bytes, where: str = "<in-memory .gcm>") -> Graph:
    """``load_compressed`` of a file's bytes (``where`` names it in errors)."""
    meta, sections = read_container_bytes(bytes(data), where)
    return _graph(where, meta, sections)


def _graph(where: str, meta: dict, sections: dict[str, bytes]) -> Graph:
    from graphopt.ir.parser import parse_graph

    text, entries = _contents(where, meta)
    constants = {}
    for name, entry in entries.items():
        try:
            constants[name] = _decode_constant(name, entry, sections)
        except CompressionError as exc:
            raise CompressionError(f"{where}: constant %{name}: {exc}") from None
    try:
        graph = parse_graph(text, constants)
        graph.verify()
    except GraphoptError as exc:
        raise CompressionError(f"{where}: the stored graph does not parse or verify with its "
                               f"constants: {exc}") from None
    try:
        graph.input_spec = decode_spec(meta.get("input_spec", ""), where, "input_spec",
                                       len(graph.inputs))
        graph.output_spec = decode_spec(meta.get("output_spec", ""), where, "output_spec",
                                        len(graph.outputs))
    except ArtifactError as exc:
        raise CompressionError(str(exc)) from None
    return graph


def _records(where: str, graph: Graph, entries: dict, sections: dict) -> CompressedFile:
    tables = _codebook_tables(graph)
    codebooks = set(tables.values())
    records = []
    for name, value in graph.constants.items():
        entry = entries.get(name)
        stored = len(sections.get(name, b""))
        records.append(_record(value, entry, stored, tables.get(value), value in codebooks))
    return CompressedFile(where, os.path.getsize(where), records)


def inspect_compressed(path: str | os.PathLike) -> CompressedFile:
    """The per-constant report of a ``.gcm`` model file (decodes it: every check runs)."""
    return load_compressed(path, report=True)[1]
