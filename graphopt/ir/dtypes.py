"""Element types of the IR and their mapping to torch and numpy.

bfloat16 has no numpy dtype: bf16 constants are stored as their raw bits in ``np.uint16`` arrays
and converted on the way to torch (``numpy_to_torch``).
"""

from __future__ import annotations

import enum
import warnings

import numpy as np
import torch

# Graph constants are read-only numpy arrays shared between graph clones; torch may view them
# (the interpreter never writes to its inputs), so its "not writable" warning is noise here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class DType(enum.Enum):
    """An element type. ``str(dtype)`` is the short form used in the IR text (``f32``)."""

    float32 = "f32"
    float16 = "f16"
    bfloat16 = "bf16"
    float64 = "f64"
    int8 = "i8"
    uint8 = "u8"
    int16 = "i16"
    int32 = "i32"
    int64 = "i64"
    uint16 = "u16"
    uint32 = "u32"
    uint64 = "u64"
    bool = "bool"

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"DType.{self.name}"

    @property
    def is_floating(self) -> bool:
        return self in _FLOATING

    @property
    def is_integer(self) -> bool:
        return self in _INTEGER

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]

    @property
    def torch(self) -> torch.dtype:
        return _TO_TORCH[self]

    @property
    def numpy(self) -> np.dtype:
        """numpy storage dtype (uint16 bits for bfloat16)."""
        return _TO_NUMPY[self]

    @staticmethod
    def parse(text: str) -> "DType":
        try:
            return DType(text)
        except ValueError:
            names = ", ".join(d.value for d in DType)
            raise ValueError(f"unknown dtype '{text}'; expected one of {names}") from None

    @staticmethod
    def from_torch(dtype: torch.dtype) -> "DType":
        try:
            return _FROM_TORCH[dtype]
        except KeyError:
            raise TypeError(f"torch dtype {dtype} has no graphopt DType") from None

    @staticmethod
    def from_numpy(dtype) -> "DType":
        dtype = np.dtype(dtype)
        try:
            return _FROM_NUMPY[dtype]
        except KeyError:
            raise TypeError(f"numpy dtype {dtype} has no graphopt DType") from None


_FLOATING = {DType.float32, DType.float16, DType.bfloat16, DType.float64}
_INTEGER = {DType.int8, DType.uint8, DType.int16, DType.int32, DType.int64, DType.uint16,
            DType.uint32, DType.uint64}
# torch has these as storage types with few kernels; the reference interpreter computes their
# arithmetic through numpy (graphopt/ops/unsigned.py).
WIDE_UNSIGNED = (DType.uint16, DType.uint32, DType.uint64)
_ITEMSIZE = {
    DType.float32: 4, DType.float16: 2, DType.bfloat16: 2, DType.float64: 8, DType.int8: 1,
    DType.uint8: 1, DType.int16: 2, DType.int32: 4, DType.int64: 8, DType.bool: 1,
    DType.uint16: 2, DType.uint32: 4, DType.uint64: 8,
}
_TO_TORCH = {
    DType.float32: torch.float32, DType.float16: torch.float16, DType.bfloat16: torch.bfloat16,
    DType.float64: torch.float64, DType.int8: torch.int8, DType.uint8: torch.uint8,
    DType.int16: torch.int16, DType.int32: torch.int32, DType.int64: torch.int64,
    DType.bool: torch.bool, DType.uint16: torch.uint16, DType.uint32: torch.uint32,
    DType.uint64: torch.uint64,
}
_FROM_TORCH = {v: k for k, v in _TO_TORCH.items()}
_TO_NUMPY = {
    DType.float32: np.dtype(np.float32), DType.float16: np.dtype(np.float16),
    DType.bfloat16: np.dtype(np.uint16), DType.float64: np.dtype(np.float64),
    DType.int8: np.dtype(np.int8), DType.uint8: np.dtype(np.uint8),
    DType.int16: np.dtype(np.int16), DType.int32: np.dtype(np.int32),
    DType.int64: np.dtype(np.int64), DType.bool: np.dtype(np.bool_),
    DType.uint16: np.dtype(np.uint16), DType.uint32: np.dtype(np.uint32),
    DType.uint64: np.dtype(np.uint64),
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items() if k is not DType.bfloat16}


def numpy_to_torch(array: np.ndarray, dtype: DType) -> torch.Tensor:
    """Zero-copy view of a constant's storage as a torch tensor of ``dtype``."""
    tensor = torch.from_numpy(np.require(array, requirements="C"))
    if dtype is DType.bfloat16:
        return tensor.view(torch.bfloat16)
    return tensor


def torch_to_numpy(tensor: torch.Tensor, copy: bool = True) -> tuple[np.ndarray, DType]:
    """A tensor as a numpy array and its IR dtype: a copy, or with ``copy=False`` a view of
    the tensor's memory where it is a contiguous CPU tensor (else a copy all the same)."""
    dtype = DType.from_torch(tensor.dtype)
    tensor = tensor.detach().cpu().contiguous()
    if dtype is DType.bfloat16:
        tensor = tensor.view(torch.uint16)
    array = tensor.numpy()
    return (array.copy() if copy else array), dtype
