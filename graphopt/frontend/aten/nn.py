"""Converters for linear algebra, convolution, pooling, normalization, attention, resize."""

from __future__ import annotations

from graphopt.errors import GraphoptError
from graphopt.frontend.torch_export import converter


@converter("aten.linear.default")
def _linear(ctx, x, weight, bias=None):
    return ctx.emit("linear", [x, weight, bias])


@converter("aten.matmul.default", "aten.mm.default", "aten.bmm.default")
def _matmul(ctx, a, b):
    return ctx.emit("matmul", [a, b])


@converter("aten.addmm.default", "aten.baddbmm.default", "aten.addbmm.default")
def _addmm(ctx, bias, a, b, *, beta=1, alpha=1):
    # addmm is bias*beta + (a@b)*alpha; kept as matmul + add so matmul-add fusion sees it.
    if "addbmm" in str(ctx.fx_node.target) and "baddbmm" not in str(ctx.fx_node.target):
        raise GraphoptError("addbmm (sum over batches) is not supported; use bmm + sum")
    product = ctx.emit("matmul", [a, b])
    if alpha != 1:
        product = ctx.emit("mul", [product, ctx.as_value(alpha, product)])
    if beta == 0:
        return product
    if beta != 1:
        bias = ctx.emit("mul", [bias, ctx.as_value(beta, bias)])
    return ctx.emit("add", [product, bias])


def _conv(ctx, x, weight, bias, stride, padding, dilation, groups, transposed=False,
          output_padding=(0,)):
    n = x.type.rank - 2
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * n
        else:  # 'same': torch pads asymmetrically when the total is odd -> explicit pad op
            total = [dilation[i if len(dilation) > 1 else 0] * (weight.shape[2 + i] - 1)
                     for i in range(n)]
            lo = [t // 2 for t in total]
            hi = [t - t // 2 for t in total]
            if lo != hi:
                pads = []
                for i in reversed(range(n)):
                    pads += [lo[i], hi[i]]
                x = ctx.emit("pad", [x], {"pads": tuple(pads)})
                lo = [0] * n
            padding = tuple(lo)
    attrs = {"stride": tuple(stride), "padding": tuple(padding), "dilation": tuple(dilation),
             "groups": groups}
    if transposed:
        attrs["output_padding"] = tuple(output_padding)
        return ctx.emit("conv_transpose", [x, weight, bias], attrs)
    return ctx.emit("conv", [x, weight, bias], attrs)


@converter("aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default",
           "aten.conv1d.padding", "aten.conv2d.padding", "aten.conv3d.padding")
def _convnd(ctx, x, weight, bias=None, stride=(1,), padding=(0,), dilation=(1,), groups=1):
    return _conv(ctx, x, weight, bias, stride, padding, dilation, groups)


@converter("aten.convolution.default")
def _convolution(ctx, x, weight, bias, stride, padding, dilation, transposed, output_padding,
                 groups):
    return _conv(ctx, x, weight, bias, stride, padding, dilation, groups, transposed,
                 output_padding)


@converter("aten.conv_transpose1d.default", "aten.conv_transpose2d.input",
           "aten.conv_transpose3d.input")
def _conv_transpose(ctx, x, weight, bias=None, stride=(1,), padding=(0,), output_padding=(0,),
                    groups=1, dilation=(1,)):
    return _conv(ctx, x, weight, bias, stride, padding, dilation, groups, True, output_padding)


def _max_pool(ctx, x, kernel_size, stride=(), padding=(0,), dilation=(1,), ceil_mode=False):
    n = len(kernel_size)
    return ctx.emit("max_pool", [x], {
        "kernel": tuple(kernel_size) * (1 if len(kernel_size) > 1 else n),
        "stride": tuple(stride) if stride else tuple(kernel_size), "padding": tuple(padding),
        "dilation": tuple(dilation), "ceil_mode": bool(ceil_mode)})


for _n in (1, 2, 3):
    converter(f"aten.max_pool{_n}d.default")(_max_pool)


@converter("aten.max_pool2d_with_indices.default", "aten.max_pool3d_with_indices.default")
def _max_pool_with_indices(ctx, *args, **kwargs):
    return (_max_pool(ctx, *args, **kwargs), None)


def _avg_pool(ctx, x, kernel_size, stride=(), padding=(0,), ceil_mode=False,
              count_include_pad=True, divisor_override=None):
    return ctx.emit("avg_pool", [x], {
        "kernel": tuple(kernel_size), "stride": tuple(stride) if stride else tuple(kernel_size),
        "padding": tuple(padding), "ceil_mode": bool(ceil_mode),
        "count_include_pad": bool(count_include_pad), "divisor_override": divisor_override})


for _n in (1, 2, 3):
    converter(f"aten.avg_pool{_n}d.default")(_avg_pool)


def _adaptive(op):
    def convert(ctx, x, output_size):
        return ctx.emit(op, [x], {"output_size": tuple(output_size)})

    return convert


for _n in (1, 2, 3):
    converter(f"aten.adaptive_avg_pool{_n}d.default",
              f"aten._adaptive_avg_pool{_n}d.default")(_adaptive("adaptive_avg_pool"))


@converter("aten.adaptive_max_pool1d.default", "aten.adaptive_max_pool2d.default",
           "aten.adaptive_max_pool3d.default")
def _adaptive_max(ctx, x, output_size):
    return (ctx.emit("adaptive_max_pool", [x], {"output_size": tuple(output_size)}), None)


@converter("aten.layer_norm.default")
def _layer_norm(ctx, x, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    return ctx.emit("layer_norm", [x, weight, bias],
                    {"normalized_shape": tuple(normalized_shape), "eps": float(eps)})


@converter("aten.native_layer_norm.default")
def _native_layer_norm(ctx, x, normalized_shape, weight, bias, eps):
    return (_layer_norm(ctx, x, normalized_shape, weight, bias, eps), None, None)


@converter("aten._native_batch_norm_legit_no_training.default")
def _batch_norm_no_training(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
    out = ctx.emit("batch_norm", [x, running_mean, running_var, weight, bias], {"eps": float(eps)})
    return (out, None, None)


@converter("aten.batch_norm.default")
def _batch_norm(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps,
                cudnn_enabled=True):
    if training or running_mean is None:
        raise GraphoptError("batch_norm in training mode (batch statistics); call model.eval()")
    return ctx.emit("batch_norm", [x, running_mean, running_var, weight, bias], {"eps": float(eps)})


@converter("aten._native_batch_norm_legit_functional.default",
           "aten._native_batch_norm_legit.default")
def _batch_norm_training(ctx, *args, **kwargs):
    raise GraphoptError("batch_norm in training mode (batch statistics); call model.eval() "
                        "before graphopt.trace")


@converter("aten.group_norm.default")
def _group_norm(ctx, x, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
    return ctx.emit("group_norm", [x, weight, bias], {"groups": int(num_groups), "eps": float(eps)})


@converter("aten.native_group_norm.default")
def _native_group_norm(ctx, x, weight, bias, n, c, hw, group, eps):
    return (_group_norm(ctx, x, group, weight, bias, eps), None, None)


@converter("aten.instance_norm.default")
def _instance_norm(ctx, x, weight, bias, running_mean, running_var, use_input_stats, momentum,
                   eps, cudnn_enabled=True):
    if not use_input_stats:
        return ctx.emit("batch_norm", [x, running_mean, running_var, weight, bias],
                        {"eps": float(eps)})
    return ctx.emit("group_norm", [x, weight, bias], {"groups": int(x.shape[1]),
                                                      "eps": float(eps)})


@converter("aten.scaled_dot_product_attention.default")
def _sdpa(ctx, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None,
          enable_gqa=False):
    if dropout_p:
        raise GraphoptError("attention dropout_p > 0 is random; trace the model in eval mode")
    return ctx.emit("attention", [q, k, v, attn_mask], {
        "scale": None if scale is None else float(scale), "is_causal": bool(is_causal),
        "enable_gqa": bool(enable_gqa)})


def _resize(mode):
    def convert(ctx, x, output_size=None, *rest, **kwargs):
        align = None
        scales = kwargs.get("scale_factors")
        if mode != "nearest":
            align = rest[0] if rest else kwargs.get("align_corners", False)
            scales = rest[1] if len(rest) > 1 else scales
        elif rest:
            scales = rest[0]
        size = ctx.meta_type().shape[2:]
        return ctx.emit("resize", [x], {"size": tuple(size), "mode": mode,
                                        "align_corners": align,
                                        "scales": None if scales is None else tuple(scales)})

    return convert


for _aten, _mode in {"upsample_nearest1d": "nearest", "upsample_nearest2d": "nearest",
                     "upsample_nearest3d": "nearest", "upsample_linear1d": "linear",
                     "upsample_bilinear2d": "bilinear", "upsample_trilinear3d": "trilinear",
                     "upsample_bicubic2d": "bicubic"}.items():
    converter(f"aten.{_aten}.vec", f"aten.{_aten}.default")(_resize(_mode))


@converter("aten.pixel_shuffle.default")
def _pixel_shuffle(ctx, x, upscale_factor):
    return ctx.emit("pixel_shuffle", [x], {"factor": int(upscale_factor)})
