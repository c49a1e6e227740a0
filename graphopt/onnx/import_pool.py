"""Converters of the ONNX pooling ops: Max/Average/Lp pooling and their global forms.

Kernel shapes, strides, dilations and pads are checked against the input's rank (and pads
against the window) before anything is emitted; a general AveragePool's window-count constant
is sized by the input, so it is checked against the memory budget first.
"""

from __future__ import annotations

import math

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Value
from graphopt.limits import check_shape
from graphopt.onnx.import_nn import _spatial_pads, expect_rank, pad_spatial
from graphopt.onnx.importer import ImportContext, OnnxNode, onnx_converter


def _pool_params(node: OnnxNode, x: Value):
    expect_rank(x, range(3, 6), "the input (N, C, *spatial)")
    n = x.type.rank - 2
    kernel = node.ints("kernel_shape", None, length=n, minimum=1)
    if kernel is None:
        raise GraphoptError("required attribute 'kernel_shape' is missing")
    strides = node.ints("strides", [1] * n, length=n, minimum=1)
    dilations = node.ints("dilations", [1] * n, length=n, minimum=1)
    begins, ends = _spatial_pads(node, x, kernel, strides, dilations)
    return kernel, strides, dilations, begins, ends


@onnx_converter("MaxPool")
def _max_pool(ctx, node):
    x = ctx.value(node, 0)
    kernel, strides, dilations, begins, ends = _pool_params(node, x)
    padding = begins
    fits = begins == ends and all(p <= k // 2 for p, k in zip(begins, kernel))
    if not fits:
        if node.attr("ceil_mode", 0):
            raise GraphoptError("MaxPool with ceil_mode and asymmetric/large pads")
        x = pad_spatial(ctx, x, begins, ends, -math.inf)
        padding = [0] * len(kernel)
    y = ctx.emit("max_pool", [x], {"kernel": tuple(kernel), "stride": tuple(strides),
                                   "padding": tuple(padding), "dilation": tuple(dilations),
                                   "ceil_mode": bool(node.attr("ceil_mode", 0))})
    return [y, None]


@onnx_converter("AveragePool")
def _avg_pool(ctx, node):
    x = ctx.value(node, 0)
    kernel, strides, dilations, begins, ends = _pool_params(node, x)
    include_pad = bool(node.attr("count_include_pad", 0))
    ceil_mode = bool(node.attr("ceil_mode", 0))
    fits = (begins == ends and all(p <= k // 2 for p, k in zip(begins, kernel))
            and all(d == 1 for d in dilations))
    if fits:
        return ctx.emit("avg_pool", [x], {"kernel": tuple(kernel), "stride": tuple(strides),
                                          "ceil_mode": ceil_mode, "padding": tuple(begins),
                                          "count_include_pad": include_pad})
    return avg_pool_by_conv(ctx, x, kernel, strides, dilations, begins, ends, include_pad,
                            ceil_mode)


def avg_pool_by_conv(ctx: ImportContext, x: Value, kernel, strides, dilations, begins, ends,
                     include_pad: bool, ceil_mode: bool) -> Value:
    """AveragePool in general (dilations, asymmetric pads): window sums by a ones-kernel
    convolution over (N*C, 1, *spatial), divided by the count of contributing positions."""
    n = len(kernel)
    spatial = list(x.shape[2:])
    if not all(isinstance(d, int) for d in spatial):
        raise GraphoptError("AveragePool with dilations or asymmetric pads on symbolic sizes")
    padded = [s + b + e for s, b, e in zip(spatial, begins, ends)]
    if any((k - 1) * d + 1 > p for k, d, p in zip(kernel, dilations, padded)):
        raise GraphoptError(f"the pooling window {kernel} (dilations {dilations}) is larger "
                            f"than the padded input {padded}")
    check_shape(padded, x.dtype.itemsize, "AveragePool's window-count constant")
    outs, extra = [], []
    for i in range(n):
        k_eff = (kernel[i] - 1) * dilations[i] + 1
        span = spatial[i] + begins[i] + ends[i] - k_eff
        o = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (o - 1) * strides[i] >= spatial[i] + begins[i]:
            o -= 1  # the last window must start inside the input or its left padding
        outs.append(o)
        extra.append(max(0, (o - 1) * strides[i] + k_eff - (spatial[i] + begins[i] + ends[i])))
    batch, channels = x.shape[:2]
    dtype = x.dtype
    planes = ctx.emit("reshape", [x], {"shape": (batch * channels, 1, *spatial)})
    ends_all = [e + x_ for e, x_ in zip(ends, extra)]
    ones_kernel = ctx.constant(np.ones((1, 1, *kernel), dtype=dtype.numpy), dtype, "ones")
    conv_attrs = {"stride": tuple(strides), "padding": (0,) * n, "dilation": tuple(dilations)}
    total = ctx.emit("conv", [pad_spatial(ctx, planes, begins, ends_all, 0.0), ones_kernel,
                              None], conv_attrs)
    region = np.ones((1, 1, *spatial), dtype=dtype.numpy)
    if include_pad:
        region = np.pad(region, [(0, 0), (0, 0)] + list(zip(begins, ends)),
                        constant_values=1.0)
        region = np.pad(region, [(0, 0), (0, 0)] + [(0, e) for e in extra])
    else:
        region = np.pad(region, [(0, 0), (0, 0)] + list(zip(begins, ends_all)))
    count = ctx.emit("conv", [ctx.constant(region, dtype, "window"), ones_kernel, None],
                     conv_attrs)
    mean = ctx.emit("div", [total, count])
    return ctx.emit("reshape", [mean], {"shape": (batch, channels, *outs)})


@onnx_converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx, node):
    x = ctx.value(node, 0)
    expect_rank(x, range(3, 6), "the input (N, C, *spatial)")
    op = "adaptive_avg_pool" if node.op_type == "GlobalAveragePool" else "adaptive_max_pool"
    return ctx.emit(op, [x], {"output_size": (1,) * (x.type.rank - 2)})


@onnx_converter("LpPool", "GlobalLpPool")
def _lp_pool(ctx, node):
    x = ctx.value(node, 0)
    expect_rank(x, range(3, 6), "the input (N, C, *spatial)")
    p = node.attr("p", 2)
    if p < 1:
        raise GraphoptError(f"attribute 'p' = {p} must be >= 1")
    p = float(p)
    powered = ctx.emit("pow", [ctx.emit("abs", [x]), ctx.scalar(p, x.dtype)])
    if node.op_type == "GlobalLpPool":
        summed = ctx.emit("sum", [powered], {"axes": tuple(range(2, x.type.rank)),
                                             "keepdim": True})
    else:
        kernel, strides, dilations, begins, ends = _pool_params(node, x)
        if any(d != 1 for d in dilations):
            raise GraphoptError("LpPool with dilations")
        padded = pad_spatial(ctx, powered, begins, ends, 0.0)
        mean = ctx.emit("avg_pool", [padded], {"kernel": tuple(kernel), "stride": tuple(strides),
                                               "ceil_mode": bool(node.attr("ceil_mode", 0)),
                                               "count_include_pad": True})
        summed = ctx.emit("mul", [mean, ctx.scalar(float(np.prod(kernel)), x.dtype)])
    return ctx.emit("pow", [summed, ctx.scalar(1.0 / p, x.dtype)])
