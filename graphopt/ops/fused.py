"""Fused ops: a conv / linear / matmul with its epilogue (bias, residual add, activation).

Fusion passes produce them (``fuse-activation``, ``fold-transpose-matmul``); no frontend does.
Each computes exactly what the unfused chain computes, in the same order, so the reference
implementations below are the unfused torch ops one after the other::

    fused_conv(x, w, b, r){activation="relu"}   = relu(conv(x, w, b) + r)
    fused_linear(x, w, b, r){activation="gelu"} = gelu(linear(x, w, b) + r)
    fused_matmul(a, b, bias, r){trans_b=true, alpha=0.5}
                                                = (a @ b^T) * 0.5 + bias + r, then the activation

The epilogue is ``activation`` plus ``activation_params`` (a tuple of floats), the same names
as onnxruntime's FusedConv / FusedGemm and the native GEMM epilogue (csrc/epilogue.h):

    none, relu, relu6, gelu (erf form), gelu_tanh, silu, sigmoid, tanh, hardswish, hardsigmoid
                                               no parameters
    clamp                                      (min, max); -inf / inf for an open bound
    leaky_relu                                 (negative_slope,)

``residual`` (optional) must have exactly the op's output type: it is a skip connection, not a
broadcast bias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from graphopt.errors import TypeInferenceError
from graphopt.ir.types import TensorType, dims_equal
from graphopt.ops._infer import expect_dim
from graphopt.ops.nn import CONV_ATTRS, _conv_infer, _linear_infer, _matmul_infer
from graphopt.ops.registry import (
    EPILOGUE,
    FUSED,
    IN_OUT,
    LAYOUT_SENSITIVE,
    OUT_IN,
    OUT_IN_SPATIAL,
    PRUNABLE,
    PURE,
    QUANTIZABLE,
    AttrSpec,
    WeightSpec,
    register_op,
)

FUSED_TRAITS = frozenset({PURE, FUSED, EPILOGUE})

# activation name -> number of activation_params. The C++ list in csrc/activation.h
# (GRAPHOPT_ACTIVATIONS, exported as _C.native_activations()) is the source of truth; ops may
# not import graphopt.native / the extension (layer contract), so this copy stays, and
# tests/test_native_kernel_table.py::test_activations_agree_with_the_op_library fails if the two
# differ in names or parameter counts. A new activation goes in both (and in apply_activation).
ACTIVATIONS: dict[str, int] = {
    "none": 0,
    "relu": 0,
    "relu6": 0,
    "clamp": 2,
    "leaky_relu": 1,
    "gelu": 0,
    "gelu_tanh": 0,
    "silu": 0,
    "sigmoid": 0,
    "tanh": 0,
    "hardswish": 0,
    "hardsigmoid": 0,
}

EPILOGUE_ATTRS = {
    "activation": AttrSpec(str, "none", "one of ACTIVATIONS"),
    "activation_params": AttrSpec(tuple, (), "clamp: (min, max); leaky_relu: (slope,)"),
}

_SIMPLE = {
    "none": lambda y: y,
    "relu": torch.relu,
    "relu6": lambda y: torch.clamp(y, min=0.0, max=6.0),
    "gelu": F.gelu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
}


def apply_activation(y: torch.Tensor, activation: str, params: tuple = ()) -> torch.Tensor:
    """The epilogue activation, computed by the same torch function as the unfused op."""
    if activation in _SIMPLE:
        return _SIMPLE[activation](y)
    if activation == "clamp":
        lo, hi = params
        return torch.clamp(
            y, min=None if math.isinf(lo) else lo, max=None if math.isinf(hi) else hi
        )
    if activation == "leaky_relu":
        return F.leaky_relu(y, params[0])
    raise ValueError(f"unknown fused activation '{activation}'")


def _check_epilogue(out: TensorType, residual: TensorType | None, attrs) -> TensorType:
    activation = attrs["activation"]
    if activation not in ACTIVATIONS:
        raise TypeInferenceError(
            f"unknown activation '{activation}'; known: {', '.join(ACTIVATIONS)}"
        )
    params = attrs["activation_params"]
    if len(params) != ACTIVATIONS[activation]:
        raise TypeInferenceError(
            f"activation '{activation}' takes {ACTIVATIONS[activation]} activation_params, "
            f"got {list(params)}"
        )
    if activation != "none" and not out.dtype.is_floating:
        raise TypeInferenceError(f"activation '{activation}' needs a float result, got {out}")
    if residual is not None:
        same = (
            residual.dtype == out.dtype
            and residual.rank == out.rank
            and all(dims_equal(a, b) for a, b in zip(residual.shape, out.shape))
        )
        if not same:
            raise TypeInferenceError(f"residual {residual} must have the result type {out}")
    return out


def _epilogue(y, residual, activation, params):
    if residual is not None:
        y = y + residual
    return apply_activation(y, activation, params)


# ------------------------------------------------------------------------------- fused_conv
def _fused_conv_infer(types, attrs):
    x, w, b, residual = types
    return _check_epilogue(_conv_infer([x, w, b], attrs), residual, attrs)


@register_op(
    "fused_conv",
    inputs=("x", "weight", "bias?", "residual?"),
    attrs={**CONV_ATTRS, **EPILOGUE_ATTRS},
    traits=FUSED_TRAITS | {QUANTIZABLE, PRUNABLE, LAYOUT_SENSITIVE},
    weights=WeightSpec(slot=1, layout=OUT_IN_SPATIAL, bias=2, residual=3),
    infer=_fused_conv_infer,
)
def fused_conv(
    x,
    weight,
    bias=None,
    residual=None,
    stride=(1,),
    padding=(0,),
    dilation=(1,),
    groups=1,
    activation="none",
    activation_params=(),
):
    """activation(conv(x, weight, bias) + residual): conv with its epilogue."""
    fn = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.dim()]
    y = fn(x, weight, bias, stride, padding, dilation, groups)
    return _epilogue(y, residual, activation, activation_params)


# ----------------------------------------------------------------------------- fused_linear
def _fused_linear_infer(types, attrs):
    x, w, b, residual = types
    return _check_epilogue(_linear_infer([x, w, b], attrs), residual, attrs)


@register_op(
    "fused_linear",
    inputs=("x", "weight", "bias?", "residual?"),
    attrs=EPILOGUE_ATTRS,
    traits=FUSED_TRAITS | {QUANTIZABLE, PRUNABLE, LAYOUT_SENSITIVE},
    weights=WeightSpec(slot=1, layout=OUT_IN, bias=2, residual=3),
    infer=_fused_linear_infer,
)
def fused_linear(x, weight, bias=None, residual=None, activation="none", activation_params=()):
    """activation(x @ weight.T + bias + residual), weight [out, in] like ``linear``."""
    return _epilogue(F.linear(x, weight, bias), residual, activation, activation_params)


# ----------------------------------------------------------------------------- fused_matmul
def _transposed(t: TensorType, flag: bool, what: str) -> TensorType:
    if not flag:
        return t
    if t.rank < 2:
        raise TypeInferenceError(f"fused_matmul {what} with trans_{what}=true must be >= 2-D: {t}")
    return t.with_shape(t.shape[:-2] + (t.shape[-1], t.shape[-2]))


def _fused_matmul_infer(types, attrs):
    a, b, bias, residual = types
    out = _matmul_infer(
        [_transposed(a, attrs["trans_a"], "a"), _transposed(b, attrs["trans_b"], "b")], attrs
    )
    if bias is not None:
        if bias.rank != 1 or out.rank < 1:
            raise TypeInferenceError(f"fused_matmul bias must be 1-D [N], got {bias}")
        expect_dim(bias.shape[0], out.shape[-1], "fused_matmul bias size vs columns")
        if bias.dtype != out.dtype:
            raise TypeInferenceError(f"fused_matmul bias {bias} must have dtype {out.dtype}")
    return _check_epilogue(out, residual, attrs)


@register_op(
    "fused_matmul",
    inputs=("a", "b", "bias?", "residual?"),
    attrs={"trans_a": False, "trans_b": False, "alpha": 1.0, **EPILOGUE_ATTRS},
    # not QUANTIZABLE: trans_a and alpha have no quantized (qlinear) form
    traits=FUSED_TRAITS | {PRUNABLE, LAYOUT_SENSITIVE},
    weights=WeightSpec(slot=1, layout=IN_OUT, bias=2, residual=3, transpose_attr="trans_b",
                       lhs_slot=0),
    infer=_fused_matmul_infer,
)
def fused_matmul(
    a,
    b,
    bias=None,
    residual=None,
    trans_a=False,
    trans_b=False,
    alpha=1.0,
    activation="none",
    activation_params=(),
):
    """activation(alpha * (op(a) @ op(b)) + bias + residual); op transposes the last two dims
    when trans_a / trans_b is set (numpy matmul broadcasting otherwise)."""
    y = torch.matmul(a.transpose(-1, -2) if trans_a else a, b.transpose(-1, -2) if trans_b else b)
    if alpha != 1.0:
        y = y * alpha
    if bias is not None:
        y = y + bias
    return _epilogue(y, residual, activation, activation_params)
