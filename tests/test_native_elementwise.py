"""Native runtime elementwise kernels (unary, binary, where, cast) against torch, op by op, on
edge shapes: float, integer, bool and mixed dtypes, broadcasting, NaN propagation.

Split from tests/test_native_kernels.py; the same helpers (tests/native_util.py) and tolerance
apply. ``test_portable_path`` in tests/test_native_kernels.py also reruns this file's unary and
binary float tests on the narrower (portable; AVX2 on an AVX-512 CPU) kernels.
"""

from __future__ import annotations

import pytest
import torch
from native_util import Const, check_op, randn

import graphopt


# ------------------------------------------------------------------------------ elementwise
FLOAT_UNARY = ["neg", "abs", "relu", "floor", "ceil", "round", "sign", "exp", "expm1", "sin",
               "cos", "tan", "atan", "tanh", "sigmoid", "erf", "silu", "mish", "hardswish",
               "hardsigmoid", "softsign", "reciprocal", "isnan", "logical_not"]


@pytest.mark.parametrize("op", FLOAT_UNARY)
def test_unary_float(op):
    x = randn(5, 13) * 3
    x[0, 0] = 0.0
    x[0, 1] = 2.5  # round half to even
    check_op(op, [x])


@pytest.mark.parametrize("op", ["log", "log1p", "sqrt", "rsqrt"])
def test_unary_positive(op):
    check_op(op, [randn(3, 9).abs() + 0.01])


@pytest.mark.parametrize("op,attrs", [("gelu", {"approximate": "none"}),
                                      ("gelu", {"approximate": "tanh"}),
                                      ("clamp", {"min": -0.5, "max": None}),
                                      ("clamp", {"min": 0.0, "max": 6.0}),
                                      ("leaky_relu", {"negative_slope": 0.07}),
                                      ("elu", {"alpha": 1.3, "scale": 1.05, "input_scale": 0.9}),
                                      ("softplus", {"beta": 2.0, "threshold": 3.0})])
def test_unary_params(op, attrs):
    check_op(op, [randn(4, 21) * 3], attrs)


@pytest.mark.parametrize("op", ["neg", "abs", "sign", "bitwise_not", "relu"])
def test_unary_int(op):
    check_op(op, [torch.tensor([[-3, 0, 5, 7], [2, -1, 9, 11]])])


def test_unary_int_to_float():
    check_op("exp", [torch.tensor([0, 1, 2, -1])])


BINARY_SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 5), (3, 1)), ((), (2, 3)),
                 ((1, 7), (6, 1))]


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow", "maximum", "minimum",
                                "remainder", "atan2", "eq", "ne", "lt", "le", "gt", "ge",
                                "logical_and", "logical_or", "logical_xor"])
@pytest.mark.parametrize("a_shape,b_shape", BINARY_SHAPES)
def test_binary_float(op, a_shape, b_shape):
    a, b = randn(*a_shape) * 2, randn(*b_shape, seed=1) * 2
    if op == "pow":
        a = a.abs() + 0.1
    if op in ("eq", "ne", "le", "ge") and a.numel() > 1 and b.numel() > 1:
        b = b.clone()
    check_op(op, [a, b], threads=(2,))


@pytest.mark.parametrize("op,attrs", [("add", None), ("sub", None), ("mul", None),
                                      ("div", {"rounding_mode": "floor"}),
                                      ("div", {"rounding_mode": "trunc"}),
                                      ("div", {"rounding_mode": None}), ("remainder", None),
                                      ("pow", None), ("bitwise_and", None), ("bitwise_or", None),
                                      ("bitwise_xor", None), ("maximum", None), ("lt", None)])
def test_binary_int(op, attrs):
    a = torch.tensor([[-7, 7, 0, 5], [9, -9, 3, -4]])
    b = torch.tensor([3, -3, 2, 5]) if op != "pow" else torch.tensor([0, 1, 2, 3])
    check_op(op, [a, b], attrs)


def test_binary_mixed_dtypes_and_bool():
    check_op("add", [randn(3, 4), Const(torch.tensor(2))])  # f32 + i64 scalar -> f32
    check_op("gt", [randn(3, 4), Const(torch.tensor(0))])
    check_op("mul", [torch.tensor([1, 2, 3]), Const(torch.tensor(0.5))])  # i64 * f32 -> f32
    m = torch.tensor([[True, False], [False, False]])
    check_op("bitwise_or", [m, torch.tensor([True, False])])
    check_op("logical_xor", [m, torch.tensor([1.0, 0.0])])


def test_binary_nan_propagation():
    a = torch.tensor([1.0, float("nan"), 3.0, -1.0] * 3)
    b = torch.tensor([float("nan"), 2.0, 1.0, -2.0] * 3)
    check_op("maximum", [a, b])
    check_op("minimum", [a, b])


@pytest.mark.parametrize("c_shape,a_shape,b_shape", [((3, 4), (3, 4), (3, 4)),
                                                     ((3, 1), (4,), ()), ((4,), (2, 3, 4), (1,))])
def test_where(c_shape, a_shape, b_shape):
    cond = randn(*c_shape) > 0
    check_op("where", [cond, randn(*a_shape, seed=1), randn(*b_shape, seed=2)])
    check_op("where", [cond, torch.ones(a_shape, dtype=torch.int64), Const(torch.tensor(-1))])


@pytest.mark.parametrize("src,dst", [(torch.float32, torch.int64), (torch.int64, torch.float32),
                                     (torch.bool, torch.float32), (torch.float32, torch.bool),
                                     (torch.int32, torch.int64), (torch.float32, torch.float64),
                                     (torch.int64, torch.bool), (torch.float64, torch.float32)])
def test_cast(src, dst):
    x = (randn(4, 5) * 5).to(src)
    check_op("cast", [x], {"dtype": graphopt.DType.from_torch(dst)})
