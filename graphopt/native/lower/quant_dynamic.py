"""Quantization at run time -> "dynamic_quantize_linear" (csrc/rt_quantize.cpp), and the ops
built on it or on the static steps:

* ``dynamic_quantize_linear`` (ONNX DynamicQuantizeLinear): q, scale, zero point of a tensor
  over its own range, the rule the dynamic int8 GEMM uses;
* ``requantize_linear``: "dequantize_linear" then "quantize_linear" through a float32 temporary
  (the reference's arithmetic, step for step);
* ``qconv_dynamic``: "dynamic_quantize_linear" of the input, then the static "qconv2d" reading
  that scale and zero point at run time; a residual is added after the convolution and the
  activation applied after it (qconv2d's epilogue has no residual).
"""

from __future__ import annotations

from graphopt.ir.dtypes import DType
from graphopt.native.codes import BINARY_CODES, DTYPE_CODES, UNARY_CODES
from graphopt.native.lower._common import activation
from graphopt.native.lower.conv import _conv_params
from graphopt.native.lower.quant import _require, emit_qconv
from graphopt.ops.registry import register_lowering

_INT8 = (DType.uint8, DType.int8)


@register_lowering("native", "dynamic_quantize_linear")
def lower_dynamic_quantize_linear(ctx) -> None:
    _require(ctx, 0, DType.float32, "input x")
    x = ctx.contiguous(0)
    q, scale, zp = ctx.output(0), ctx.output(1), ctx.output(2)
    ctx.emit("dynamic_quantize_linear", [q, scale, zp, x], [x.numel])


@register_lowering("native", "requantize_linear")
def lower_requantize_linear(ctx) -> None:
    in_dtype, out_dtype = ctx.in_dtype(0), ctx.out_dtype(0)
    if in_dtype not in _INT8 or out_dtype not in _INT8:
        ctx.unsupported(f"requantize_linear {in_dtype} -> {out_dtype}")
    q = ctx.contiguous(0)
    real = ctx.temp(q.shape, DType.float32, "real")
    in_zp = ctx.contiguous(2) if ctx.has(2) else None
    out_zp = ctx.contiguous(4) if ctx.has(4) else None
    ctx.emit("dequantize_linear", [real, q, ctx.contiguous(1), in_zp],
             [q.numel, DTYPE_CODES[in_dtype], 1, 1])
    ctx.emit("quantize_linear", [ctx.output(0), real, ctx.contiguous(3), out_zp],
             [q.numel, DTYPE_CODES[out_dtype], 1, 1])


@register_lowering("native", "qconv_dynamic")
def lower_qconv_dynamic(ctx) -> None:
    _require(ctx, 0, DType.float32, "input x")
    _require(ctx, 1, DType.int8, "weight w_q")
    for slot, what in ((2, "w_scale"), (3, "bias"), (4, "residual")):
        _require(ctx, slot, DType.float32, what)
    if ctx.const(1) is None:
        ctx.unsupported("the int8 weight of qconv_dynamic is not a constant")
    if len(ctx.in_shape(0)) != 4:
        ctx.unsupported("qconv_dynamic has a native kernel for 2-D (NCHW) convolutions only")
    params = _conv_params(ctx, w_slot=1)
    x = ctx.contiguous(0)
    q = ctx.temp(x.shape, DType.uint8, "q")
    x_scale = ctx.temp((), DType.float32, "scale")
    x_zp = ctx.temp((), DType.uint8, "zp")
    ctx.emit("dynamic_quantize_linear", [q, x_scale, x_zp, x], [x.numel])
    a = ctx.attrs
    act = activation(ctx, a["activation"], a["activation_params"])
    out = ctx.output(0)
    if not ctx.has(4):
        emit_qconv(ctx, out, q, ctx.contiguous(1), ctx.contiguous(2), ctx.contiguous(3), params,
                   act, x_scale, x_zp)
        return
    emit_qconv(ctx, out, q, ctx.contiguous(1), ctx.contiguous(2), ctx.contiguous(3), params,
               activation(ctx, "none"), x_scale, x_zp)
    residual = ctx.contiguous(4)
    n = out.numel
    ctx.emit("binary", [out, out, residual], [BINARY_CODES["add"], DTYPE_CODES[DType.float32],
                                             1, n, 1, 1])
    if a["activation"] != "none":
        ints, floats = _activation_as_unary(ctx, a["activation"], a["activation_params"], n)
        ctx.emit("unary", [out, out], ints, floats)


def _activation_as_unary(ctx, name: str, params, count: int):
    """An epilogue activation (graphopt/ops/fused.py ACTIVATIONS; each is also a "unary" op of
    the same name) as the ints and floats of a "unary" step."""
    if name not in UNARY_CODES:
        ctx.unsupported(f"activation '{name}' after a residual")
    p = [float(v) for v in params]
    if name == "clamp":
        p = [-float("inf") if params[0] is None else params[0],
             float("inf") if params[1] is None else params[1]]
    return [UNARY_CODES[name], DTYPE_CODES[DType.float32], count], p
