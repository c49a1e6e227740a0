"""Quantized linear layers -> the int8 GEMM ("qlinear", csrc/rt_qlinear.cpp) and the
weight-only kernel ("linear_wo", csrc/rt_wo.cpp).

* ``qlinear_dynamic(x, w_q, w_scale, bias?, residual?){activation}``: the kernel quantizes x
  per tensor (ONNX DynamicQuantizeLinear, over all rows of the call: a ``[B, S, K]`` input is
  one ``[B*S, K]`` matrix), multiplies by the int8 weight packed at plan build, and runs the
  f32 epilogue; results equal the op's reference up to the float rounding of its last steps.
* ``linear_weight_only(x, w_q, scales, bias?, residual?){bits, block_size, k}``: the codes stay
  int4 / int8 in the plan's constants and are decoded inside the kernel.
* ``quantize_linear`` / ``dequantize_linear`` (per tensor or per channel) -> the
  "quantize_linear" / "dequantize_linear" steps (csrc/rt_quantize.cpp), bit-identical to the
  references: a static graph's float boundaries stay native.
* static ``qlinear`` / ``qconv(x_q, x_scale, x_zp, w_q, w_scale, bias?, y_scale?, y_zp?)``
  (graphopt/ops/quant_int.py): u8 inputs with their scale / zero point, the same int8 GEMM
  ("qlinear") or its NCHW convolution ("qconv2d"), f32 result or requantized u8 with
  ``y_scale``.

The weight must be a plan constant; other operands (scales, bias) are read at run time.
:func:`emit_qlinear` is the int8 GEMM's whole contract, for other quantized ops (the static
``qlinear`` / ``qconv`` of docs/native.md) to reuse.
"""

from __future__ import annotations

from graphopt.ir.dtypes import DType
from graphopt.native.lower._common import activation
from graphopt.native.codes import DTYPE_CODES
from graphopt.native.lower.conv import _conv_params
from graphopt.native.refs import numel
from graphopt.ops.registry import register_lowering


def _x_matrix(ctx, slot: int = 0, contiguous_cols: bool = False):
    """Input ``slot`` as (ref, rows, cols, row stride, col stride), copied when its leading dims
    do not collapse into rows (or, with ``contiguous_cols``, when its columns are strided)."""
    x = ctx.ref(slot)
    mat = x.matrix()
    if mat is None or (contiguous_cols and mat[3] != 1):
        x = ctx.contiguous(slot)
        mat = x.matrix()
    return (x, *mat)


def _require(ctx, slot: int, dtype: DType, what: str) -> None:
    if ctx.has(slot) and ctx.in_dtype(slot) != dtype:
        ctx.unsupported(f"{what} is {ctx.in_dtype(slot)}, the native kernel needs {dtype}")


def emit_qlinear(ctx, out, x, x_mat, w, w_scale, bias=None, residual=None, act=(0, 0.0, 0.0),
                 x_scale=None, x_zp=None, y_scale=None, y_zp=None, in_place=False,
                 per_row=False) -> None:
    """Emits one "qlinear" step: ``out[M, N] = epilogue((x_q - x_zp) @ w^T)``.

    Args:
        out: f32 ``[M, N]`` output (u8 when ``y_scale`` is given: requantized).
        x, x_mat: the activation view and its ``(rows, cols, row_stride, col_stride)``; f32
            (dynamic: quantized in the kernel) or u8 (static: ``x_scale`` f32 [] and ``x_zp``
            u8 [] given).
        w: i8 ``[N, K]`` plan constant (any strides); w_scale: f32 ``[N]``.
        bias: f32 ``[N]`` or None; residual: contiguous f32 ``[M, N]`` or None (f32 output
            only; ``in_place``: ``out`` is the residual's buffer).
        act: ``(code, p0, p1)`` from ``_common.activation``.
        per_row: dynamic only: quantize every row of x with its own scale / zero point.
    """
    m, k, x_rs, x_cs = x_mat
    n = w.shape[0]
    static = x_scale is not None
    code, p0, p1 = act
    ctx.emit("qlinear", [out, x, w, w_scale, bias, residual, x_scale, x_zp, y_scale, y_zp],
             [m, n, k, x_rs, x_cs, w.strides[0], w.strides[1], int(static), code,
              int(in_place), int(per_row)],
             [p0, p1])


def emit_qconv(ctx, out, x, w, w_scale, bias, params, act=(0, 0.0, 0.0), x_scale=None,
               x_zp=None, y_scale=None, y_zp=None) -> None:
    """Emits one "qconv2d" step: static int8 NCHW convolution (see docs/native.md).

    Args:
        out: f32 ``[N, Co, Ho, Wo]`` (u8 with ``y_scale``); x: contiguous u8 ``[N, C, H, W]``;
        w: contiguous i8 ``[Co, C/g, kh, kw]`` plan constant; w_scale / bias: f32 ``[Co]``;
        params: ``[N, C, H, W, Co, kh, kw, stride_h, stride_w, pad_top, pad_left, dil_h,
        dil_w, groups, Ho, Wo]``; x_scale f32 [] (required), x_zp / y_scale / y_zp scalars.
    """
    code, p0, p1 = act
    ctx.emit("qconv2d", [out, x, w, w_scale, bias, None, x_scale, x_zp, y_scale, y_zp],
             [*params, code], [p0, p1])


@register_lowering("native", "qlinear_dynamic")
def lower_qlinear_dynamic(ctx) -> None:
    _require(ctx, 0, DType.float32, "input x")
    _require(ctx, 1, DType.int8, "weight w_q")
    for slot, what in ((2, "w_scale"), (3, "bias"), (4, "residual")):
        _require(ctx, slot, DType.float32, what)
    if ctx.const(1) is None:
        ctx.unsupported("the int8 weight is not a constant")
    x, *mat = _x_matrix(ctx)
    w = ctx.ref(1)
    bias = ctx.contiguous(3)
    residual = ctx.contiguous(4)
    attrs = ctx.attrs
    act = activation(ctx, attrs.get("activation", "none"), attrs.get("activation_params", ()))
    per_row = bool(attrs.get("per_token", False))
    shared = None if per_row else _shared_quantized_input(ctx)
    out = ctx.output(0, inplace=(4,) if residual is not None else ())
    in_place = residual is not None and out.buffer is residual.buffer and \
        out.offset == residual.offset
    if shared is not None:
        q, x_scale, x_zp = shared
        try:
            emit_qlinear(ctx, out, q, (mat[0], mat[1], mat[1], 1), w, ctx.contiguous(2), bias,
                         residual, act, x_scale=x_scale, x_zp=x_zp, in_place=in_place)
        except BaseException:  # the node is rolled back, its quantize step with it
            ctx.builder.quantized_inputs.pop(id(ctx.node.inputs[0]), None)
            raise
        return
    emit_qlinear(ctx, out, x, mat, w, ctx.contiguous(2), bias, residual, act,
                 in_place=in_place, per_row=per_row)


def _shared_quantized_input(ctx):
    """``(q, scale, zero point)`` of this node's input when several per-tensor
    ``qlinear_dynamic`` nodes read it (attention's Q, K and V projections): the first of them
    quantizes it once ("dynamic_quantize_linear", the rule the kernel applies inside) and every
    one runs the static kernel on the codes, which gives the same bits as quantizing in each.
    None for an input read by one such node."""
    x_value = ctx.node.inputs[0]
    # op-name check: sharing is between nodes of this very lowering's op (same kernel contract)
    readers = {id(node) for node, slot in x_value.uses
               if node.op == "qlinear_dynamic" and slot == 0
               and not node.attrs.get("per_token", False)}
    if len(readers) < 2:
        return None
    memo = ctx.builder.quantized_inputs
    if id(x_value) not in memo:
        x = ctx.contiguous(0)
        q = ctx.temp(x.shape, DType.uint8, "q")
        scale = ctx.temp((), DType.float32, "scale")
        zp = ctx.temp((), DType.uint8, "zp")
        ctx.emit("dynamic_quantize_linear", [q, scale, zp, x], [x.numel])
        memo[id(x_value)] = (q, scale, zp)
    return memo[id(x_value)]


@register_lowering("native", "linear_weight_only")
def lower_linear_weight_only(ctx) -> None:
    _require(ctx, 0, DType.float32, "input x")
    for slot, what in ((2, "scales"), (3, "bias"), (4, "residual")):
        _require(ctx, slot, DType.float32, what)
    attrs = ctx.attrs
    bits, block, k = attrs["bits"], attrs["block_size"], attrs["k"]
    if bits not in (4, 8):
        ctx.unsupported(f"bits={bits}: the native weight-only kernel handles 4 and 8")
    if block <= 0 or (bits == 4 and block % 2):
        ctx.unsupported(f"block_size={block} (4-bit blocks must hold whole bytes)")
    n, blocks, blob = ctx.in_shape(1)
    if blob * 8 != block * bits or blocks * block < k:
        ctx.unsupported(f"codes [{n}, {blocks}, {blob}] do not match bits={bits}, "
                        f"block_size={block}, k={k}")
    x, rows, cols, x_rs, _ = _x_matrix(ctx, contiguous_cols=True)
    codes, scales = ctx.contiguous(1), ctx.contiguous(2)
    bias, residual = ctx.contiguous(3), ctx.contiguous(4)
    code, p0, p1 = activation(ctx, attrs.get("activation", "none"),
                              attrs.get("activation_params", ()))
    out = ctx.output(0, inplace=(4,) if residual is not None else ())
    in_place = residual is not None and out.buffer is residual.buffer and \
        out.offset == residual.offset
    act_bits = attrs.get("act_bits", 0)
    if act_bits not in (0, 8):
        ctx.unsupported(f"act_bits={act_bits}: the native weight-only kernel takes 0 or 8")
    ctx.emit("linear_wo", [out, x, codes, scales, bias, residual],
             [rows, n, cols, x_rs, bits, block, code, int(in_place), act_bits], [p0, p1])


def _static_operands(ctx, op: str):
    """Checks a static qlinear / qconv's operand dtypes; returns (act, x_scale, x_zp, y_scale,
    y_zp) refs for the kernel."""
    _require(ctx, 0, DType.uint8, "input x_q")
    _require(ctx, 1, DType.float32, "x_scale")
    _require(ctx, 2, DType.uint8, "x_zp")
    _require(ctx, 3, DType.int8, "weight w_q")
    for slot, what in ((4, "w_scale"), (5, "bias"), (6, "y_scale")):
        _require(ctx, slot, DType.float32, what)
    _require(ctx, 7, DType.uint8, "y_zp")
    if ctx.const(3) is None:
        ctx.unsupported(f"the int8 weight of {op} is not a constant")
    attrs = ctx.attrs
    act = activation(ctx, attrs.get("activation", "none"), attrs.get("activation_params", ()))
    y_scale = ctx.contiguous(6) if ctx.has(6) else None
    y_zp = ctx.contiguous(7) if ctx.has(7) else None
    return act, ctx.contiguous(1), ctx.contiguous(2), y_scale, y_zp


@register_lowering("native", "qlinear")
def lower_qlinear(ctx) -> None:
    act, x_scale, x_zp, y_scale, y_zp = _static_operands(ctx, "qlinear")
    x, *mat = _x_matrix(ctx)
    emit_qlinear(ctx, ctx.output(0), x, mat, ctx.ref(3), ctx.contiguous(4), ctx.contiguous(5),
                 act=act, x_scale=x_scale, x_zp=x_zp, y_scale=y_scale, y_zp=y_zp)


@register_lowering("native", "qconv")
def lower_qconv(ctx) -> None:
    act, x_scale, x_zp, y_scale, y_zp = _static_operands(ctx, "qconv")
    if len(ctx.in_shape(0)) != 4:
        ctx.unsupported("qconv has a native kernel for 2-D (NCHW) convolutions only")
    params = _conv_params(ctx, w_slot=3)
    emit_qconv(ctx, ctx.output(0), ctx.contiguous(0), ctx.contiguous(3), ctx.contiguous(4),
               ctx.contiguous(5), params, act, x_scale, x_zp, y_scale, y_zp)


def _channel_layout(ctx, axis, scale_slot: int = 1) -> tuple[int, int]:
    """(inner, channels) of a per-axis scale over input 0 (``(1, 1)`` per tensor)."""
    shape = ctx.in_shape(0)
    if axis is None or len(ctx.in_shape(scale_slot)) == 0:
        return 1, 1
    axis %= len(shape)
    return numel(shape[axis + 1:]), shape[axis]


@register_lowering("native", "quantize_linear")
def lower_quantize_linear(ctx) -> None:
    _require(ctx, 0, DType.float32, "input x")
    _require(ctx, 1, DType.float32, "scale")
    out_dtype = ctx.out_dtype(0)
    if out_dtype not in (DType.uint8, DType.int8):
        ctx.unsupported(f"quantize_linear to {out_dtype}: the native kernel makes u8 / i8")
    inner, channels = _channel_layout(ctx, ctx.attrs.get("axis"))
    x = ctx.contiguous(0)
    zp = ctx.contiguous(2) if ctx.has(2) else None
    ctx.emit("quantize_linear", [ctx.output(0), x, ctx.contiguous(1), zp],
             [x.numel, DTYPE_CODES[out_dtype], inner, channels])


@register_lowering("native", "dequantize_linear")
def lower_dequantize_linear(ctx) -> None:
    in_dtype = ctx.in_dtype(0)
    if in_dtype not in (DType.uint8, DType.int8, DType.int32):
        ctx.unsupported(f"dequantize_linear of {in_dtype}: the native kernel reads u8 / i8 / i32")
    _require(ctx, 1, DType.float32, "scale")
    if ctx.out_dtype(0) != DType.float32:
        ctx.unsupported(f"dequantize_linear to {ctx.out_dtype(0)}: the native kernel makes f32")
    inner, channels = _channel_layout(ctx, ctx.attrs.get("axis"))
    q = ctx.contiguous(0)
    zp = ctx.contiguous(2) if ctx.has(2) else None
    ctx.emit("dequantize_linear", [ctx.output(0), q, ctx.contiguous(1), zp],
             [q.numel, DTYPE_CODES[in_dtype], inner, channels])
