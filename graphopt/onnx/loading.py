"""Reading ONNX models safely: protobuf decoding, the checker, and external data.

External data is read only from regular files inside the model's directory: locations that are
absolute, contain ``..``, or resolve (through symlinks) outside the directory are refused, and
offsets/lengths must lie within the file. Every failure is an :class:`OnnxImportError`.
"""

from __future__ import annotations

import os
import re

import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto

from graphopt.errors import OnnxImportError


def load_model(model_or_path, base_dir) -> tuple[onnx.ModelProto, str | None]:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, None if base_dir is None else os.fspath(base_dir)
    if isinstance(model_or_path, (bytes, bytearray)):
        data, where = bytes(model_or_path), "<bytes>"
        folder = None if base_dir is None else os.fspath(base_dir)
    else:
        path = os.fspath(model_or_path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise OnnxImportError(f"cannot read ONNX file '{path}': {exc}") from exc
        where = path
        folder = os.fspath(base_dir) if base_dir is not None else \
            os.path.dirname(os.path.abspath(path))
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise OnnxImportError(f"{where} is not a valid ONNX model (protobuf decode failed: "
                              f"{exc})") from exc
    if not model.HasField("graph") or not model.opset_import:
        raise OnnxImportError(f"{where} is not an ONNX model (no graph or opset_import)")
    return model, folder


def check_model(model: onnx.ModelProto, source) -> None:
    """onnx.checker on the (self-contained) model; models over 2 GB are checked from disk."""
    try:
        if model.ByteSize() < 2**31 - 1:
            onnx.checker.check_model(model)
        elif isinstance(source, (str, os.PathLike)):
            onnx.checker.check_model(os.fspath(source))
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxImportError(f"the model is not valid ONNX: {first}") from exc


def has_external_data(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL


def tensors_of(model: onnx.ModelProto):
    """Every TensorProto of the main graph: initializers and Constant node attributes."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == AttributeProto.TENSOR:
                yield a.t


def load_external_data(tensor: TensorProto, base_dir: str | None) -> None:
    """Read a tensor's external data into ``raw_data``, refusing paths outside ``base_dir``.

    Raises:
        OnnxImportError: no base directory, a location that is absolute, contains '..', or
            resolves (through symlinks) outside the model's directory, or a short file.
    """
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if base_dir is None:
        raise OnnxImportError(f"tensor '{tensor.name}' has external data ('{location}') but the "
                              "model was not loaded from a file: pass base_dir=")
    parts = re.split(r"[\\/]", location)
    if (not location or os.path.isabs(location) or location.startswith(("/", "\\"))
            or re.match(r"^[A-Za-z]:", location) or ".." in parts):
        raise OnnxImportError(f"tensor '{tensor.name}': external data location '{location}' "
                              "must be a relative path inside the model's directory")
    root = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, path]) != root:
        raise OnnxImportError(f"tensor '{tensor.name}': external data '{location}' resolves to "
                              f"'{path}', outside the model's directory '{root}'")
    if not os.path.isfile(path):
        raise OnnxImportError(f"tensor '{tensor.name}': external data file '{location}' is "
                              "missing")
    offset = int(info.get("offset", 0) or 0)
    size = os.path.getsize(path)
    length = int(info["length"]) if info.get("length") else size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise OnnxImportError(f"tensor '{tensor.name}': external data range [{offset}, "
                              f"{offset + length}) exceeds '{location}' ({size} bytes)")
    with open(path, "rb") as f:
        f.seek(offset)
        tensor.raw_data = f.read(length)
    tensor.data_location = TensorProto.DEFAULT
    del tensor.external_data[:]
