"""ONNX lowerings of matmul/linear, convolution, pooling, normalization and resize."""

from __future__ import annotations

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Node
from graphopt.onnx.conv_padding import conv_input_pads
from graphopt.onnx.export import OnnxLowering
from graphopt.onnx.lower_shape import reshape, slice_, squeeze, unsqueeze
from graphopt.ops.registry import register_lowering


@register_lowering("onnx", "matmul")
def _matmul(ctx, node):
    dtype = node.outputs[0].dtype
    ctx.op("MatMul", [ctx.input_as(node, 0, dtype), ctx.input_as(node, 1, dtype)],
           out=ctx.output(node))


def transposed_weight(ctx: OnnxLowering, node: Node, i: int) -> str:
    """``weight.T`` of a [out, in] weight: a new initializer for constants, else a Transpose."""
    w = node.inputs[i]
    if w.kind == "const":
        return ctx.const(np.ascontiguousarray(w.data.T), w.dtype, f"{w.name}_t")
    return ctx.op("Transpose", [ctx.name(w)], perm=[1, 0])


@register_lowering("onnx", "linear")
def _linear(ctx, node):
    x = node.inputs[0]
    if x.type.rank == 2:
        args = [ctx.input(node, 0), ctx.input(node, 1)]
        if node.inputs[2] is not None:
            args.append(ctx.input(node, 2))
        ctx.op("Gemm", args, out=ctx.output(node), transB=1)
        return
    if node.inputs[2] is None:
        ctx.op("MatMul", [ctx.input(node, 0), transposed_weight(ctx, node, 1)],
               out=ctx.output(node))
        return
    y = ctx.op("MatMul", [ctx.input(node, 0), transposed_weight(ctx, node, 1)])
    ctx.op("Add", [y, ctx.input(node, 2)], out=ctx.output(node))


def spatial(value, n: int) -> list[int]:
    value = [int(v) for v in value]
    return value * n if len(value) == 1 else value


def _conv_args(ctx: OnnxLowering, node: Node) -> list[str]:
    args = [ctx.input(node, 0), ctx.input(node, 1)]
    if node.inputs[2] is not None:
        args.append(ctx.input(node, 2))
    return args


@register_lowering("onnx", "conv")
def _conv(ctx, node):
    n = node.inputs[0].type.rank - 2
    a = node.attrs
    pads = conv_input_pads(node, spatial(a["padding"], n))
    ctx.op("Conv", _conv_args(ctx, node), out=ctx.output(node),
           kernel_shape=[int(k) for k in node.inputs[1].shape[2:]],
           strides=spatial(a["stride"], n), pads=pads,
           dilations=spatial(a["dilation"], n), group=int(a["groups"]))


@register_lowering("onnx", "conv_transpose")
def _conv_transpose(ctx, node):
    n = node.inputs[0].type.rank - 2
    a = node.attrs
    pads = spatial(a["padding"], n)
    output_padding = spatial(a["output_padding"], n)
    ctx.op("ConvTranspose", _conv_args(ctx, node), out=ctx.output(node),
           kernel_shape=[int(k) for k in node.inputs[1].shape[2:]],
           strides=spatial(a["stride"], n), pads=pads + pads,
           dilations=spatial(a["dilation"], n), group=int(a["groups"]),
           output_padding=output_padding if any(output_padding) else None)


def _batched(ctx: OnnxLowering, node: Node, n: int, build) -> None:
    """Run ``build(x, out)`` on an (N, C, *spatial) view of operand 0 (unbatched: add N)."""
    x = ctx.input(node, 0)
    if node.inputs[0].type.rank == n + 2:
        build(x, ctx.output(node))
        return
    y = build(unsqueeze(ctx, x, [0]), None)
    squeeze(ctx, y, [0], out=ctx.output(node))


def _ceil_as_padding(node: Node, n: int, pads: list[int], dilation: list[int]):
    """End pads that give torch's ceil_mode output sizes with floor rounding, or None.

    torch drops a last window that would start in the right padding; ONNX's shape rule does
    not, so ceil_mode is expressed as explicit extra end padding when the sizes are static.
    """
    x_shape = node.inputs[0].shape[-n:]
    out_shape = node.outputs[0].shape[-n:]
    if not all(isinstance(d, int) for d in (*x_shape, *out_shape)):
        return None
    a = node.attrs
    kernel, stride = spatial(a["kernel"], n), spatial(a["stride"] or a["kernel"], n)
    ends = []
    for i in range(n):
        k_eff = dilation[i] * (kernel[i] - 1) + 1
        ends.append(max(pads[i], (out_shape[i] - 1) * stride[i] + k_eff - x_shape[i] - pads[i]))
    return ends


def _onnx_ceil_agrees(node: Node, n: int, pads: list[int]) -> bool:
    """Whether ONNX's ceil_mode output size equals torch's for this pooling."""
    x_shape = node.inputs[0].shape[-n:]
    out_shape = node.outputs[0].shape[-n:]
    a = node.attrs
    kernel, stride = spatial(a["kernel"], n), spatial(a["stride"] or a["kernel"], n)
    for i in range(n):
        if not isinstance(x_shape[i], int):
            return True  # symbolic: nothing to compare; onnxruntime computes at run time
        onnx_out = -(-(x_shape[i] + 2 * pads[i] - kernel[i]) // stride[i]) + 1
        if onnx_out != out_shape[i]:
            return False
    return True


@register_lowering("onnx", "max_pool")
def _max_pool(ctx, node):
    a = node.attrs
    n = len(a["kernel"])
    pads = spatial(a["padding"], n)
    dilation = spatial(a["dilation"], n)
    ceil_mode = int(a["ceil_mode"])
    ends = pads
    if ceil_mode:
        explicit = _ceil_as_padding(node, n, pads, dilation)
        if explicit is not None:  # max ignores padding: exact
            ends, ceil_mode = explicit, 0

    def build(x, out):
        return ctx.op("MaxPool", [x], out=out, kernel_shape=spatial(a["kernel"], n),
                      strides=spatial(a["stride"] or a["kernel"], n), pads=pads + ends,
                      dilations=dilation, ceil_mode=ceil_mode)

    _batched(ctx, node, n, build)


@register_lowering("onnx", "avg_pool")
def _avg_pool(ctx, node):
    a = node.attrs
    n = len(a["kernel"])
    kernel = spatial(a["kernel"], n)
    pads = spatial(a["padding"], n)
    divisor = a["divisor_override"]
    ceil_mode = int(a["ceil_mode"])
    ends = pads
    if ceil_mode and not a["count_include_pad"] and divisor is None:
        explicit = _ceil_as_padding(node, n, pads, [1] * n)
        if explicit is not None:  # the extra padding is not counted: exact
            ends, ceil_mode = explicit, 0
    if ceil_mode and (divisor is not None or not _onnx_ceil_agrees(node, n, pads)):
        _avg_pool_by_conv(ctx, node, n)
        return

    def build(x, out):
        kwargs = dict(kernel_shape=kernel, strides=spatial(a["stride"] or a["kernel"], n),
                      pads=pads + ends, ceil_mode=ceil_mode)
        if divisor is None:
            return ctx.op("AveragePool", [x], out=out,
                          count_include_pad=int(a["count_include_pad"]), **kwargs)
        # sum = mean over the full (zero-padded) window * window size; then / divisor
        mean = ctx.op("AveragePool", [x], count_include_pad=1, **kwargs)
        dtype = node.inputs[0].dtype
        return ctx.op("Mul", [mean, ctx.scalar(float(np.prod(kernel)) / divisor, dtype)],
                      out=out)

    _batched(ctx, node, n, build)


def _avg_pool_by_conv(ctx: OnnxLowering, node: Node, n: int) -> None:
    """avg_pool exactly as torch computes it: window sums by a ones-kernel Conv over
    (N*C, 1, *spatial), divided by torch's per-window divisor (a constant map)."""
    import torch
    import torch.nn.functional as F

    a = node.attrs
    x_type, out_type = node.inputs[0].type, node.outputs[0].type
    spatial, out_spatial = list(x_type.shape[-n:]), list(out_type.shape[-n:])
    if not all(isinstance(d, int) for d in spatial + out_spatial):
        raise ctx.fail("avg_pool with ceil_mode windows ONNX cannot express, on symbolic sizes")
    kernel, stride = spatial_(a["kernel"], n), spatial_(a["stride"] or a["kernel"], n)
    pads = spatial_(a["padding"], n)
    ends = [max(p, (o - 1) * s + k - i - p)
            for i, o, s, k, p in zip(spatial, out_spatial, stride, kernel, pads)]
    # torch's divisor: the window clipped to the padded input (count_include_pad) or to the
    # input itself; evaluated once here with torch on an all-ones plane.
    ones = torch.ones((1, 1, *spatial), dtype=torch.float64)
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    kwargs = dict(ceil_mode=True, count_include_pad=bool(a["count_include_pad"]))
    if n > 1:
        kwargs["divisor_override"] = a["divisor_override"]
    mean_of_ones = pool(ones, kernel, stride, pads, **kwargs)
    counts = F.pad(ones, [p for lo, hi in zip(reversed(pads), reversed(ends)) for p in (lo, hi)])
    weight = torch.ones((1, 1, *kernel), dtype=torch.float64)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    window_sums = conv(counts, weight, stride=stride)
    divisor = (window_sums / mean_of_ones).numpy()  # sum of ones / mean of ones = divisor
    dtype = x_type.dtype
    lead = list(x_type.shape[:-n])
    planes = ctx.op("Reshape", [ctx.input(node, 0), ctx.ints([-1, 1, *spatial])])
    sums = ctx.op("Conv", [planes, ctx.const(np.ones((1, 1, *kernel)), dtype, "ones")],
                  kernel_shape=kernel, strides=stride, pads=pads + ends)
    mean = ctx.op("Div", [sums, ctx.const(divisor, dtype, "divisor")])
    ctx.op("Reshape", [mean, ctx.shape_tensor(lead + out_spatial)], out=ctx.output(node))


def spatial_(value, n: int) -> list[int]:
    return spatial(value, n)


def _adaptive_sizes(node: Node) -> tuple[list, list]:
    x = node.inputs[0].type
    size = node.attrs["output_size"]
    n = len(size)
    ins = list(x.shape[x.rank - n:])
    outs = [ins[i] if s is None else int(s) for i, s in enumerate(size)]
    return ins, outs


def _adaptive(ctx: OnnxLowering, node: Node, kind: str, ins: list, outs: list) -> None:
    """Adaptive pooling of the trailing ``len(outs)`` dims from sizes ``ins`` to ``outs``."""
    n = len(outs)
    rank = node.inputs[0].type.rank
    if all(o == 1 for o in outs):
        global_op = "GlobalAveragePool" if kind == "avg" else "GlobalMaxPool"
        _batched(ctx, node, n, lambda x, out: ctx.op(global_op, [x], out=out))
        return
    if not all(isinstance(i, int) for i in ins):
        raise ctx.fail(f"adaptive pooling of symbolic sizes {ins} to {outs}")
    if all(i % o == 0 for i, o in zip(ins, outs)):  # uniform windows: a plain pooling
        kernel = [i // o for i, o in zip(ins, outs)]
        pool = "AveragePool" if kind == "avg" else "MaxPool"
        _batched(ctx, node, n, lambda x, out: ctx.op(pool, [x], out=out, kernel_shape=kernel,
                                                      strides=kernel))
        return
    # Non-uniform windows [floor(i*in/out), ceil((i+1)*in/out)): pooling is separable, so
    # reduce one spatial axis at a time.
    x = ctx.input(node, 0)
    dtype = node.inputs[0].dtype
    for k in range(n):
        axis = rank - n + k
        size_in, size_out = ins[k], outs[k]
        if size_in == size_out:
            continue
        bounds = [(i * size_in // size_out, -(-(i + 1) * size_in // size_out))
                  for i in range(size_out)]
        if kind == "avg":  # an averaging matrix applied on that axis
            m = np.zeros((size_in, size_out), dtype=np.float64)
            for i, (lo, hi) in enumerate(bounds):
                m[lo:hi, i] = 1.0 / (hi - lo)
            perm = list(range(rank))
            perm[axis], perm[-1] = perm[-1], perm[axis]
            t = x if axis == rank - 1 else ctx.op("Transpose", [x], perm=perm)
            t = ctx.op("MatMul", [t, ctx.const(m, dtype, "adaptive_avg")])
            x = t if axis == rank - 1 else ctx.op("Transpose", [t], perm=perm)
        else:
            pieces = [ctx.op("ReduceMax", [slice_(ctx, x, axis, lo, hi), ctx.ints([axis])],
                             keepdims=1) if ctx.opset >= 18 else
                      ctx.op("ReduceMax", [slice_(ctx, x, axis, lo, hi)], axes=[axis],
                             keepdims=1)
                      for lo, hi in bounds]
            x = ctx.op("Concat", pieces, axis=axis)
    ctx.finish(node, x)


@register_lowering("onnx", "adaptive_avg_pool")
def _adaptive_avg_pool(ctx, node):
    _adaptive(ctx, node, "avg", *_adaptive_sizes(node))


@register_lowering("onnx", "adaptive_max_pool")
def _adaptive_max_pool(ctx, node):
    _adaptive(ctx, node, "max", *_adaptive_sizes(node))


def _param_or(ctx: OnnxLowering, node: Node, i: int, fill: float, shape, dtype: DType) -> str:
    """Operand ``i``, or a constant ``fill`` tensor where torch allows it to be absent."""
    if i < len(node.inputs) and node.inputs[i] is not None:
        return ctx.input(node, i)
    if not all(isinstance(d, int) for d in shape):
        raise ctx.fail(f"an absent affine parameter needs a static shape, got {shape}")
    return ctx.const(np.full([int(d) for d in shape], fill), dtype, "ones" if fill else "zeros")


@register_lowering("onnx", "layer_norm")
def _layer_norm(ctx, node):
    shape = node.attrs["normalized_shape"]
    dtype = node.inputs[0].dtype
    args = [ctx.input(node, 0), _param_or(ctx, node, 1, 1.0, shape, dtype)]
    if node.inputs[2] is not None:
        args.append(ctx.input(node, 2))
    ctx.op("LayerNormalization", args, out=ctx.output(node), axis=-len(shape),
           epsilon=float(node.attrs["eps"]))


@register_lowering("onnx", "batch_norm")
def _batch_norm(ctx, node):
    channels = [node.inputs[0].shape[1]]
    dtype = node.inputs[0].dtype
    args = [ctx.input(node, 0), _param_or(ctx, node, 3, 1.0, channels, dtype),
            _param_or(ctx, node, 4, 0.0, channels, dtype), ctx.input(node, 1),
            ctx.input(node, 2)]
    ctx.op("BatchNormalization", args, out=ctx.output(node), epsilon=float(node.attrs["eps"]))


@register_lowering("onnx", "group_norm")
def _group_norm(ctx, node):
    x_type = node.inputs[0].type
    dtype = x_type.dtype
    groups = int(node.attrs["groups"])
    eps = float(node.attrs["eps"])
    channels = x_type.shape[1]
    if isinstance(channels, int) and channels == groups and x_type.rank >= 3:
        args = [ctx.input(node, 0), _param_or(ctx, node, 1, 1.0, [channels], dtype),
                _param_or(ctx, node, 2, 0.0, [channels], dtype)]
        ctx.op("InstanceNormalization", args, out=ctx.output(node), epsilon=eps)
        return
    if ctx.opset >= 21:
        args = [ctx.input(node, 0), _param_or(ctx, node, 1, 1.0, [channels], dtype),
                _param_or(ctx, node, 2, 0.0, [channels], dtype)]
        ctx.op("GroupNormalization", args, out=ctx.output(node), num_groups=groups, epsilon=eps)
        return
    # Instance norm over (N, G, C/G * spatial), then the per-channel affine.
    grouped = ctx.op("Reshape", [ctx.input(node, 0), ctx.ints([0, groups, -1])])
    normed = ctx.op("InstanceNormalization", [
        grouped, ctx.const(np.ones(groups), dtype, "ones"),
        ctx.const(np.zeros(groups), dtype, "zeros")], epsilon=eps)
    y = reshape(ctx, normed, x_type.shape)
    affine_shape = [-1] + [1] * (x_type.rank - 2)
    for i, op in ((1, "Mul"), (2, "Add")):
        if node.inputs[i] is not None:
            p = node.inputs[i]
            param = (ctx.const(p.data.reshape(affine_shape), p.dtype, f"{p.name}_c")
                     if p.kind == "const" else reshape(ctx, ctx.input(node, i), affine_shape))
            y = ctx.op(op, [y, param])
    ctx.finish(node, y)


@register_lowering("onnx", "resize")
def _resize(ctx, node):
    a = node.attrs
    mode = a["mode"]
    x_type = node.inputs[0].type
    size = list(a["size"])
    n = len(size)
    if mode == "area":  # torch's area interpolation is adaptive average pooling
        _adaptive(ctx, node, "avg", list(x_type.shape[x_type.rank - n:]), size)
        return
    kwargs: dict = {}
    if mode == "nearest":
        kwargs = dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                      nearest_mode="floor")
    elif mode == "nearest-exact":
        kwargs = dict(mode="nearest", coordinate_transformation_mode="half_pixel",
                      nearest_mode="round_prefer_ceil")
    elif mode in ("linear", "bilinear", "trilinear", "bicubic"):
        kwargs = dict(mode="cubic" if mode == "bicubic" else "linear",
                      coordinate_transformation_mode="align_corners" if a["align_corners"]
                      else "half_pixel")
        if mode == "bicubic":
            kwargs["cubic_coeff_a"] = -0.75
    else:
        raise ctx.fail(f"resize mode '{mode}' has no ONNX equivalent")
    use_axes = ctx.opset >= 18
    lead = x_type.rank - n
    dtype = DType.float32
    if a["scales"] is not None:
        scales = [float(s) for s in a["scales"]]
        scales = scales * n if len(scales) == 1 else scales
        if not use_axes:
            scales = [1.0] * lead + scales
        args = [ctx.input(node, 0), "", ctx.const(np.array(scales), dtype, "scales")]
    else:
        dims = size if use_axes else list(x_type.shape[:lead]) + size
        args = [ctx.input(node, 0), "", "", ctx.shape_tensor(dims)]
    if use_axes:
        kwargs["axes"] = list(range(lead, x_type.rank))
    ctx.op("Resize", args, out=ctx.output(node), **kwargs)


@register_lowering("onnx", "pixel_shuffle")
def _pixel_shuffle(ctx, node):
    ctx.op("DepthToSpace", [ctx.input(node, 0)], out=ctx.output(node),
           blocksize=int(node.attrs["factor"]), mode="CRD")
