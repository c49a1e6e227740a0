"""Converters of the ONNX pooling ops: Max/Average/Lp pooling and their global forms, and
Col2Im (the inverse of a pooling window's gather).

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
    if len(node.outputs) < 2 or not node.outputs[1]:
        return [y, None]
    source = ctx.value(node, 0)
    return [y, _max_pool_indices(ctx, node, source, kernel, strides, dilations, begins, ends,
                                 y.shape)]


def _max_pool_indices(ctx, node, x, kernel, strides, dilations, begins, ends, out_shape):
    """MaxPool's Indices output (2-D): each window's taps as strided slices of the -inf padded
    input, stacked; argmax over the taps (the first maximum, as onnxruntime) picks the tap, and
    the same slices of a constant table of flat positions (row-major, or column-major with
    storage_order=1, -1 in the padding) turn it into the index, offset by (n * C + c) * H * W."""
    if x.type.rank != 4 or not all(isinstance(d, int) for d in (*x.shape, *out_shape)):
        raise GraphoptError("MaxPool's Indices output is supported for 2-D pooling of static "
                            "sizes")
    n, c, h, w = x.shape
    order = node.attr("storage_order", 0)
    outs = out_shape[2:]
    need = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(outs, strides, kernel,
                                                                 dilations)]
    ends = [max(e, nd - b - size) for e, nd, b, size in zip(ends, need, begins, (h, w))]
    padded = pad_spatial(ctx, x, begins, ends, -math.inf)
    hp, wp = h + begins[0] + ends[0], w + begins[1] + ends[1]
    check_shape((hp, wp), 8, "MaxPool's index table")
    iy, ix = np.meshgrid(np.arange(hp) - begins[0], np.arange(wp) - begins[1], indexing="ij")
    flat = np.where((iy >= 0) & (iy < h) & (ix >= 0) & (ix < w),
                    iy * w + ix if order == 0 else ix * h + iy, -1)
    table = ctx.constant(flat.reshape(1, 1, hp, wp).astype(np.int64))

    def window(v: Value, ky: int, kx: int) -> Value:
        for axis, start, o, s in ((2, ky * dilations[0], outs[0], strides[0]),
                                  (3, kx * dilations[1], outs[1], strides[1])):
            v = ctx.emit("slice", [v], {"axis": axis, "start": start,
                                        "end": start + (o - 1) * s + 1, "step": s})
        return ctx.emit("unsqueeze", [v], {"axis": 0})

    taps = [(ky, kx) for ky in range(kernel[0]) for kx in range(kernel[1])]
    values = ctx.emit("concat", [window(padded, *t) for t in taps], {"axis": 0})
    best = ctx.emit("argmax", [values], {"axis": 0, "keepdim": True})
    places = ctx.emit("concat", [window(table, *t) for t in taps], {"axis": 0})
    places = ctx.emit("expand", [places], {"shape": (len(taps), n, c, *outs)})
    within = ctx.emit("gather_elements", [places, best], {"axis": 0})
    within = ctx.emit("reshape", [within], {"shape": (n, c, *outs)})
    plane = ctx.constant((np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1))
    return ctx.emit("add", [within, plane])


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
            # Window sums = the mean over the whole (zero-padded) window times its size; a
            # ceil_mode window past the padding would be averaged over fewer positions.
            if node.attr("ceil_mode", 0):
                raise GraphoptError("LpPool with dilations and ceil_mode")
            mean = avg_pool_by_conv(ctx, powered, kernel, strides, dilations, begins, ends,
                                    True, False)
            summed = ctx.emit("mul", [mean, ctx.scalar(float(np.prod(kernel)), x.dtype)])
            return ctx.emit("pow", [summed, ctx.scalar(1.0 / p, x.dtype)])
        padded = pad_spatial(ctx, powered, begins, ends, 0.0)
        mean = ctx.emit("avg_pool", [padded], {"kernel": tuple(kernel), "stride": tuple(strides),
                                               "ceil_mode": bool(node.attr("ceil_mode", 0)),
                                               "count_include_pad": True})
        summed = ctx.emit("mul", [mean, ctx.scalar(float(np.prod(kernel)), x.dtype)])
    return ctx.emit("pow", [summed, ctx.scalar(1.0 / p, x.dtype)])


@onnx_converter("Col2Im")
def _col2im(ctx, node):
    """Col2Im (fold) as a transposed convolution whose weight scatters each of the K block
    positions of a channel back to its place: input [N, C*K, L] viewed as [N, C*K, *L_dims],
    weight [C*K, 1, *block] one-hot per block position, groups C. The sums of overlapping
    blocks are the convolution's own sums; asymmetric pads crop the full result."""
    x = ctx.value(node, 0)
    image = ctx.ints(node, 1, "image_shape")
    block = ctx.ints(node, 2, "block_shape")
    n = len(image)
    if n not in (1, 2, 3) or len(block) != n or any(v < 1 for v in (*image, *block)):
        raise GraphoptError(f"image_shape {image} and block_shape {block} must be 1-3 "
                            "positive sizes each")
    dil = node.attr("dilations", [1] * n)
    stride = node.attr("strides", [1] * n)
    pads = node.attr("pads", [0] * (2 * n))
    if len(dil) != n or len(stride) != n or len(pads) != 2 * n or min(*dil, *stride) < 1 \
            or min(pads) < 0:
        raise GraphoptError(f"dilations {dil}, strides {stride}, pads {pads} do not fit "
                            f"{n} spatial dims")
    k = math.prod(block)
    spans = [d * (b - 1) + 1 for d, b in zip(dil, block)]
    blocks = [(i + pads[a] + pads[a + n] - s) // st + 1
              for a, (i, s, st) in enumerate(zip(image, spans, stride))]
    expect_rank(x, 3, "Col2Im input")
    c = x.shape[1] // k if isinstance(x.shape[1], int) and x.shape[1] % k == 0 else None
    if c is None or x.shape[2] != math.prod(blocks) or min(blocks) < 1:
        raise GraphoptError(f"input {list(x.shape)} does not hold C x {k} block values at "
                            f"{math.prod(blocks)} block positions ({blocks})")
    grid = ctx.emit("reshape", [x], {"shape": (x.shape[0], c * k, *blocks)})
    check_shape((c * k, k), x.dtype.itemsize, "Col2Im's scatter weight")
    eye = np.eye(k, dtype=x.dtype.numpy).reshape(k, 1, *block)
    weight = ctx.constant(np.ascontiguousarray(np.tile(eye, (c, 1) + (1,) * n)), x.dtype)
    full = ctx.emit("conv_transpose", [grid, weight, None],
                    {"stride": tuple(stride), "padding": (0,) * n, "dilation": tuple(dil),
                     "groups": c, "output_padding": (0,) * n})
    out = full
    for a in range(n):
        have, begin = full.shape[2 + a], pads[a]
        if have < begin + image[a]:  # blocks end before the padded image does: zeros
            out = pad_spatial(ctx, out, [0] * n, [begin + image[a] - have if d == a else 0
                                                  for d in range(n)], 0.0)
        if begin or out.shape[2 + a] != image[a]:
            out = ctx.emit("slice", [out], {"axis": 2 + a, "start": begin,
                                            "end": begin + image[a], "step": 1})
    return out
