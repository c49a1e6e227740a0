"""Reductions and normalizing reductions (softmax, log_softmax)."""

from __future__ import annotations

import torch

from graphopt.ir.dtypes import DType
from graphopt.ir.types import TensorType
from graphopt.ops._infer import norm_axis, reduce_shape
from graphopt.ops.registry import PURE, AttrSpec, register_op

REDUCE_ATTRS = {"axes": AttrSpec(tuple, (), "() reduces every axis"), "keepdim": False}


def _reduce_infer(dtype_rule):
    def infer(types, attrs):
        x = types[0]
        return TensorType(reduce_shape(x.shape, attrs["axes"], attrs["keepdim"]), dtype_rule(x))

    return infer


_keep = _reduce_infer(lambda x: x.dtype)
_sum_dtype = _reduce_infer(lambda x: x.dtype if x.dtype.is_floating else DType.int64)
_to_bool = _reduce_infer(lambda x: DType.bool)
_to_index = _reduce_infer(lambda x: DType.int64)


def _dims(x, axes):
    return list(axes) if axes else list(range(x.dim()))


@register_op("sum", inputs=("x",), attrs=REDUCE_ATTRS, infer=_sum_dtype)
def sum_(x, axes=(), keepdim=False):
    """Sum over ``axes`` (all when empty); ints and bools accumulate in int64."""
    return torch.sum(x, _dims(x, axes), keepdim=keepdim)


@register_op("mean", inputs=("x",), attrs=REDUCE_ATTRS, infer=_keep)
def mean(x, axes=(), keepdim=False):
    """Arithmetic mean over ``axes``."""
    return torch.mean(x, _dims(x, axes), keepdim=keepdim)


@register_op("prod", inputs=("x",), attrs=REDUCE_ATTRS, infer=_sum_dtype)
def prod(x, axes=(), keepdim=False):
    """Product over ``axes``."""
    out = x
    for axis in sorted(_dims(x, axes), reverse=True):
        out = torch.prod(out, axis, keepdim=keepdim)
    return out


@register_op("amax", inputs=("x",), attrs=REDUCE_ATTRS, infer=_keep)
def amax(x, axes=(), keepdim=False):
    """Maximum over ``axes``."""
    return torch.amax(x, _dims(x, axes), keepdim=keepdim)


@register_op("amin", inputs=("x",), attrs=REDUCE_ATTRS, infer=_keep)
def amin(x, axes=(), keepdim=False):
    """Minimum over ``axes``."""
    return torch.amin(x, _dims(x, axes), keepdim=keepdim)


@register_op("all", inputs=("x",), attrs=REDUCE_ATTRS, infer=_to_bool)
def all_(x, axes=(), keepdim=False):
    """Logical and over ``axes``."""
    out = x.bool()
    for axis in sorted(_dims(x, axes), reverse=True):
        out = torch.all(out, axis, keepdim=keepdim)
    return out


@register_op("any", inputs=("x",), attrs=REDUCE_ATTRS, infer=_to_bool)
def any_(x, axes=(), keepdim=False):
    """Logical or over ``axes``."""
    out = x.bool()
    for axis in sorted(_dims(x, axes), reverse=True):
        out = torch.any(out, axis, keepdim=keepdim)
    return out


@register_op("logsumexp", inputs=("x",), attrs=REDUCE_ATTRS, infer=_keep)
def logsumexp(x, axes=(), keepdim=False):
    """log(sum(exp(x))) over ``axes``, computed stably."""
    return torch.logsumexp(x, _dims(x, axes), keepdim=keepdim)


@register_op("var", inputs=("x",), attrs={**REDUCE_ATTRS, "correction": 1.0}, infer=_keep)
def var(x, axes=(), keepdim=False, correction=1.0):
    """Variance with Bessel-style ``correction`` (0: population variance)."""
    return torch.var(x, _dims(x, axes), correction=correction, keepdim=keepdim)


@register_op("std", inputs=("x",), attrs={**REDUCE_ATTRS, "correction": 1.0}, infer=_keep)
def std(x, axes=(), keepdim=False, correction=1.0):
    """Standard deviation with ``correction``."""
    return torch.std(x, _dims(x, axes), correction=correction, keepdim=keepdim)


def _arg_infer(types, attrs):
    x = types[0]
    axis = attrs["axis"]
    if axis is None:
        shape = (1,) * x.rank if attrs["keepdim"] else ()
    else:
        shape = reduce_shape(x.shape, (axis,), attrs["keepdim"])
    return TensorType(shape, DType.int64)


ARG_ATTRS = {"axis": AttrSpec((int, type(None)), None), "keepdim": False}


@register_op("argmax", inputs=("x",), attrs=ARG_ATTRS, infer=_arg_infer)
def argmax(x, axis=None, keepdim=False):
    """Index of the first maximum along ``axis`` (flattened when None)."""
    return torch.argmax(x, axis, keepdim=keepdim)


@register_op("argmin", inputs=("x",), attrs=ARG_ATTRS, infer=_arg_infer)
def argmin(x, axis=None, keepdim=False):
    """Index of the first minimum along ``axis`` (flattened when None)."""
    return torch.argmin(x, axis, keepdim=keepdim)


def _softmax_infer(types, attrs):
    x = types[0]
    norm_axis(attrs["axis"], x.rank)
    return x if x.dtype.is_floating else x.with_dtype(DType.float32)


@register_op("softmax", inputs=("x",), attrs={"axis": AttrSpec(int)}, traits={PURE},
             flops_per_element=5, infer=_softmax_infer)
def softmax(x, axis):
    """exp(x - max) / sum(exp(x - max)) along ``axis``."""
    return torch.softmax(x, axis)


@register_op("log_softmax", inputs=("x",), attrs={"axis": AttrSpec(int)}, traits={PURE},
             flops_per_element=5, infer=_softmax_infer)
def log_softmax(x, axis):
    """x - logsumexp(x) along ``axis``."""
    return torch.log_softmax(x, axis)
