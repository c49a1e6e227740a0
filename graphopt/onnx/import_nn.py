"""Converters of the ONNX neural-network ops: MatMul/Gemm, Conv, pooling, norms, Resize."""

from __future__ import annotations

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Value
from graphopt.ir.types import normalize_dim
from graphopt.limits import check_shape
from graphopt.onnx.importer import ImportContext, OnnxNode, onnx_converter

_AUTO_PAD = ("NOTSET", "", "SAME_UPPER", "SAME_LOWER", "VALID")


def expect_rank(value: Value, ranks, what: str) -> None:
    """``value``'s rank must be one of ``ranks`` (an int, or a range/tuple)."""
    allowed = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if value.type.rank not in allowed:
        want = allowed[0] if len(allowed) == 1 else f"{allowed[0]} to {allowed[-1]}"
        raise GraphoptError(f"{what} must have rank {want}, got {value.type}")


@onnx_converter("MatMul")
def _matmul(ctx, node):
    return ctx.emit("matmul", [ctx.value(node, 0), ctx.value(node, 1)])


@onnx_converter("Gemm")
def _gemm(ctx, node):
    a, b, c = ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)
    expect_rank(a, 2, "Gemm input A")
    expect_rank(b, 2, "Gemm input B")
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
    auto_pad = node.choice("auto_pad", "NOTSET", _AUTO_PAD)
    if auto_pad in ("NOTSET", ""):
        pads = node.ints("pads", [0] * (2 * n), length=2 * n, minimum=0)
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


def _conv_params(node: OnnxNode, w: Value, x: Value, transpose: bool = False):
    """(kernel, strides, dilations) of a Conv-like node, checked against its operands: ranks
    alike, kernel_shape equal to the weight's spatial dims, strides/dilations >= 1, channel
    counts consistent with ``group``."""
    expect_rank(x, range(3, 6), "the input (N, C, *spatial)")
    if w.type.rank != x.type.rank:
        raise GraphoptError(f"weight {w.type} and input {x.type} must have the same rank")
    n = x.type.rank - 2
    kernel = node.ints("kernel_shape", None, length=n, minimum=1)
    if kernel is None:
        kernel = list(w.shape[2:])
        if not all(isinstance(k, int) for k in kernel):
            raise GraphoptError(f"the weight's kernel dims {w.type} must be static")
    elif any(isinstance(d, int) and d != k for d, k in zip(w.shape[2:], kernel)):
        raise GraphoptError(f"kernel_shape {kernel} does not match the weight {w.type}")
    if any(k < 1 for k in kernel):
        raise GraphoptError(f"the weight {w.type} has an empty kernel")
    strides = node.ints("strides", [1] * n, length=n, minimum=1)
    dilations = node.ints("dilations", [1] * n, length=n, minimum=1)
    group = node.positive_int("group", 1)
    if transpose:  # weight (C_in, C_out / group, *k)
        expected_in, grouped = w.shape[0], w.shape[0]
    else:  # weight (C_out, C_in / group, *k)
        expected_in, grouped = w.shape[1] * group, w.shape[0]
    channels = x.shape[1]
    if isinstance(channels, int) and isinstance(expected_in, int) and channels != expected_in:
        raise GraphoptError(f"input {x.type} has {channels} channels; the weight {w.type} with "
                            f"group={group} expects {expected_in}")
    if isinstance(grouped, int) and grouped % group:
        raise GraphoptError(f"the weight's {grouped} channels do not split into group={group}")
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
    kernel, strides, dilations = _conv_params(node, w, x, transpose=True)
    n = len(kernel)
    output_padding = node.ints("output_padding", [0] * n, length=n, minimum=0)
    if any(p >= max(s, d) for p, s, d in zip(output_padding, strides, dilations)):
        raise GraphoptError(f"output_padding {output_padding} must be smaller than the stride "
                            f"{strides} or dilation {dilations}")
    auto_pad = node.choice("auto_pad", "NOTSET", _AUTO_PAD)
    output_shape = node.ints("output_shape", None, minimum=0)
    if output_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = [x.shape[2 + i] * strides[i] for i in range(n)]
    if output_shape is not None:
        if len(output_shape) not in (n, n + 2):
            raise GraphoptError(f"output_shape {output_shape} must give the {n} spatial sizes")
        output_shape = list(output_shape)[-n:]
        begins, ends = [], []
        for i in range(n):
            total = (strides[i] * (x.shape[2 + i] - 1) + output_padding[i]
                     + (kernel[i] - 1) * dilations[i] + 1 - output_shape[i])
            if not isinstance(total, int):
                raise GraphoptError(f"ConvTranspose output_shape {output_shape} with symbolic "
                                    "input sizes")
            if auto_pad == "SAME_UPPER":
                lo = total // 2
            else:
                lo = total - total // 2
            begins.append(lo)
            ends.append(total - lo)
    elif auto_pad == "VALID":
        begins, ends = [0] * n, [0] * n
    else:
        pads = node.ints("pads", [0] * (2 * n), length=2 * n, minimum=0)
        begins, ends = list(pads[:n]), list(pads[n:])
    attrs = {"stride": tuple(strides), "dilation": tuple(dilations),
             "groups": node.attr("group", 1), "output_padding": tuple(output_padding)}
    if min(begins + ends) < 0:  # output_shape past the full result: bias-only borders
        return _grown_conv_transpose(ctx, x, w, b, attrs, begins, ends)
    symmetric = begins == ends
    y = ctx.emit("conv_transpose", [x, w, b],
                 {**attrs, "padding": tuple(begins if symmetric else [0] * n)})
    if not symmetric:
        for i in range(n):
            axis = 2 + i
            size = y.shape[axis]
            y = ctx.emit("slice", [y], {"axis": axis, "start": begins[i],
                                        "end": normalize_dim(size - ends[i])})
    return y


def _grown_conv_transpose(ctx, x, w, b, attrs: dict, begins, ends):
    """A ConvTranspose whose output_shape exceeds the full result (negative total padding):
    the full result without bias, cropped where the padding is positive and zero-extended
    where it is negative, then the bias added everywhere (the borders hold the bias only)."""
    n = len(begins)
    y = ctx.emit("conv_transpose", [x, w, None], {**attrs, "padding": (0,) * n})
    for i in range(n):
        axis, lo, hi = 2 + i, begins[i], ends[i]
        if lo > 0 or hi > 0:
            y = ctx.emit("slice", [y], {"axis": axis, "start": max(lo, 0),
                                        "end": normalize_dim(y.shape[axis] - max(hi, 0))})
    y = pad_spatial(ctx, y, [max(-lo, 0) for lo in begins], [max(-hi, 0) for hi in ends], 0.0)
    if b is None:
        return y
    return ctx.emit("add", [y, ctx.emit("reshape", [b], {"shape": (b.shape[0],) + (1,) * n})])


# --------------------------------------------------------------------------- normalization
@onnx_converter("BatchNormalization")
def _batch_norm(ctx, node):
    x, scale, bias, mean, var = (ctx.value(node, i) for i in range(5))
    expect_rank(x, range(2, 9), "the input (N, C, ...)")
    for param, what in ((scale, "scale"), (bias, "B"), (mean, "input_mean"), (var, "input_var")):
        expect_rank(param, 1, what)
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
    expect_rank(x, range(3, 9), "the input (N, C, *spatial)")
    channels = x.shape[1]
    if not isinstance(channels, int) or channels < 1:
        raise GraphoptError(f"InstanceNormalization over channel count {channels}")
    return ctx.emit("group_norm", [x, ctx.value(node, 1), ctx.value(node, 2)],
                    {"groups": channels, "eps": node.attr("epsilon", 1e-5)})


@onnx_converter("LayerNormalization")
def _layer_norm(ctx, node):
    x, scale, bias = ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)
    if x.type.rank == 0:
        raise GraphoptError("LayerNormalization of a 0-d tensor")
    axis = node.axis_attr("axis", -1, x.type.rank)
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
    expect_rank(x, range(2, 9), "the input (N, C, ...)")
    groups = node.positive_int("num_groups")
    channels = x.shape[1]
    if isinstance(channels, int) and channels % groups:
        raise GraphoptError(f"{channels} channels do not split into num_groups={groups}")
    if node.opset < 21 and groups != channels:  # opset 18: one scale/bias per group
        if not isinstance(channels, int):
            raise GraphoptError("GroupNormalization-18 over a symbolic channel count")
        per = channels // groups
        check_shape((channels,), scale.dtype.itemsize, f"per-channel scale/bias ({channels})")
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
                    {"axis": node.axis_attr("axis", -1, x.type.rank),
                     "eps": node.attr("epsilon", 1e-5)})


@onnx_converter("LRN")
def _lrn(ctx, node):
    return ctx.emit("lrn", [ctx.value(node, 0)], {
        "size": node.positive_int("size"), "alpha": node.attr("alpha", 1e-4),
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
    axis_value = ctx.const(node, 1, "axis")
    if axis_value.size != 1 or axis_value.dtype.kind not in "iu":
        raise GraphoptError(f"input 'axis' must be one integer, got {axis_value.tolist()}")
    axis = node.axis(int(axis_value.reshape(())), x.type.rank, "input 'axis'")
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
    if x.type.rank == 0:
        raise GraphoptError("TopK of a 0-d tensor")
    if node.opset < 10:
        k = node.attr("k")
    else:
        k_value = ctx.const(node, 1, "k")
        if k_value.size != 1 or k_value.dtype.kind not in "iu":
            raise GraphoptError(f"input 'k' must be one integer, got {k_value.tolist()}")
        k = int(k_value.reshape(-1)[0])
    axis = node.axis_attr("axis", -1, x.type.rank)
    size = x.shape[axis]
    if k < 0 or (isinstance(size, int) and k > size):
        raise GraphoptError(f"k = {k} is outside [0, {size}], the size of axis {axis}")
    values, indices = ctx.emit("topk", [x], {
        "k": k, "axis": axis,
        "largest": bool(node.attr("largest", 1)), "sorted": bool(node.attr("sorted", 1))})
    return [values, indices]


