"""Elementwise ops: unary math and activations, binary arithmetic, comparisons, where, cast."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from graphopt.errors import TypeInferenceError
from graphopt.ir.dtypes import DType
from graphopt.ir.types import TensorType
from graphopt.ops._infer import (
    broadcast_binary,
    broadcast_compare,
    broadcast_shapes,
    broadcast_true_divide,
    float_of_input,
    promote,
    same_as_input,
)
from graphopt.ops.registry import (
    COMMUTATIVE,
    ELEMENTWISE_BINARY,
    ELEMENTWISE_UNARY,
    AttrSpec,
    register_op,
)

# ------------------------------------------------------------------------------ unary, same dtype
_SAME_DTYPE_UNARY = {
    "neg": torch.neg,
    "abs": torch.abs,
    "relu": torch.relu,
    "floor": torch.floor,
    "ceil": torch.ceil,
    "round": torch.round,
    "sign": torch.sign,
    "bitwise_not": torch.bitwise_not,
}
_FLOAT_UNARY = {
    "exp": torch.exp,
    "log": torch.log,
    "log1p": torch.log1p,
    "expm1": torch.expm1,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "reciprocal": torch.reciprocal,
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "atan": torch.atan,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "erf": torch.erf,
    "silu": F.silu,
    "mish": F.mish,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "softsign": F.softsign,
}


# Cost-model FLOPs per element of the unary ops that take more than one (graphopt/prune/flops.py).
_UNARY_FLOPS = {"silu": 4, "sigmoid": 4, "tanh": 4, "erf": 4, "exp": 2, "hardswish": 3, "mish": 6}
# Unary ops that are the parameterless fused activation of the same name (fused.ACTIVATIONS).
_FUSABLE_UNARY = ("relu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid")


def _no_params(activation: str):
    """The ``epilogue`` of an op that is the fused activation of the same name."""
    return lambda attrs: (activation, ())


def _declare_unary(name, fn, infer):
    def reference(x):
        return fn(x)

    reference.__name__ = reference.__qualname__ = name  # importable as a module global
    reference.__doc__ = f"Elementwise {name}(x)."
    epilogue = _no_params(name) if name in _FUSABLE_UNARY else None
    register_op(name, inputs=("x",), traits=ELEMENTWISE_UNARY, infer=infer, epilogue=epilogue,
                flops_per_element=_UNARY_FLOPS.get(name, 1))(reference)
    globals()[name] = reference


for _name, _fn in _SAME_DTYPE_UNARY.items():
    _declare_unary(_name, _fn, same_as_input)
for _name, _fn in _FLOAT_UNARY.items():
    _declare_unary(_name, _fn, float_of_input)


def _bool_result(types, attrs):
    return types[0].with_dtype(DType.bool)


@register_op("logical_not", inputs=("x",), traits=ELEMENTWISE_UNARY, infer=_bool_result)
def logical_not(x):
    """Elementwise not; result is bool."""
    return torch.logical_not(x)


@register_op("isnan", inputs=("x",), traits=ELEMENTWISE_UNARY, infer=_bool_result)
def isnan(x):
    """True where x is NaN."""
    return torch.isnan(x)


# ------------------------------------------------------------------ parameterized activations
# ``epilogue``: the fused-op activation (graphopt/ops/fused.py) an op becomes when
# fuse-activation folds it into a conv / linear / matmul, or why it cannot.
def _gelu_epilogue(attrs):
    return ("gelu_tanh" if attrs["approximate"] == "tanh" else "gelu"), ()


@register_op(
    "gelu",
    inputs=("x",),
    attrs={"approximate": AttrSpec(str, "none", "'none' (erf) or 'tanh'", ("none", "tanh"))},
    traits=ELEMENTWISE_UNARY,
    infer=same_as_input,
    flops_per_element=8,
    epilogue=_gelu_epilogue,
)
def gelu(x, approximate="none"):
    """Gaussian error linear unit, exact (erf) or tanh approximation."""
    return F.gelu(x, approximate=approximate)


def _clamp_infer(types, attrs):
    if attrs["min"] is None and attrs["max"] is None:
        raise TypeInferenceError("clamp needs at least one of min and max")
    return same_as_input(types, attrs)


def _clamp_epilogue(attrs):
    lo, hi = attrs["min"], attrs["max"]
    if lo is None and hi is None:
        return "clamp without bounds"
    if lo == 0 and hi is None:
        return "relu", ()
    if lo == 0 and hi == 6:
        return "relu6", ()
    return "clamp", (-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))


@register_op(
    "clamp",
    inputs=("x",),
    attrs={"min": AttrSpec((float, int, type(None)), None), "max": AttrSpec((float, int, type(None)), None)},
    traits=ELEMENTWISE_UNARY,
    infer=_clamp_infer,
    epilogue=_clamp_epilogue,
)
def clamp(x, min=None, max=None):
    """Clamp to [min, max]; relu6 and hardtanh are clamps. A None bound is open."""
    return torch.clamp(x, min=min, max=max)


@register_op(
    "leaky_relu",
    inputs=("x",),
    attrs={"negative_slope": 0.01},
    traits=ELEMENTWISE_UNARY,
    infer=same_as_input,
    epilogue=lambda attrs: ("leaky_relu", (float(attrs["negative_slope"]),)),
)
def leaky_relu(x, negative_slope=0.01):
    """max(x, 0) + negative_slope * min(x, 0)."""
    return F.leaky_relu(x, negative_slope)


@register_op(
    "elu",
    inputs=("x",),
    attrs={"alpha": 1.0, "scale": 1.0, "input_scale": 1.0},
    traits=ELEMENTWISE_UNARY,
    infer=same_as_input,
)
def elu(x, alpha=1.0, scale=1.0, input_scale=1.0):
    """ELU family (SELU is scale=1.0507..., alpha=1.6732...)."""
    return torch.ops.aten.elu(x, alpha, scale, input_scale)


@register_op(
    "softplus",
    inputs=("x",),
    attrs={"beta": 1.0, "threshold": 20.0},
    traits=ELEMENTWISE_UNARY,
    infer=same_as_input,
)
def softplus(x, beta=1.0, threshold=20.0):
    """log(1 + exp(beta x)) / beta, linear above threshold."""
    return F.softplus(x, beta, threshold)


@register_op(
    "cast",
    inputs=("x",),
    attrs={"dtype": AttrSpec(DType)},
    traits=ELEMENTWISE_UNARY,
    infer=lambda types, attrs: types[0].with_dtype(attrs["dtype"]),
    flops_per_element=0,  # counted as data movement
)
def cast(x, dtype):
    """Convert to ``dtype`` with torch's rounding/truncation rules."""
    return x.to(dtype.torch)


# ---------------------------------------------------------------------------------- binary
_BINARY = {
    "add": (torch.add, True, broadcast_binary),
    "sub": (torch.sub, False, broadcast_binary),
    "mul": (torch.mul, True, broadcast_binary),
    "pow": (torch.pow, False, broadcast_binary),
    "maximum": (torch.maximum, True, broadcast_binary),
    "minimum": (torch.minimum, True, broadcast_binary),
    "remainder": (torch.remainder, False, broadcast_binary),
    "atan2": (torch.atan2, False, broadcast_true_divide),
    "bitwise_and": (torch.bitwise_and, True, broadcast_binary),
    "bitwise_or": (torch.bitwise_or, True, broadcast_binary),
    "bitwise_xor": (torch.bitwise_xor, True, broadcast_binary),
    "eq": (torch.eq, True, broadcast_compare),
    "ne": (torch.ne, True, broadcast_compare),
    "lt": (torch.lt, False, broadcast_compare),
    "le": (torch.le, False, broadcast_compare),
    "gt": (torch.gt, False, broadcast_compare),
    "ge": (torch.ge, False, broadcast_compare),
    "logical_and": (torch.logical_and, True, broadcast_compare),
    "logical_or": (torch.logical_or, True, broadcast_compare),
    "logical_xor": (torch.logical_xor, True, broadcast_compare),
}


def _declare_binary(name, fn, commutative, infer):
    def reference(a, b):
        return fn(a, b)

    reference.__name__ = reference.__qualname__ = name  # importable as a module global
    reference.__doc__ = f"Elementwise {name}(a, b) with numpy broadcasting and torch promotion."
    traits = ELEMENTWISE_BINARY | ({COMMUTATIVE} if commutative else set())
    register_op(name, inputs=("a", "b"), traits=traits, infer=infer)(reference)
    globals()[name] = reference


for _name, (_fn, _comm, _infer) in _BINARY.items():
    _declare_binary(_name, _fn, _comm, _infer)


@register_op(
    "div",
    inputs=("a", "b"),
    attrs={"rounding_mode": AttrSpec((str, type(None)), None, "None, 'trunc' or 'floor'",
                                     (None, "trunc", "floor"))},
    traits=ELEMENTWISE_BINARY,
    infer=broadcast_true_divide,
)
def div(a, b, rounding_mode=None):
    """a / b; true division unless rounding_mode is 'trunc' or 'floor'."""
    return torch.div(a, b, rounding_mode=rounding_mode)


def _where_infer(types, attrs):
    cond, a, b = types
    if cond.dtype is not DType.bool:
        raise TypeInferenceError(f"where's condition must be bool, got {cond.dtype}")
    return TensorType(broadcast_shapes(cond.shape, a.shape, b.shape), promote(a, b))


@register_op("where", inputs=("cond", "a", "b"), traits=ELEMENTWISE_BINARY, infer=_where_infer)
def where(cond, a, b):
    """cond ? a : b, broadcasting all three."""
    return torch.where(cond, a, b)


# Constants used by fusion patterns and kernels (kept here so all agree on one value).
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
