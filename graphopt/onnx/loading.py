"""Reading ONNX models safely: protobuf decoding, the checker, and external data.

External data is read only from regular files inside the model's directory: locations that are
absolute, contain ``..``, or resolve (through symlinks) outside the directory are refused;
offsets and lengths must lie within the file, and the length must be exactly what the tensor's
dims and element type need. Sizes are checked against the memory budget
(:mod:`graphopt.limits`) *before* anything is read, per tensor and for the model in total (many
tensors may point at the same bytes). Every failure is an :class:`OnnxImportError` (or a
:class:`~graphopt.errors.ResourceLimitError`) naming the file and the tensor.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto

from graphopt.errors import OnnxImportError
from graphopt.filemap import map_region
from graphopt.limits import check_bytes
from graphopt.onnx._common import tensor_nbytes

_PROTOBUF_LIMIT = 2**31 - 1


def load_model(model_or_path, base_dir) -> tuple[onnx.ModelProto, str | None, str]:
    """``(model, external data folder, where)``; ``where`` names the source in messages."""
    if isinstance(model_or_path, onnx.ModelProto):
        check_strings(model_or_path, "<ModelProto>")
        return model_or_path, None if base_dir is None else os.fspath(base_dir), "<ModelProto>"
    if isinstance(model_or_path, (bytes, bytearray, memoryview)):
        data, where = bytes(model_or_path), "<bytes>"
        folder = None if base_dir is None else os.fspath(base_dir)
    elif isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > _PROTOBUF_LIMIT:
                    raise OnnxImportError(f"'{path}' is {size} bytes, over protobuf's 2 GB limit "
                                          "for one message: large weights must be stored as "
                                          "external data")
                check_bytes(size, f"ONNX file '{path}'")
                data = f.read(_PROTOBUF_LIMIT + 1)
        except (OSError, ValueError) as exc:
            raise OnnxImportError(f"cannot read ONNX file '{path}': {exc}") from exc
        where = path
        folder = os.fspath(base_dir) if base_dir is not None else \
            os.path.dirname(os.path.abspath(path))
    else:
        raise OnnxImportError(f"from_onnx takes an onnx.ModelProto, bytes or a path, not "
                              f"{type(model_or_path).__name__}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise OnnxImportError(f"{where} is not a valid ONNX model (protobuf decode failed: "
                              f"{exc})") from exc
    if not model.HasField("graph") or not model.opset_import:
        raise OnnxImportError(f"{where} is not an ONNX model (no graph or opset_import)")
    check_strings(model, where)
    return model, folder, where


def check_strings(message, where: str, path: str = "model") -> None:
    """Every text field (names, dim_params, domains...) must be valid UTF-8.

    protobuf parses proto2 ``string`` fields without validating them and hands invalid ones
    back as ``bytes``; a name that is ``bytes`` would then fail far from here with a raw
    ``TypeError``. Numeric and ``bytes`` fields (tensor data) are not walked.
    """
    string, msg = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE
    stack = [(message, path)]
    while stack:
        current, where_in = stack.pop()
        for field, value in current.ListFields():
            if field.type == string:
                values = value if _repeated(field) else (value,)
                if any(not isinstance(v, str) for v in values):
                    raise OnnxImportError(f"{where}: field {where_in}.{field.name} is not valid "
                                          "UTF-8 text; the file is corrupt")
            elif field.type == msg:
                if _repeated(field):
                    stack.extend((m, f"{where_in}.{field.name}[{i}]")
                                 for i, m in enumerate(value))
                else:
                    stack.append((value, f"{where_in}.{field.name}"))


def _repeated(field) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5; older ones have label only
    return flag if flag is not None else field.label == FieldDescriptor.LABEL_REPEATED


def check_model(model: onnx.ModelProto, where: str, path: str | None = None) -> None:
    """``onnx.checker`` on the model; with ``path``, on the file (the checker then sees the
    external data files next to it). An in-memory model over protobuf's 2 GB limit (external
    data already loaded) is checked with the loaded tensors' data elided."""
    try:
        if path is not None:
            onnx.checker.check_model(path)
        elif model.ByteSize() < _PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
        else:
            onnx.checker.check_model(_without_large_data(model))
    except (onnx.checker.ValidationError, ValueError, OSError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise OnnxImportError(f"{where} is not valid ONNX: {first}") from exc


def _without_large_data(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in tensors_of(copy):
        if len(tensor.raw_data) > 1 << 20:
            tensor.ClearField("raw_data")
            del tensor.dims[:]
            tensor.dims.append(0)
            tensor.raw_data = b""
    return copy


def has_external_data(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL


def tensors_of(model: onnx.ModelProto):
    """Every TensorProto of the main graph: initializers and node attributes."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == AttributeProto.TENSOR:
                yield a.t


@dataclass(frozen=True)
class ExternalRef:
    """Where a tensor's bytes are: a regular file inside the model folder, and a range."""

    path: str
    location: str
    offset: int
    length: int


def resolve_external(tensor: TensorProto, base_dir: str | None, budget_used: int = 0
                     ) -> ExternalRef:
    """Validate a tensor's external data reference without reading it.

    Args:
        tensor: a tensor with ``data_location == EXTERNAL``.
        base_dir: the model's folder (None for in-memory models without ``base_dir=``).
        budget_used: bytes of external data already accepted for this model; the total is
            checked against the budget too.

    Raises:
        OnnxImportError: no base directory; a location that is absolute, contains '..', or
            resolves (through symlinks) outside the model's directory; a missing or special
            file; a range outside the file; a length other than the tensor's size.
        ResourceLimitError: the tensor (or the model's external data in total) is over the
            memory budget.
    """
    what = f"tensor '{tensor.name}'"
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if base_dir is None:
        raise OnnxImportError(f"{what} has external data ('{location}') but the model was not "
                              "loaded from a file: pass base_dir=")
    nbytes = tensor_nbytes(tensor, what)
    check_bytes(budget_used + nbytes, f"external data of the model (up to {what})")
    parts = re.split(r"[\\/]", location)
    if (not location or "\0" in location or os.path.isabs(location)
            or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location)
            or ".." in parts):
        raise OnnxImportError(f"{what}: external data location '{location}' must be a "
                              "relative path inside the model's directory")
    root = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, path]) != root:
        raise OnnxImportError(f"{what}: external data '{location}' resolves to '{path}', "
                              f"outside the model's directory '{root}'")
    try:
        st = os.stat(path)
    except OSError:
        raise OnnxImportError(f"{what}: external data file '{location}' is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise OnnxImportError(f"{what}: external data '{location}' is not a regular file")
    try:
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else st.st_size - offset
    except ValueError:
        raise OnnxImportError(f"{what}: external data offset/length {info.get('offset')!r}/"
                              f"{info.get('length')!r} in '{location}' are not integers") \
            from None
    if offset < 0 or length < 0 or offset + length > st.st_size:
        raise OnnxImportError(f"{what}: external data range [{offset}, {offset + length}) "
                              f"exceeds '{location}' ({st.st_size} bytes)")
    if length != nbytes:
        raise OnnxImportError(f"{what}: external data in '{location}' is {length} bytes long, "
                              f"but its dims {list(tensor.dims)} need {nbytes}; the model and "
                              "its data file do not match")
    return ExternalRef(path, location, offset, length)


def read_external(tensor: TensorProto, ref: ExternalRef) -> None:
    """Read validated external data into ``raw_data`` (the file must still be a regular file
    inside the folder: the final component is opened without following symlinks)."""
    tensor.raw_data = read_external_bytes(tensor, ref).tobytes()
    tensor.data_location = TensorProto.DEFAULT
    del tensor.external_data[:]


def read_external_bytes(tensor: TensorProto, ref: ExternalRef) -> np.ndarray:
    """Validated external data as a uint8 array, never through the proto (protobuf keeps bytes
    put into a message until the whole message dies): a copy-on-write map of the file
    (``graphopt.filemap``: nothing read up front, pages shared between processes) where the
    offset is 8-byte aligned, as ``to_onnx`` writes it, else read into a new array."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(ref.path, flags)
    except OSError as exc:
        raise OnnxImportError(f"tensor '{tensor.name}': cannot open external data "
                              f"'{ref.location}': {exc}") from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OnnxImportError(f"tensor '{tensor.name}': external data '{ref.location}' is "
                                  "not a regular file")
        size = os.fstat(f.fileno()).st_size
        mapped = map_region(f, ref.offset, ref.length) \
            if ref.offset % 8 == 0 and ref.offset + ref.length <= size else None
        if mapped is not None:
            return mapped
        f.seek(ref.offset)
        data = np.empty(ref.length, dtype=np.uint8)
        got = f.readinto(memoryview(data)) if ref.length else 0
    if got != ref.length:
        raise OnnxImportError(f"tensor '{tensor.name}': external data '{ref.location}' "
                              "changed while it was read (short read)")
    return data
