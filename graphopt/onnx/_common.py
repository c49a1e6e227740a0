"""What the ONNX exporter and importer share: dtype tables, tensor conversion, the default opset."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from graphopt.ir.dtypes import DType

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


def tensor_to_array(tensor: TensorProto) -> tuple[np.ndarray, DType]:
    """Numpy data and IR dtype of an initializer (external data must be loaded already).

    Raises:
        KeyError: the tensor's element type has no IR dtype.
    """
    dtype = FROM_ONNX_DTYPE[tensor.data_type]
    if dtype is DType.bfloat16:
        if tensor.HasField("raw_data"):
            bits = np.frombuffer(tensor.raw_data, dtype="<u2").astype(np.uint16)
        else:  # int32_data holds one bf16 bit pattern per element
            bits = np.asarray(tensor.int32_data, dtype=np.uint32).astype(np.uint16)
        return bits.reshape(tuple(tensor.dims)).copy(), dtype
    array = onnx.numpy_helper.to_array(tensor)
    return np.array(array, dtype=dtype.numpy, copy=True), dtype
