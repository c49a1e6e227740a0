"""Integer codes shared with the C++ kernels: dtypes, activations, unary, binary and reduce ops.

The C++ runtime is the one source of truth: each table here is read from the extension
(``graphopt._C.native_code_tables()``, registered next to each C++ enum: ``csrc/activation.h``,
``csrc/rt_dtype.h``, ``csrc/rt_elementwise.cpp``, ``csrc/rt_binary.cpp``,
``csrc/rt_reduce.cpp``) the first time it is used, so importing this module does not need the
extension. Without a built extension, using a table raises ``ImportError`` saying so.

The sets below (``INT_UNARY``, ``PREDICATES``...) are facts about the ops that the lowerings
use to choose dtypes; they name codes, and ``tests/test_native_kernel_table.py`` checks that
every name exists in the C++ table.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Callable

from graphopt import _extension
from graphopt.ir.dtypes import DType


def _native_tables() -> dict[str, list[str]]:
    try:
        _C = _extension.load()
    except ImportError as exc:
        raise ImportError(
            "graphopt.native.codes: the kernel codes (dtypes, activations, op codes) are read "
            "from the compiled extension graphopt._C, which is not built or failed to load "
            f"({exc}); build it with `make venv` or `python setup.py build_ext --inplace`") \
            from exc
    return {str(k): [str(n) for n in v] for k, v in _C.native_code_tables().items()}


class _NativeCodes(Mapping):
    """A read-only ``name -> code`` table built from the extension on first use."""

    def __init__(self, table: str, key: Callable[[str], Any] = str):
        self._table = table
        self._key = key
        self._codes: dict[Any, int] | None = None

    def _load(self) -> dict[Any, int]:
        if self._codes is None:
            names = _native_tables().get(self._table)
            if names is None:
                raise ImportError(f"graphopt._C exports no '{self._table}' code table; "
                                  "rebuild the extension")
            self._codes = {self._key(name): code for code, name in enumerate(names)}
        return self._codes

    def __getitem__(self, key) -> int:
        return self._load()[key]

    def __iter__(self) -> Iterator:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, key) -> bool:
        return key in self._load()

    def get(self, key, default=None):
        return self._load().get(key, default)

    def __repr__(self) -> str:
        return f"NativeCodes({self._table!r}, {self._load()!r})"


# csrc/rt_dtype.h DType (names: graphopt.ir.dtypes.DType member names)
DTYPE_CODES: Mapping[DType, int] = _NativeCodes("dtype", key=lambda name: DType[name])

# csrc/activation.h Activation (the fused-op / GEMM epilogue activations)
ACTIVATION_CODES: Mapping[str, int] = _NativeCodes("act")

# csrc/rt_elementwise.cpp UnaryOp
UNARY_CODES: Mapping[str, int] = _NativeCodes("unary")
# Unary ops valid on integer (and bool) inputs.
INT_UNARY = {"neg", "abs", "relu", "floor", "ceil", "round", "sign", "bitwise_not", "clamp"}
# Unary ops with a bool result (computed in the input's dtype).
UNARY_PREDICATES = {"logical_not", "isnan", "isinf", "isposinf", "isneginf"}

# csrc/rt_binary.cpp BinaryOp
BINARY_CODES: Mapping[str, int] = _NativeCodes("binary")
PREDICATES = {"eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor"}
FLOAT_ONLY_BINARY = {"div", "atan2"}
INT_ONLY_BINARY = {"bitwise_and", "bitwise_or", "bitwise_xor", "shift_left", "shift_right"}

# csrc/rt_reduce.cpp ReduceOp
REDUCE_CODES: Mapping[str, int] = _NativeCodes("reduce")


def activation_params() -> dict[str, int]:
    """Activation name -> number of float parameters it reads (csrc/activation.h)."""
    _C = _extension.load()
    return {name: params for name, _code, params, _epilogue in _C.native_activations()}
