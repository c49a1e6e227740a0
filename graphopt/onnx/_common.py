"""What the ONNX exporter and importer share: dtype tables, tensor conversion, the default opset."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from graphopt.errors import OnnxImportError
from graphopt.ir.dtypes import DType
from graphopt.limits import check_shape, numel_of

# onnxruntime 1.32's CPU provider has kernels for every op of opset 21; from 22 on some ops
# (GlobalLpPool, RoiAlign, the random generators) only exist at older versions.
DEFAULT_OPSET = 21
MICROSOFT = "com.microsoft"

TO_ONNX_DTYPE: dict[DType, int] = {
    DType.float32: TensorProto.FLOAT,
    DType.float16: TensorProto.FLOAT16,
    DType.bfloat16: TensorProto.BFLOAT16,
    DType.float64: TensorProto.DOUBLE,
    DType.int8: TensorProto.INT8,
    DType.uint8: TensorProto.UINT8,
    DType.int16: TensorProto.INT16,
    DType.int32: TensorProto.INT32,
    DType.int64: TensorProto.INT64,
    DType.bool: TensorProto.BOOL,
    DType.uint16: TensorProto.UINT16,
    DType.uint32: TensorProto.UINT32,
    DType.uint64: TensorProto.UINT64,
}
FROM_ONNX_DTYPE: dict[int, DType] = {v: k for k, v in TO_ONNX_DTYPE.items()}


def onnx_dtype_name(code: int) -> str:
    try:
        return TensorProto.DataType.Name(code)
    except ValueError:
        return f"<dtype {code}>"


def tensor_buffer(array: np.ndarray, dtype: DType) -> np.ndarray:
    """``array`` as the contiguous little-endian array whose bytes ONNX stores (no copy when
    it already is one; bool as one byte per element, bfloat16 as uint16 bit patterns)."""
    if dtype is DType.bool:
        return np.ascontiguousarray(array, dtype=np.bool_)
    out = array.astype(dtype.numpy, copy=False).astype(dtype.numpy.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(out)


def array_to_tensor(array: np.ndarray, dtype: DType, name: str, data: bool = True) -> TensorProto:
    """An initializer holding ``array`` (raw bytes; bfloat16 arrays are uint16 bit patterns).

    ``data=False`` gives the header alone (name, type, dims): the exporter fills the bytes in
    once at the end, in place or into an external data file.
    """
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = TO_ONNX_DTYPE[dtype]
    tensor.dims.extend(int(d) for d in np.shape(array))
    if data:
        tensor.raw_data = tensor_buffer(np.asarray(array), dtype).tobytes()
    return tensor


# Where each supported element type keeps its values when not in raw_data, and the range of
# values that field may hold (int32_data carries the narrow types, one element per entry).
_TYPED_FIELD = {
    TensorProto.FLOAT: ("float_data", None), TensorProto.DOUBLE: ("double_data", None),
    TensorProto.INT64: ("int64_data", None), TensorProto.INT32: ("int32_data", None),
    TensorProto.INT16: ("int32_data", (-(2**15), 2**15 - 1)),
    TensorProto.INT8: ("int32_data", (-128, 127)), TensorProto.UINT8: ("int32_data", (0, 255)),
    TensorProto.BOOL: ("int32_data", (0, 1)), TensorProto.FLOAT16: ("int32_data", (0, 65535)),
    TensorProto.BFLOAT16: ("int32_data", (0, 65535)),
}


def tensor_nbytes(tensor: TensorProto, what: str) -> int:
    """Bytes of the tensor's data as its header declares it (known dtype, dims >= 0), checked
    against the memory budget before anything is read or allocated.

    Raises:
        OnnxImportError: unknown element type or a negative dim.
        ResourceLimitError: the declared size is over ``graphopt.limits.memory_budget()``.
    """
    dtype = FROM_ONNX_DTYPE.get(tensor.data_type)
    if dtype is None:
        raise OnnxImportError(f"{what} has element type {onnx_dtype_name(tensor.data_type)}, "
                              "which graphopt does not support")
    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims):
        raise OnnxImportError(f"{what} declares dims {dims}; dims must be >= 0")
    check_dims_product(dims, what, dtype.itemsize)
    return check_shape(dims, dtype.itemsize, what)


def check_dims_product(dims, what: str, itemsize: int = 1) -> None:
    """The byte size spanned by a shape's non-zero static dims must fit int64 (a
    ``(0, 2**62, 2**62)`` tensor is empty, yet neither numpy nor torch can represent it)."""
    product = itemsize
    for d in dims:
        if isinstance(d, int) and d > 0:
            product *= d
    if product >= 2**63:
        raise OnnxImportError(f"{what} declares dims {list(dims)}, whose size overflows int64")


def check_tensor_data(tensor: TensorProto, what: str) -> int:
    """Check that a tensor's (in-memory) data matches its header; returns the byte size.

    ``onnx.numpy_helper`` would reshape short data with a raw ``ValueError`` and silently
    wrap out-of-range narrow ints, so both are refused here with the tensor named.
    """
    nbytes = tensor_nbytes(tensor, what)
    if tensor.HasField("segment"):
        raise OnnxImportError(f"{what} is a segment of a larger tensor, which graphopt does "
                              "not import")
    numel = numel_of(tensor.dims)
    field, bounds = _TYPED_FIELD[tensor.data_type]
    typed = getattr(tensor, field)
    if tensor.HasField("raw_data"):
        if len(typed):
            raise OnnxImportError(f"{what} holds both raw_data and {field}; keep one")
        if len(tensor.raw_data) != nbytes:
            raise OnnxImportError(f"{what} has {len(tensor.raw_data)} bytes of data, but its "
                                  f"dims {list(tensor.dims)} need {nbytes}")
        return nbytes
    if len(typed) != numel:
        raise OnnxImportError(f"{what} has {len(typed)} values in {field}, but its dims "
                              f"{list(tensor.dims)} need {numel}")
    if bounds is not None and numel and not all(bounds[0] <= v <= bounds[1] for v in typed):
        raise OnnxImportError(f"{what} has {field} values outside [{bounds[0]}, {bounds[1]}], "
                              f"the range of {onnx_dtype_name(tensor.data_type)}")
    return nbytes


def external_to_array(tensor: TensorProto, raw: np.ndarray, what: str | None = None
                      ) -> tuple[np.ndarray, DType]:
    """An initializer whose external data was read into ``raw`` (a uint8 array of exactly its
    byte size, ``loading.read_external_bytes``) as an array viewing those bytes: no copy."""
    what = what or f"tensor '{tensor.name}'"
    nbytes = tensor_nbytes(tensor, what)
    if raw.nbytes != nbytes:
        raise OnnxImportError(f"{what} has {raw.nbytes} bytes of external data, but its dims "
                              f"{list(tensor.dims)} need {nbytes}")
    dtype = FROM_ONNX_DTYPE[tensor.data_type]
    if dtype is DType.bool:
        return (raw != 0).reshape(tuple(tensor.dims)), dtype
    stored = np.dtype(dtype.numpy).newbyteorder("<")
    array = raw.view(stored).astype(dtype.numpy, copy=False)  # no copy on little-endian hosts
    return array.reshape(tuple(tensor.dims)), dtype


def tensor_to_array(tensor: TensorProto, what: str | None = None) -> tuple[np.ndarray, DType]:
    """Numpy data and IR dtype of an initializer (external data must be loaded already).

    Raises:
        OnnxImportError: unknown element type, negative dims, data that does not match the
            dims, or data still external.
        ResourceLimitError: the tensor is over the memory budget.
    """
    what = what or f"tensor '{tensor.name}'"
    if tensor.data_location == TensorProto.EXTERNAL:
        raise OnnxImportError(f"{what} has external data that was not loaded")
    check_tensor_data(tensor, what)
    dtype = FROM_ONNX_DTYPE[tensor.data_type]
    if dtype is DType.bfloat16:
        if tensor.HasField("raw_data"):
            bits = np.frombuffer(tensor.raw_data, dtype="<u2").astype(np.uint16)
        else:  # int32_data holds one bf16 bit pattern per element
            bits = np.asarray(tensor.int32_data, dtype=np.uint32).astype(np.uint16)
        return bits.reshape(tuple(tensor.dims)).copy(), dtype
    array = onnx.numpy_helper.to_array(tensor)
    return np.array(array, dtype=dtype.numpy, copy=True), dtype
