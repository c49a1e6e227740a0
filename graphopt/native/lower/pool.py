"""Pooling and resize -> "pool2d", "adaptive_pool2d", "resize2d" (csrc/rt_pool.cpp); bicubic
resize -> "resample_axis" steps (resample.py); 3-D max / avg pooling -> "pool3d"
(csrc/rt_volume.cpp).

The kernels work on [planes, H, W]: every leading dim folds into planes and 1-D ops use H = 1.
"""

from __future__ import annotations

from graphopt.ir.dtypes import DType
from graphopt.native.codes import DTYPE_CODES
from graphopt.native.lower import blocked
from graphopt.native.lower._common import require_float32
from graphopt.native.lower.resample import bicubic_taps, resample_axes
from graphopt.native.refs import numel
from graphopt.ops.registry import register_lowering


def _spatial(value, n: int) -> list[int]:
    value = list(value)
    return value * n if len(value) == 1 else value


def _planes(ctx, n: int):
    x_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    if n not in (1, 2):
        ctx.unsupported(f"{n}-d {ctx.node.op} has no native kernel")
    planes = numel(x_shape[: len(x_shape) - n])
    in_sp, out_sp = list(x_shape[-n:]), list(out_shape[-n:])
    if n == 1:
        in_sp, out_sp = [1] + in_sp, [1] + out_sp
    return planes, in_sp, out_sp


def _pool(ctx, avg: bool) -> None:
    # Max pooling of u8 / i8 codes (static int8 graphs) runs in float32: max commutes with the
    # exact conversion, so cast -> pool -> cast gives the integer result.
    codes = not avg and ctx.in_dtype(0) in (DType.uint8, DType.int8) and \
        ctx.out_dtype(0) == ctx.in_dtype(0)
    if not codes:
        require_float32(ctx, 0)
    a = ctx.attrs
    n = len(a["kernel"])
    kernel = list(a["kernel"])
    stride = _spatial(a["stride"] or kernel, n)
    pad = _spatial(a["padding"], n)
    dil = _spatial(a.get("dilation", (1,)), n)
    if n == 3 and not codes:
        _pool3d(ctx, avg, kernel, stride, pad, dil)
        return
    planes, in_sp, out_sp = _planes(ctx, n)
    if n == 1:
        kernel, stride, pad, dil = [1] + kernel, [1] + stride, [0] + pad, [1] + dil
    elif not avg and not codes and blocked.lower_max_pool(ctx, kernel, stride, pad, dil):
        return
    x = ctx.cast(0, DType.float32) if codes else ctx.contiguous(0)
    out = ctx.temp(ctx.out_shape(0), DType.float32, "pooled") if codes else ctx.output(0)
    count_include_pad = int(a.get("count_include_pad", True))
    divisor = a.get("divisor_override") or 0
    ctx.emit("pool2d", [out, x], [int(avg), planes, *in_sp, *out_sp, *kernel, *stride, *pad,
                                  *dil, count_include_pad, divisor])
    if codes:
        result = ctx.output(0)
        ctx.emit("cast", [result, out], [DTYPE_CODES[DType.float32],
                                         DTYPE_CODES[ctx.in_dtype(0)], out.numel])


def _pool3d(ctx, avg: bool, kernel, stride, pad, dil) -> None:
    """Volumetric pooling: "pool3d" (csrc/rt_volume.cpp), direct loops."""
    x_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    out = ctx.output(0)
    if out.numel == 0:
        return
    a = ctx.attrs
    ctx.emit("pool3d", [out, ctx.contiguous(0)],
             [int(avg), numel(x_shape[:-3]), *x_shape[-3:], *out_shape[-3:], *kernel, *stride,
              *pad, *dil, int(a.get("count_include_pad", True)),
              a.get("divisor_override") or 0])


@register_lowering("native", "max_pool")
@blocked.reads_blocked_layout(blocked.max_pool_reads)
def lower_max_pool(ctx) -> None:
    _pool(ctx, avg=False)


@register_lowering("native", "avg_pool")
def lower_avg_pool(ctx) -> None:
    _pool(ctx, avg=True)


def _adaptive(ctx, avg: bool) -> None:
    require_float32(ctx, 0)
    if avg and blocked.lower_global_avg_pool(ctx):
        return
    planes, in_sp, out_sp = _planes(ctx, len(ctx.attrs["output_size"]))
    x = ctx.contiguous(0)
    out = ctx.output(0)
    ctx.emit("adaptive_pool2d", [out, x], [int(avg), planes, *in_sp, *out_sp])


@register_lowering("native", "adaptive_avg_pool")
@blocked.reads_blocked_layout(blocked.global_pool_reads)
def lower_adaptive_avg_pool(ctx) -> None:
    _adaptive(ctx, avg=True)


@register_lowering("native", "adaptive_max_pool")
def lower_adaptive_max_pool(ctx) -> None:
    _adaptive(ctx, avg=False)


_RESIZE_MODES = {"nearest": 0, "linear": 1, "bilinear": 1, "nearest-exact": 2}


@register_lowering("native", "resize")
def lower_resize(ctx) -> None:
    require_float32(ctx, 0)
    a = ctx.attrs
    mode = _RESIZE_MODES.get(a["mode"])
    if mode is None and a["mode"] != "bicubic":
        ctx.unsupported(f"resize mode '{a['mode']}' has no native kernel")
    n = len(a["size"])
    planes, in_sp, out_sp = _planes(ctx, n)
    scales = list(a["scales"]) if a["scales"] is not None else [None] * n
    if n == 1:
        scales = [None] + scales
    align = bool(a["align_corners"]) if mode in (1, None) else False
    ratios = []
    for size_in, size_out, scale in zip(in_sp, out_sp, scales):
        # torch's area_pixel_compute_scale: the source-index ratio.
        if align:
            ratios.append((size_in - 1) / (size_out - 1) if size_out > 1 else 0.0)
        elif scale is not None and scale > 0:
            ratios.append(1.0 / scale)
        else:
            ratios.append(size_in / size_out)
    if mode is None:  # bicubic: separable 4-tap stages ("resample_axis")
        _bicubic(ctx, in_sp, out_sp, ratios, align)
        return
    x = ctx.contiguous(0)
    out = ctx.output(0)
    ctx.emit("resize2d", [out, x], [mode, planes, *in_sp, *out_sp, int(align)], ratios)


def _bicubic(ctx, in_sp, out_sp, ratios, align: bool) -> None:
    if len(ctx.attrs["size"]) != 2:
        ctx.unsupported(f"bicubic resize of {len(ctx.attrs['size'])} spatial dims (torch: 2)")
    shape = list(ctx.in_shape(0))
    lead = len(shape) - 2
    sizes = list(ctx.out_shape(0))
    stages = [(lead + i, *bicubic_taps(in_sp[i], out_sp[i], ratios[i], align))
              for i in range(2) if in_sp[i] != out_sp[i] or ratios[i] != 1.0]
    out = ctx.output(0)
    if out.numel == 0:
        return
    if not stages:
        ctx.copy(out, ctx.ref(0))
        return
    resample_axes(ctx, ctx.contiguous(0), out, shape, sizes, stages, DType.float32)
