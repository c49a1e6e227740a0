"""Saving and loading natively compiled models.

The artifact is the optimized graph, not the plan: one ``.npz`` file holding the IR text
(``graphopt.parse`` form), every constant array by name, and the compile options. Loading
parses the graph and plans it again (milliseconds; weights are packed for the machine that
loads it, so an artifact moves between CPUs with different instruction sets). The model's
pytree input/output structure is not stored: a loaded model takes and returns flat tensors.

Layout (every entry a ``.npy`` member of the zip archive)::

    __graph__       0-d unicode array: the IR text
    __meta__        0-d unicode array: JSON {"format": "graphopt-native/1", "threads": int,
                    "fallback": "reference" | "error" (null: "error"),
                    "sparse": "auto" | "never" | "always",
                    "bf16": [names of bfloat16 constants, stored as their uint16 bits],
                    "precision": "fp32" | "bf16" (optional; absent in older artifacts: fp32),
                    "codebook": "auto" | "decode" | "lookup" (optional; absent: auto)}
    const/<name>    one array per constant of the graph (its dtype and shape as in the text)

An artifact may come from anywhere, so :func:`load` trusts none of it: arrays are read with
``allow_pickle=False`` after their headers are checked (no object dtypes, sizes within the
memory budget and within what the archive stores), ``__meta__`` must have exactly the fields
above with valid values, nothing else may be in the archive, and every constant must match its
declaration in the graph text. Any violation raises :class:`~graphopt.errors.ArtifactError`
naming the file and the entry. :func:`save` writes atomically (a temporary file in the same
folder, then ``os.replace``) and refuses to write through a symbolic link.

The archive is a plain uncompressed zip that ``numpy.load`` reads, but :func:`save` places every
array's data at a multiple of 64 bytes of the file (padding in each member's local header), and
:func:`load` of a path memory-maps the file (:mod:`graphopt.filemap`): the graph's constants are
copy-on-write views of its pages, so loading reads nothing up front, the runtime packs weights
straight from the map, and processes that load one artifact share its pages.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import tempfile
import tokenize
import zipfile
import zlib
from typing import IO, Any

import numpy as np

from graphopt.errors import ArtifactError, GraphoptError, ParseError, UnsafeInputError, entry_point
from graphopt.filemap import map_region, view_of
from graphopt.ir.dtypes import DType
from graphopt.limits import check_bytes, check_threads, numel_of
from graphopt.native.builder import PRECISIONS
from graphopt.stagereport import reports_stage

FORMAT = "graphopt-native/1"
META_FIELDS = {"format", "threads", "fallback", "sparse", "bf16"}
OPTIONAL_META_FIELDS = {"precision", "codebook"}  # added after the first artifacts
FALLBACKS = (None, "reference", "error")  # None: "error", as saved before 0.2
_ALIGN = 64  # where save() puts every array's data in the file (load() maps aligned arrays)
# Array kinds an artifact may hold: bool, ints, floats (constants), unicode (graph, meta).
_ALLOWED_KINDS = set("biufU")
# Errors numpy / zipfile raise on truncated, corrupt or non-npz input (RuntimeError: encrypted
# members, and RecursionError from a deeply nested .npy header).
# TokenError: numpy tokenizes old .npy headers.
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError,
                TypeError, NotImplementedError, SyntaxError, OverflowError, RuntimeError,
                tokenize.TokenError)


def save(module, path: str | os.PathLike) -> None:
    """Write ``module`` (a NativeModule) to ``path`` (the exact file name is kept).

    Raises:
        UnsafeInputError: ``path`` is a symbolic link (it is never written through).
    """
    path = os.fspath(path)
    if os.path.islink(path):
        raise UnsafeInputError(f"{path} is a symbolic link; graphopt does not write through "
                               "links: remove it or save to another path")
    graph = module.graph
    arrays = {f"const/{name}": v.data for name, v in graph.constants.items()}
    meta = {"format": FORMAT, "threads": module.threads, "fallback": module.fallback,
            "sparse": getattr(module, "sparse", "auto"),
            "bf16": [n for n, v in graph.constants.items() if v.dtype is DType.bfloat16],
            "precision": getattr(module, "precision", "fp32"),
            "codebook": getattr(module, "codebook", "auto")}
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_aligned_npz(f, {"__graph__": np.array(str(graph)),
                                   "__meta__": np.array(json.dumps(meta)), **arrays})
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would not
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_aligned_npz(f: IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with every array's data at a multiple of 64 bytes in the file, so that
    :func:`load` can map it: each member is stored uncompressed, and its local header's extra
    field carries padding (a zipalign-style block, id 0xD935) that zip readers skip."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            if not (array.flags.c_contiguous or array.flags.f_contiguous):
                array = np.ascontiguousarray(array)
            header = io.BytesIO()
            fields = np.lib.format.header_data_from_array_1_0(array)
            try:
                np.lib.format.write_array_header_1_0(header, fields)
            except ValueError:  # a header over 64 KiB (a very long shape)
                header = io.BytesIO()
                np.lib.format.write_array_header_2_0(header, fields)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = header.tell() + array.nbytes
            zip64 = info.file_size * 1.05 > zipfile.ZIP64_LIMIT  # as zipfile decides it
            try:
                name_bytes = len(info.filename.encode("ascii"))
            except UnicodeEncodeError:
                name_bytes = len(info.filename.encode("utf-8"))
            fixed = 30 + name_bytes + 4 + (20 if zip64 else 0)  # local header without padding
            pad = -(f.tell() + fixed) % _ALIGN  # the .npy header is a multiple of 64 itself
            info.extra = struct.pack("<HH", 0xD935, pad) + bytes(pad)
            with archive.open(info, "w", force_zip64=zip64) as member:
                member.write(header.getvalue())
                if array.size:
                    member.write(memoryview(np.ravel(array, order="K").view(np.uint8)))


@reports_stage("load native")
@entry_point("graphopt.native.load")
def load(path: str | os.PathLike | IO[bytes], threads: int | None = None):
    """Load an artifact written by ``NativeModule.save``; returns a NativeModule.

    Args:
        path: the file (or a binary file object, e.g. ``io.BytesIO``).
        threads: runtime threads; default: the count stored in the artifact.
        report: also return a :class:`~graphopt.stagereport.StageReport` (time, peak RSS).

    Raises:
        ArtifactError: the file is not a valid artifact (message: the file and the entry).
        ResourceLimitError: an entry is larger than the memory budget.
        LoweringError / NativeUnsupportedError: the graph has nodes the runtime cannot run.
    """
    from graphopt.ir.parser import parse_graph
    from graphopt.native.module import NativeModule

    name = _describe(path)
    entries = _read_entries(path, name)
    meta = _meta(entries, name)
    text = _text(entries, "__graph__", name)
    constants = {key[len("const/"):]: array for key, array in entries.items()
                 if key.startswith("const/")}
    try:
        graph = parse_graph(text, constants)
    except ParseError as exc:
        raise ArtifactError(f"{name}: entry __graph__ does not parse, or a const/ entry "
                            f"does not match it: {exc}") from exc
    _check_constants(graph, constants, meta, name)
    return NativeModule(graph, threads=meta["threads"] if threads is None else threads,
                        fallback=meta["fallback"], sparse=meta["sparse"],
                        precision=meta["precision"], codebook=meta["codebook"])


# ------------------------------------------------------------------------------ reading
def _describe(path: Any) -> str:
    if isinstance(path, (str, os.PathLike)):
        return os.fspath(path)
    return str(getattr(path, "name", None) or "<in-memory artifact>")


def _read_entries(path, name: str) -> dict[str, np.ndarray]:
    """Every array of the archive, each checked (header, size, kind) before numpy reads it."""
    try:
        npz = np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise ArtifactError(f"{name}: not a readable graphopt native artifact (.npz): "
                            f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ArtifactError(f"{name}: holds a single .npy array, not a graphopt native artifact "
                            "(.npz)")
    with npz:
        infos = npz.zip.infolist()
        check_bytes(sum(info.file_size for info in infos), f"{name}: the artifact's contents")
        mapper = _MemberMapper(path)
        entries: dict[str, np.ndarray] = {}
        for info in infos:
            key = _entry_key(info.filename, name)
            if key in entries:
                raise ArtifactError(f"{name}: entry {key} appears twice")
            layout = _check_header(npz.zip, info, key, name)
            mapped = mapper.view(info, layout) if key.startswith("const/") else None
            if mapped is not None:
                entries[key] = mapped
                continue
            try:
                entries[key] = npz[key]
            except _READ_ERRORS as exc:
                raise ArtifactError(f"{name}: entry {key} cannot be read (truncated or corrupt):"
                                    f" {type(exc).__name__}: {exc}") from exc
    for key in ("__graph__", "__meta__"):
        if key not in entries:
            raise ArtifactError(f"{name}: entry {key} is missing; was the file written by "
                                "NativeModule.save?")
    return entries


def _entry_key(filename: str, name: str) -> str:
    key = filename[:-len(".npy")] if filename.endswith(".npy") else None
    if key is None or not (key in ("__graph__", "__meta__")
                           or (key.startswith("const/") and len(key) > len("const/"))):
        raise ArtifactError(f"{name}: unknown entry {filename!r} (an artifact holds __graph__, "
                            "__meta__ and const/<name> arrays only)")
    return key


class _MemberMapper:
    """Copy-on-write views of the arrays of an uncompressed archive on disk
    (:mod:`graphopt.filemap`): a loaded artifact's constants read the file's pages, shared
    with every process that loads it, instead of a private copy. Members that are compressed,
    encrypted or misaligned (or a file object source) are read by numpy as before.
    Mapped members skip the zip CRC check: their bytes become weights, never code or sizes."""

    def __init__(self, path: Any) -> None:
        self.path = None if hasattr(path, "read") else os.fspath(path)
        self.region = None
        self.size = 0
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.size = os.path.getsize(self.path)
            self.region = map_region(self.path, 0, self.size)

    def view(self, info: zipfile.ZipInfo, layout: tuple) -> np.ndarray | None:
        shape, fortran_order, dtype, header_bytes = layout
        if self.region is None or info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
            return None
        local = bytes(self.region[info.header_offset:info.header_offset + 30])
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            return None
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        if start + info.file_size > self.size:
            return None
        return view_of(self.region, start + header_bytes, tuple(shape), dtype, fortran_order)


def _check_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str,
                  name: str) -> tuple:
    """Reads the .npy header of one member: known format version, no Python objects, a dtype
    of the allowed kinds, and a size within the budget and within the member's stored size.
    Returns ``(shape, fortran_order, dtype, header bytes)``."""
    where = f"{name}: entry {key}"
    try:
        with archive.open(info) as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise ArtifactError(f"{where}: unsupported .npy format version {version}")
            header_bytes = fp.tell()
    except ArtifactError:
        raise
    except _READ_ERRORS as exc:
        raise ArtifactError(f"{where}: not a valid .npy array: {type(exc).__name__}: "
                            f"{exc}") from exc
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in _ALLOWED_KINDS:
        raise ArtifactError(f"{where}: dtype {dtype} is not allowed (Python objects would need "
                            "pickle; an artifact holds numbers and text only)")
    if any(d < 0 for d in shape):
        raise ArtifactError(f"{where}: negative dim in shape {shape}")
    nbytes = numel_of(shape) * dtype.itemsize
    check_bytes(nbytes, where)
    if nbytes > info.file_size - header_bytes:
        raise ArtifactError(f"{where}: declares {list(shape)} {dtype} ({nbytes} bytes) but "
                            f"stores {max(info.file_size - header_bytes, 0)} bytes")
    return shape, fortran_order, dtype, header_bytes


def _text(entries: dict[str, np.ndarray], key: str, name: str) -> str:
    """A 0-d unicode entry as a str; its UTF-32 code units are decoded strictly (numpy keeps
    any 32-bit value, and one beyond U+10FFFF would break str operations later)."""
    array = entries[key]
    if array.shape != () or array.dtype.kind != "U":
        raise ArtifactError(f"{name}: entry {key} must be a 0-d unicode string array, got "
                            f"{array.dtype}{list(array.shape)}")
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    try:
        return raw.decode("utf-32-le").rstrip("\x00")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{name}: entry {key} holds invalid unicode: {exc}") from exc


def _meta(entries: dict[str, np.ndarray], name: str) -> dict[str, Any]:
    from graphopt.native.lower.codebook import CODEBOOK_MODES
    from graphopt.native.lower.sparse import SPARSE_MODES

    where = f"{name}: entry __meta__"
    try:
        meta = json.loads(_text(entries, "__meta__", name))
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(f"{where} must be a JSON object, got {type(meta).__name__}")
    if not META_FIELDS <= set(meta) <= META_FIELDS | OPTIONAL_META_FIELDS:
        missing = sorted(META_FIELDS - set(meta))
        extra = sorted(set(meta) - META_FIELDS - OPTIONAL_META_FIELDS)
        raise ArtifactError(f"{where}: fields must be {sorted(META_FIELDS)} (missing {missing}, "
                            f"unknown {extra})")
    if meta["format"] != FORMAT:
        raise ArtifactError(f"{where}: format {meta['format']!r} is not {FORMAT!r} (another "
                            "tool's file, or a newer graphopt's)")
    try:
        check_threads(meta["threads"], f"{where}: threads")
    except GraphoptError as exc:
        raise ArtifactError(str(exc)) from exc
    if meta["fallback"] not in FALLBACKS:
        raise ArtifactError(f"{where}: fallback {meta['fallback']!r} is not one of {FALLBACKS}")
    if meta["sparse"] not in SPARSE_MODES:
        raise ArtifactError(f"{where}: sparse {meta['sparse']!r} is not one of {SPARSE_MODES}")
    meta.setdefault("precision", "fp32")
    if meta["precision"] not in PRECISIONS:
        raise ArtifactError(f"{where}: precision {meta['precision']!r} is not one of {PRECISIONS}")
    meta.setdefault("codebook", "auto")
    if meta["codebook"] not in CODEBOOK_MODES:
        raise ArtifactError(f"{where}: codebook {meta['codebook']!r} is not one of "
                            f"{CODEBOOK_MODES}")
    bf16 = meta["bf16"]
    if not isinstance(bf16, list) or not all(isinstance(n, str) for n in bf16):
        raise ArtifactError(f"{where}: bf16 must be a list of constant names")
    return meta


def _check_constants(graph, constants: dict[str, np.ndarray], meta: dict, name: str) -> None:
    """Every const/ entry is a constant of the graph; bf16 lists exactly its bfloat16 ones."""
    for key in constants:
        if key not in graph.constants:
            raise ArtifactError(f"{name}: entry const/{key} is not a constant of the graph")
    declared = {n for n, v in graph.constants.items() if v.dtype is DType.bfloat16}
    listed = set(meta["bf16"])
    if listed != declared:
        raise ArtifactError(f"{name}: entry __meta__: bf16 lists {sorted(listed)}, but the "
                            f"graph's bfloat16 constants are {sorted(declared)}")


def _umask() -> int:
    """The process umask, read without changing it (Linux), else the common 0o022."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def load_bytes(data: bytes, threads: int | None = None):
    """:func:`load` from the artifact's bytes (no file; used by the fuzz harness)."""
    return load(io.BytesIO(data), threads=threads)
