"""Converters of the ONNX neural-network ops: MatMul/Gemm, Conv, pooling, norms, Resize."""

from __future__ import annotations

import math

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Value
from graphopt.ir.types import normalize_dim
from graphopt.onnx.importer import ImportContext, OnnxNode, onnx_converter


@onnx_converter("MatMul")
def _matmul(ctx, node):
    return ctx.emit("matmul", [ctx.value(node, 0), ctx.value(node, 1)])


@onnx_converter("Gemm")
def _gemm(ctx, node):
    a, b, c = ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    trans_a, trans_b = node.attr("transA", 0), node.attr("transB", 0)
    n_out = b.shape[0] if trans_b else b.shape[1]
    if (alpha == 1.0 and beta == 1.0 and not trans_a and trans_b
            and (c is None or c.shape == (n_out,))):
        return ctx.emit("linear", [a, b, c])
    if trans_a:
        a = ctx.emit("permute", [a], {"perm": (1, 0)})
    if trans_b:
        b = ctx.emit("permute", [b], {"perm": (1, 0)})
    y = ctx.emit("matmul", [a, b])
    if alpha != 1.0:
        y = ctx.emit("mul", [y, ctx.scalar(alpha, y.dtype)])
    if c is not None and beta != 0.0:
        if beta != 1.0:
            c = ctx.emit("mul", [c, ctx.scalar(beta, c.dtype)])
        y = ctx.emit("add", [y, c])
    return y


# --------------------------------------------------------------------------------- padding
def _spatial_pads(node: OnnxNode, x: Value, kernel, strides, dilations) -> tuple[list, list]:
    """(begins, ends) of the spatial padding, resolving auto_pad on static sizes."""
    n = len(kernel)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = node.attr("pads", [0] * (2 * n))
        return list(pads[:n]), list(pads[n:])
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    begins, ends = [], []
    for i in range(n):
        size = x.shape[2 + i]
        if not isinstance(size, int):
            raise GraphoptError(f"auto_pad {auto_pad} on symbolic size {size}")
        out = -(-size // strides[i])
        total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size, 0)
        small = total // 2
        lo = small if auto_pad == "SAME_UPPER" else total - small
        begins.append(lo)
        ends.append(total - lo)
    return begins, ends


def pad_spatial(ctx: ImportContext, x: Value, begins, ends, value: float) -> Value:
    """Explicit padding of the trailing len(begins) dims (torch order)."""
    pads = []
    for lo, hi in zip(reversed(begins), reversed(ends)):
        pads += [int(lo), int(hi)]
    if not any(pads):
        return x
    return ctx.emit("pad", [x], {"pads": tuple(pads), "mode": "constant", "value": value})


def _conv_params(node: OnnxNode, w: Value, x: Value):
    kernel = node.attr("kernel_shape", [int(k) for k in w.shape[2:]])
    n = len(kernel)
    strides = node.attr("strides", [1] * n)
    dilations = node.attr("dilations", [1] * n)
    return kernel, strides, dilations


@onnx_converter("Conv")
def _conv(ctx, node):
    x, w, b = ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)
    kernel, strides, dilations = _conv_params(node, w, x)
    begins, ends = _spatial_pads(node, x, kernel, strides, dilations)
    padding = begins
    if begins != ends:
        x = pad_spatial(ctx, x, begins, ends, 0.0)
        padding = [0] * len(kernel)
    return ctx.emit("conv", [x, w, b], {"stride": tuple(strides), "padding": tuple(padding),
                                        "dilation": tuple(dilations),
                                        "groups": node.attr("group", 1)})


@onnx_converter("ConvTranspose")
def _conv_transpose(ctx, node):
    x, w, b = ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)
    kernel, strides, dilations = _conv_params(node, w, x)
    n = len(kernel)
    output_padding = node.attr("output_padding", [0] * n)
    auto_pad = node.attr("auto_pad", "NOTSET")
    output_shape = node.attr("output_shape", None)
    if output_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = [x.shape[2 + i] * strides[i] for i in range(n)]
    if output_shape is not None:
        output_shape = list(output_shape)[-n:]
        begins, ends = [], []
        for i in range(n):
            total = (strides[i] * (x.shape[2 + i] - 1) + output_padding[i]
                     + (kernel[i] - 1) * dilations[i] + 1 - output_shape[i])
            if not isinstance(total, int) or total < 0:
                raise GraphoptError(f"ConvTranspose output_shape {output_shape} is larger than "
                                    "the full transposed convolution")
            if auto_pad == "SAME_UPPER":
                lo = total // 2
            else:
                lo = total - total // 2
            begins.append(lo)
            ends.append(total - lo)
    elif auto_pad == "VALID":
        begins, ends = [0] * n, [0] * n
    else:
        pads = node.attr("pads", [0] * (2 * n))
        begins, ends = list(pads[:n]), list(pads[n:])
    symmetric = begins == ends
    y = ctx.emit("conv_transpose", [x, w, b], {
        "stride": tuple(strides), "padding": tuple(begins if symmetric else [0] * n),
        "dilation": tuple(dilations), "groups": node.attr("group", 1),
        "output_padding": tuple(output_padding)})
    if not symmetric:
        for i in range(n):
            axis = 2 + i
            size = y.shape[axis]
            y = ctx.emit("slice", [y], {"axis": axis, "start": begins[i],
                                        "end": normalize_dim(size - ends[i])})
    return y


# --------------------------------------------------------------------------------- pooling
def _pool_params(node: OnnxNode, x: Value):
    kernel = node.attr("kernel_shape")
    n = len(kernel)
    strides = node.attr("strides", [1] * n)
    dilations = node.attr("dilations", [1] * n)
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
    op = "adaptive_avg_pool" if node.op_type == "GlobalAveragePool" else "adaptive_max_pool"
    return ctx.emit(op, [x], {"output_size": (1,) * (x.type.rank - 2)})


@onnx_converter("LpPool", "GlobalLpPool")
def _lp_pool(ctx, node):
    x = ctx.value(node, 0)
    p = float(node.attr("p", 2))
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


# --------------------------------------------------------------------------- normalization
@onnx_converter("BatchNormalization")
def _batch_norm(ctx, node):
    x, scale, bias, mean, var = (ctx.value(node, i) for i in range(5))
    eps = node.attr("epsilon", 1e-5)
    if not node.attr("training_mode", 0):
        return [ctx.emit("batch_norm", [x, mean, var, scale, bias], {"eps": eps}), None, None]
    # Training mode normalizes with the batch's statistics and updates the running ones.
    axes = tuple(a for a in range(x.type.rank) if a != 1)
    batch_mean = ctx.emit("mean", [x], {"axes": axes})
    batch_var = ctx.emit("var", [x], {"axes": axes, "correction": 0.0})
    y = ctx.emit("batch_norm", [x, batch_mean, batch_var, scale, bias], {"eps": eps})
    momentum = node.attr("momentum", 0.9)

    def running(old, new):
        return ctx.emit("add", [ctx.emit("mul", [old, ctx.scalar(momentum, old.dtype)]),
                                ctx.emit("mul", [new, ctx.scalar(1 - momentum, new.dtype)])])

    return [y, running(mean, batch_mean), running(var, batch_var)]


@onnx_converter("InstanceNormalization")
def _instance_norm(ctx, node):
    x = ctx.value(node, 0)
    channels = x.shape[1]
    if not isinstance(channels, int):
        raise GraphoptError("InstanceNormalization over a symbolic channel count")
    return ctx.emit("group_norm", [x, ctx.value(node, 1), ctx.value(node, 2)],
                    {"groups": channels, "eps": node.attr("epsilon", 1e-5)})


@onnx_converter("LayerNormalization")
def _layer_norm(ctx, node):
    x, scale, bias = ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)
    axis = node.attr("axis", -1) % x.type.rank
    shape = tuple(x.shape[axis:])
    eps = node.attr("epsilon", 1e-5)
    exact = scale.shape == shape and (bias is None or bias.shape == shape)
    if exact:
        y = ctx.emit("layer_norm", [x, scale, bias], {"normalized_shape": shape, "eps": eps})
    else:  # broadcast affine parameters: normalize, then scale and shift
        y = ctx.emit("layer_norm", [x, None, None], {"normalized_shape": shape, "eps": eps})
        y = ctx.emit("mul", [y, scale])
        if bias is not None:
            y = ctx.emit("add", [y, bias])
    mean = inv_std = None
    wanted = [bool(o) for o in node.outputs[1:3]] + [False, False]
    if wanted[0] or wanted[1]:  # the optional statistics outputs
        axes = tuple(range(axis, x.type.rank))
        mean = ctx.emit("mean", [x], {"axes": axes, "keepdim": True})
        if wanted[1]:
            var = ctx.emit("var", [x], {"axes": axes, "keepdim": True, "correction": 0.0})
            inv_std = ctx.emit("rsqrt", [ctx.emit("add", [var, ctx.scalar(eps, x.dtype)])])
    return [y, mean, inv_std]


@onnx_converter("GroupNormalization")
def _group_norm(ctx, node):
    x, scale, bias = ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)
    groups = node.attr("num_groups")
    channels = x.shape[1]
    if node.opset < 21 and groups != channels:  # opset 18: one scale/bias per group
        if not isinstance(channels, int):
            raise GraphoptError("GroupNormalization-18 over a symbolic channel count")
        per = channels // groups
        params = []
        for p in (scale, bias):
            if p.kind == "const":
                params.append(ctx.constant(np.repeat(p.data, per), p.dtype, p.name))
            else:
                q = ctx.emit("unsqueeze", [p], {"axis": 1})
                q = ctx.emit("expand", [q], {"shape": (groups, per)})
                params.append(ctx.emit("reshape", [q], {"shape": (channels,)}))
        scale, bias = params
    return ctx.emit("group_norm", [x, scale, bias],
                    {"groups": groups, "eps": node.attr("epsilon", 1e-5)})


@onnx_converter("RMSNormalization")
def _rms_norm(ctx, node):
    x = ctx.value(node, 0)
    return ctx.emit("rms_norm", [x, ctx.value(node, 1)],
                    {"axis": node.attr("axis", -1) % x.type.rank,
                     "eps": node.attr("epsilon", 1e-5)})


@onnx_converter("LRN")
def _lrn(ctx, node):
    return ctx.emit("lrn", [ctx.value(node, 0)], {
        "size": node.attr("size"), "alpha": node.attr("alpha", 1e-4),
        "beta": node.attr("beta", 0.75), "bias": node.attr("bias", 1.0)})


# -------------------------------------------------------------------------------- algebra
@onnx_converter("Einsum")
def _einsum(ctx, node):
    return ctx.emit("einsum", ctx.values(node), {"equation": node.attr("equation")})


@onnx_converter("Det")
def _det(ctx, node):
    return ctx.emit("det", [ctx.value(node, 0)])


def _scan(ctx: ImportContext, node: OnnxNode, ir_op: str, identity: float):
    x = ctx.value(node, 0)
    axis = int(ctx.const(node, 1, "axis").reshape(())) % max(x.type.rank, 1)
    y = x
    reverse, exclusive = node.attr("reverse", 0), node.attr("exclusive", 0)
    if reverse:
        y = ctx.emit("flip", [y], {"axes": (axis,)})
    y = ctx.emit(ir_op, [y], {"axis": axis})
    y = ctx.cast(y, x.dtype)
    if exclusive:  # shift by one along the axis, filling with the identity
        y = ctx.emit("slice", [y], {"axis": axis, "start": 0, "end": -1})
        rank = x.type.rank
        pads = [0] * (2 * (rank - axis))
        pads[-2] = 1
        value = float(identity) if x.dtype.is_floating else int(identity)
        y = ctx.emit("pad", [y], {"pads": tuple(pads), "mode": "constant", "value": value})
    if reverse:
        y = ctx.emit("flip", [y], {"axes": (axis,)})
    return y


@onnx_converter("CumSum")
def _cumsum(ctx, node):
    return _scan(ctx, node, "cumsum", 0)


@onnx_converter("CumProd")
def _cumprod(ctx, node):
    return _scan(ctx, node, "cumprod", 1)


@onnx_converter("TopK")
def _topk(ctx, node):
    x = ctx.value(node, 0)
    if node.opset < 10:
        k = node.attr("k")
    else:
        k = int(ctx.const(node, 1, "k").reshape(-1)[0])
    values, indices = ctx.emit("topk", [x], {
        "k": k, "axis": node.attr("axis", -1) % x.type.rank,
        "largest": bool(node.attr("largest", 1)), "sorted": bool(node.attr("sorted", 1))})
    return [values, indices]

