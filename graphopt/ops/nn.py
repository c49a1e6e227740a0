"""Neural-network ops: matmul/linear, convolution, pooling, normalization, resize."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from graphopt.errors import TypeInferenceError
from graphopt.ir.types import TensorType, normalize_dim
from graphopt.ops._infer import (
    broadcast_shapes,
    expect_dim,
    expect_rank,
    floordiv,
    pool_out_dim,
    promote,
)
from graphopt.ops.registry import (
    IN_OUT,
    IN_OUT_SPATIAL,
    LAYOUT_SENSITIVE,
    NORMALIZATION,
    OUT_IN,
    OUT_IN_SPATIAL,
    PRUNABLE,
    PURE,
    QDQ_TRANSPARENT,
    QUANTIZABLE,
    AttrSpec,
    WeightSpec,
    register_op,
)

# A constant left operand is a weight too (W @ x): pruning masks it like an [out, in] weight.
MATMUL_WEIGHTS = WeightSpec(slot=1, layout=IN_OUT, lhs_slot=0)
LINEAR_WEIGHTS = WeightSpec(slot=1, layout=OUT_IN, bias=2)
CONV_WEIGHTS = WeightSpec(slot=1, layout=OUT_IN_SPATIAL, bias=2)
SPATIAL = frozenset({PURE, LAYOUT_SENSITIVE})  # (N, C, *spatial) ops
NORM = frozenset({PURE, LAYOUT_SENSITIVE, NORMALIZATION})



def _matmul_infer(types, attrs):
    a, b = types
    if a.rank == 0 or b.rank == 0:
        raise TypeInferenceError(f"matmul operands must be at least 1-D, got {a} and {b}")
    a_shape = (1,) + a.shape if a.rank == 1 else a.shape
    b_shape = b.shape + (1,) if b.rank == 1 else b.shape
    expect_dim(a_shape[-1], b_shape[-2], f"matmul contraction dims of {a} @ {b}")
    batch = broadcast_shapes(a_shape[:-2], b_shape[:-2])
    shape = batch + (a_shape[-2], b_shape[-1])
    if a.rank == 1:
        shape = shape[:-2] + shape[-1:]
    if b.rank == 1:
        shape = shape[:-1]
    return TensorType(shape, promote(a, b))


@register_op("matmul", inputs=("a", "b"), traits={PURE, QUANTIZABLE, PRUNABLE, LAYOUT_SENSITIVE},
             weights=MATMUL_WEIGHTS,
             infer=_matmul_infer)
def matmul(a, b):
    """numpy matmul: batched, broadcasting leading dims, 1-D operands promoted then squeezed."""
    return torch.matmul(a, b)


def _linear_infer(types, attrs):
    x, w, b = types
    expect_rank(w, 2, "linear weight")
    expect_dim(x.shape[-1], w.shape[1], f"linear input features of {x} vs weight {w}")
    if b is not None:
        expect_rank(b, 1, "linear bias")
        expect_dim(b.shape[0], w.shape[0], "linear bias size vs out features")
    return x.with_shape(x.shape[:-1] + (w.shape[0],))


@register_op("linear", inputs=("x", "weight", "bias?"),
             traits={PURE, QUANTIZABLE, PRUNABLE, LAYOUT_SENSITIVE},
             weights=LINEAR_WEIGHTS, infer=_linear_infer)
def linear(x, weight, bias=None):
    """x @ weight.T + bias, weight [out_features, in_features] (torch.nn.Linear layout)."""
    return F.linear(x, weight, bias)


def _spatial(attrs_value, n):
    value = tuple(attrs_value)
    return value * n if len(value) == 1 else value


def _conv_infer(types, attrs):
    x, w, b = types
    n = x.rank - 2
    if n < 1 or w.rank != x.rank:
        raise TypeInferenceError(f"conv input {x} and weight {w} must be (N, C, *spatial) alike")
    groups = attrs["groups"]
    expect_dim(x.shape[1], w.shape[1] * groups, f"conv input channels of {x} vs weight {w} "
                                                  f"with groups={groups}")
    if b is not None:
        expect_dim(b.shape[0], w.shape[0], "conv bias size vs out channels")
    stride, pad, dil = (_spatial(attrs[k], n) for k in ("stride", "padding", "dilation"))
    spatial = [
        pool_out_dim(x.shape[2 + i], w.shape[2 + i], stride[i], pad[i], pad[i], dil[i], False)
        for i in range(n)
    ]
    return x.with_shape((x.shape[0], w.shape[0], *spatial))


CONV_ATTRS = {"stride": (1,), "padding": (0,), "dilation": (1,), "groups": 1}


@register_op("conv", inputs=("x", "weight", "bias?"), attrs=CONV_ATTRS,
             traits=SPATIAL | {QUANTIZABLE, PRUNABLE}, weights=CONV_WEIGHTS, infer=_conv_infer)
def conv(x, weight, bias=None, stride=(1,), padding=(0,), dilation=(1,), groups=1):
    """N-d cross-correlation (conv1d/2d/3d), symmetric zero padding per spatial dim."""
    fn = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.dim()]
    return fn(x, weight, bias, stride, padding, dilation, groups)


def _conv_transpose_infer(types, attrs):
    x, w, b = types
    n = x.rank - 2
    groups = attrs["groups"]
    expect_dim(x.shape[1], w.shape[0], "conv_transpose input channels vs weight dim 0")
    stride, pad, dil, outpad = (
        _spatial(attrs[k], n) for k in ("stride", "padding", "dilation", "output_padding")
    )
    spatial = [
        normalize_dim((x.shape[2 + i] - 1) * stride[i] - 2 * pad[i]
                      + dil[i] * (w.shape[2 + i] - 1) + outpad[i] + 1)
        for i in range(n)
    ]
    return x.with_shape((x.shape[0], w.shape[1] * groups, *spatial))


@register_op("conv_transpose", inputs=("x", "weight", "bias?"),
             attrs={**CONV_ATTRS, "output_padding": (0,)}, traits=SPATIAL | {PRUNABLE},
             weights=WeightSpec(slot=1, layout=IN_OUT_SPATIAL, bias=2),
             infer=_conv_transpose_infer)
def conv_transpose(x, weight, bias=None, stride=(1,), padding=(0,), dilation=(1,), groups=1,
                   output_padding=(0,)):
    """Transposed convolution (weight [C_in, C_out/groups, *k])."""
    fn = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}[x.dim()]
    return fn(x, weight, bias, stride, padding, output_padding, groups, dilation)


POOL_ATTRS = {"kernel": AttrSpec(tuple), "stride": AttrSpec(tuple), "padding": (0,),
              "ceil_mode": False}


def _pool_infer(types, attrs):
    x = types[0]
    n = len(attrs["kernel"])
    if x.rank not in (n + 1, n + 2):
        raise TypeInferenceError(f"{n}-d pooling needs a rank {n + 2} input, got {x}")
    k = attrs["kernel"]
    stride = _spatial(attrs["stride"] or k, n)
    pad = _spatial(attrs["padding"], n)
    dil = _spatial(attrs.get("dilation", (1,)), n)
    lead = x.rank - n
    spatial = [pool_out_dim(x.shape[lead + i], k[i], stride[i], pad[i], pad[i], dil[i],
                            attrs["ceil_mode"]) for i in range(n)]
    return x.with_shape(x.shape[:lead] + tuple(spatial))


# QDQ_TRANSPARENT: the max of quantized codes is the code of the max (monotonic u8 map).
@register_op("max_pool", inputs=("x",), attrs={**POOL_ATTRS, "dilation": (1,)},
             traits=SPATIAL | {QDQ_TRANSPARENT}, infer=_pool_infer)
def max_pool(x, kernel, stride, padding=(0,), ceil_mode=False, dilation=(1,)):
    """Sliding-window maximum over the trailing len(kernel) dims (padding is -inf)."""
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(kernel)]
    return fn(x, kernel, stride or kernel, _spatial(padding, len(kernel)),
              _spatial(dilation, len(kernel)), ceil_mode)


@register_op("avg_pool", inputs=("x",),
             attrs={**POOL_ATTRS, "count_include_pad": True,
                    "divisor_override": AttrSpec((int, type(None)), None)},
             traits=SPATIAL, infer=_pool_infer)
def avg_pool(x, kernel, stride, padding=(0,), ceil_mode=False, count_include_pad=True,
             divisor_override=None):
    """Sliding-window mean over the trailing len(kernel) dims."""
    n = len(kernel)
    pad = _spatial(padding, n)
    if n == 1:
        return F.avg_pool1d(x, kernel, stride or kernel, pad, ceil_mode, count_include_pad)
    fn = F.avg_pool2d if n == 2 else F.avg_pool3d
    return fn(x, kernel, stride or kernel, pad, ceil_mode, count_include_pad, divisor_override)


def _adaptive_infer(types, attrs):
    x = types[0]
    size = attrs["output_size"]
    if x.rank < len(size) + 1:
        raise TypeInferenceError(f"adaptive pooling to {size} needs more dims than {x}")
    out = [x.shape[x.rank - len(size) + i] if s is None else s for i, s in enumerate(size)]
    return x.with_shape(x.shape[: x.rank - len(size)] + tuple(out))


@register_op("adaptive_avg_pool", inputs=("x",), attrs={"output_size": AttrSpec(tuple)},
             traits=SPATIAL, infer=_adaptive_infer)
def adaptive_avg_pool(x, output_size):
    """Average over adaptive windows so the trailing dims become ``output_size``."""
    fn = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
    return fn[len(output_size)](x, output_size)


@register_op("adaptive_max_pool", inputs=("x",), attrs={"output_size": AttrSpec(tuple)},
             traits=SPATIAL, infer=_adaptive_infer)
def adaptive_max_pool(x, output_size):
    """Maximum over adaptive windows so the trailing dims become ``output_size``."""
    fn = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}
    return fn[len(output_size)](x, output_size)


def _layer_norm_infer(types, attrs):
    x, w, b = types
    shape = attrs["normalized_shape"]
    for i, d in enumerate(shape):
        expect_dim(x.shape[x.rank - len(shape) + i], d, f"layer_norm normalized_shape of {x}")
    for t, what in ((w, "weight"), (b, "bias")):
        if t is not None and t.rank != len(shape):
            raise TypeInferenceError(f"layer_norm {what} {t} must have shape {shape}")
    return x


@register_op("layer_norm", inputs=("x", "weight?", "bias?"),
             attrs={"normalized_shape": AttrSpec(tuple), "eps": 1e-5}, traits=NORM,
             flops_per_element=8, infer=_layer_norm_infer)
def layer_norm(x, weight=None, bias=None, normalized_shape=(), eps=1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing normalized_shape dims."""
    return F.layer_norm(x, normalized_shape, weight, bias, eps)


def _batch_norm_infer(types, attrs):
    x, mean, var, w, b = types
    if x.rank < 2:
        raise TypeInferenceError(f"batch_norm needs (N, C, ...) input, got {x}")
    for t in (mean, var, w, b):
        if t is not None:
            expect_dim(t.shape[0], x.shape[1], f"batch_norm parameter {t} vs channels of {x}")
    return x


@register_op("batch_norm", inputs=("x", "mean", "var", "weight?", "bias?"), attrs={"eps": 1e-5},
             traits=NORM, flops_per_element=2, statistics=(1, 2), infer=_batch_norm_infer)
def batch_norm(x, mean, var, weight=None, bias=None, eps=1e-5):
    """Inference batch norm with running statistics over channel axis 1."""
    return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)


def _group_norm_infer(types, attrs):
    x, w, b = types
    groups = attrs["groups"]
    channels = x.shape[1]
    if isinstance(channels, int) and channels % groups:
        raise TypeInferenceError(f"group_norm: {channels} channels not divisible by {groups}")
    return x


@register_op("group_norm", inputs=("x", "weight?", "bias?"),
             attrs={"groups": AttrSpec(int), "eps": 1e-5}, traits=NORM, flops_per_element=8,
             infer=_group_norm_infer)
def group_norm(x, weight=None, bias=None, groups=1, eps=1e-5):
    """Normalize over (C/groups, *spatial) per sample and group; instance norm is groups=C."""
    return F.group_norm(x, groups, weight, bias, eps)


def _resize_infer(types, attrs):
    x = types[0]
    size = attrs["size"]
    n = len(size)
    return x.with_shape(x.shape[: x.rank - n] + tuple(size))


@register_op("resize", inputs=("x",),
             attrs={"size": AttrSpec(tuple),
                    "mode": AttrSpec(str, "nearest", choices=("nearest", "nearest-exact",
                                     "linear", "bilinear", "bicubic", "trilinear", "area")),
                    "align_corners": AttrSpec((bool, type(None)), None),
                    "scales": AttrSpec((tuple, type(None)), None)},
             traits=SPATIAL, infer=_resize_infer)
def resize(x, size, mode="nearest", align_corners=None, scales=None):
    """Interpolate trailing dims to ``size`` (modes nearest, linear, bilinear, bicubic...).

    ``scales`` keeps the user's scale factors because torch computes source indices from them
    when they were given, which can differ from size-derived ones.
    """
    if scales is not None:
        return F.interpolate(x, scale_factor=scales, mode=mode, align_corners=align_corners)
    return F.interpolate(x, size=size, mode=mode, align_corners=align_corners)


def _pixel_shuffle_infer(types, attrs):
    x = types[0]
    r = attrs["factor"]
    expect_rank(x, 4, "pixel_shuffle input")
    return x.with_shape((x.shape[0], floordiv(x.shape[1], r * r), x.shape[2] * r, x.shape[3] * r))


@register_op("pixel_shuffle", inputs=("x",), attrs={"factor": AttrSpec(int)},
             traits=SPATIAL, infer=_pixel_shuffle_infer)
def pixel_shuffle(x, factor):
    """(N, C*r*r, H, W) -> (N, C, H*r, W*r)."""
    return F.pixel_shuffle(x, factor)
