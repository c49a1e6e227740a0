"""Quantized linear layers -> the int8 GEMM ("qlinear", csrc/rt_qlinear.cpp) and the
weight-only kernel ("linear_wo", csrc/rt_wo.cpp).

* ``qlinear_dynamic(x, w_q, w_scale, bias?, residual?){activation}``: the kernel quantizes x
  per tensor (ONNX DynamicQuantizeLinear, over all rows of the call: a ``[B, S, K]`` input is
  one ``[B*S, K]`` matrix), multiplies by the int8 weight packed at plan build, and runs the
  f32 epilogue; results equal the op's reference up to the float rounding of its last steps.
* ``linear_weight_only(x, w_q, scales, bias?, residual?){bits, block_size, k}``: the codes stay
  int4 / int8 in the plan's constants and are decoded inside the kernel.

The weight must be a plan constant; other operands (scales, bias) are read at run time.
:func:`emit_qlinear` is the int8 GEMM's whole contract, for other quantized ops (the static
``qlinear`` / ``qconv`` of docs/native.md) to reuse.
"""

from __future__ import annotations

from graphopt.ir.dtypes import DType
from graphopt.native.lower._common import activation
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
                 x_scale=None, x_zp=None, y_scale=None, y_zp=None, in_place=False) -> None:
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
    """
    m, k, x_rs, x_cs = x_mat
    n = w.shape[0]
    static = x_scale is not None
    code, p0, p1 = act
    ctx.emit("qlinear", [out, x, w, w_scale, bias, residual, x_scale, x_zp, y_scale, y_zp],
             [m, n, k, x_rs, x_cs, w.strides[0], w.strides[1], int(static), code,
              int(in_place)],
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
    out = ctx.output(0, inplace=(4,) if residual is not None else ())
    in_place = residual is not None and out.buffer is residual.buffer and \
        out.offset == residual.offset
    emit_qlinear(ctx, out, x, mat, w, ctx.contiguous(2), bias, residual, act,
                 in_place=in_place)


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
    ctx.emit("linear_wo", [out, x, codes, scales, bias, residual],
             [rows, n, cols, x_rs, bits, block, code, int(in_place)], [p0, p1])
