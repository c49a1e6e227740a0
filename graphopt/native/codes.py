"""Integer codes shared with the C++ kernels (csrc/rt_*.cpp): dtypes, activations, unary and
binary ops. Each table mirrors one C++ enum; keep them in the same order."""

from __future__ import annotations

from graphopt.ir.dtypes import DType

# csrc/rt_dtype.h DType
DTYPE_CODES: dict[DType, int] = {
    DType.float32: 0, DType.float64: 1, DType.int32: 2, DType.int64: 3, DType.bool: 4,
    DType.uint8: 5, DType.int8: 6, DType.int16: 7,
}

# csrc/rt_gemm.h Act (first nine equal graphopt::Activation of the SGEMM epilogue)
ACTIVATION_CODES: dict[str, int] = {
    "none": 0, "relu": 1, "relu6": 2, "gelu": 3, "gelu_tanh": 4, "silu": 5, "sigmoid": 6,
    "tanh": 7, "hardswish": 8, "hardsigmoid": 9, "clamp": 10, "leaky_relu": 11,
}

# csrc/rt_elementwise.cpp UnaryOp
UNARY_CODES: dict[str, int] = {name: i for i, name in enumerate([
    "neg", "abs", "relu", "floor", "ceil", "round", "sign", "bitwise_not", "exp", "log", "log1p",
    "expm1", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "tan", "atan", "tanh", "sigmoid", "erf",
    "silu", "mish", "hardswish", "hardsigmoid", "softsign", "gelu", "gelu_tanh", "clamp",
    "leaky_relu", "elu", "softplus", "logical_not", "isnan", "relu6",
])}
# Unary ops valid on integer (and bool) inputs.
INT_UNARY = {"neg", "abs", "relu", "floor", "ceil", "round", "sign", "bitwise_not", "clamp"}

# csrc/rt_elementwise.cpp BinaryOp
BINARY_CODES: dict[str, int] = {name: i for i, name in enumerate([
    "add", "sub", "mul", "div", "div_floor", "div_trunc", "pow", "maximum", "minimum",
    "remainder", "atan2", "bitwise_and", "bitwise_or", "bitwise_xor", "eq", "ne", "lt", "le",
    "gt", "ge", "logical_and", "logical_or", "logical_xor",
])}
PREDICATES = {"eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor"}
FLOAT_ONLY_BINARY = {"div", "atan2"}
INT_ONLY_BINARY = {"bitwise_and", "bitwise_or", "bitwise_xor"}

# csrc/rt_reduce.cpp ReduceOp
REDUCE_CODES: dict[str, int] = {name: i for i, name in enumerate([
    "sum", "mean", "prod", "amax", "amin", "var", "std", "logsumexp", "all", "any",
    "argmax", "argmin",
])}
