"""ONNX lowerings of the quantization ops (graphopt/ops/quant.py).

``qlinear_dynamic`` lowers, with contrib ops, to one ``com.microsoft.DynamicQuantizeMatMul``
(quantize A to u8, u8 x s8 GEMM with int32 accumulation, per-column B scale, bias) — measured
the fastest of the int8 forms onnxruntime 1.32 runs on AVX2 (benchmarks/bench_quant.py); the
epilogue (residual add, activation) follows as in ``fused_linear``. Without contrib ops it is
the standard chain DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scale) -> Add(bias).
``per_token`` always takes the standard-op form of ``_per_token_core`` (no contrib op quantizes
A per row).
"""

from __future__ import annotations

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.onnx import int8_weights
from graphopt.onnx._common import MICROSOFT
from graphopt.onnx.export import TO_ONNX_DTYPE
from graphopt.onnx.lower_fused import _epilogue
from graphopt.ops.registry import register_lowering


@register_lowering("onnx", "quantize_linear")
def _quantize_linear(ctx, node):
    args = [ctx.input(node, 0), ctx.input(node, 1)]
    if node.inputs[2] is not None:
        args.append(ctx.input(node, 2))
    else:  # the zero point's dtype selects the output type
        dt = DType.parse(node.attrs["dtype"])
        args.append(ctx.const(np.zeros((), dt.numpy), dt, "zp"))
    axis = node.attrs["axis"]
    ctx.op("QuantizeLinear", args, out=ctx.output(node), axis=axis)


@register_lowering("onnx", "dequantize_linear")
def _dequantize_linear(ctx, node):
    """An int8 constant (a QDQ weight onnxruntime fuses into its integer kernels) takes the
    lowering's int8 encoding: as u8 ``codes + 128`` with zero point ``zp + 128``."""
    args = [ctx.input(node, i) for i in range(3)]
    codes, scale, zp = node.inputs[0], node.inputs[1], node.inputs[2]
    if (ctx.int8_weights == "u8" and codes.kind == "const" and codes.dtype is DType.int8
            and (zp is None or zp.kind == "const") and scale.type.is_static):
        shape = tuple(int(d) for d in scale.shape)
        args = [int8_weights.weight(ctx, codes.data, codes.name), args[1],
                int8_weights.shifted_zero_point(ctx, None if zp is None else zp.data, shape,
                                                f"{codes.name}_zp")]
    while args[-1] == "":
        args.pop()
    ctx.op("DequantizeLinear", args, out=ctx.output(node), axis=node.attrs["axis"])


@register_lowering("onnx", "dynamic_quantize_linear")
def _dynamic_quantize_linear(ctx, node):
    outs = [ctx.output(node, i) for i in range(3)]
    ctx.op("DynamicQuantizeLinear", [ctx.input(node, 0)], outs=outs)


def _weight_t(ctx, node) -> str:
    w = node.inputs[1]
    if w.kind != "const":
        raise ctx.fail("qlinear_dynamic needs a constant weight")
    return int8_weights.weight(ctx, np.ascontiguousarray(w.data.T), f"{w.name}_t")


@register_lowering("onnx", "qlinear_dynamic")
def _qlinear_dynamic(ctx, node):
    has_bias = node.inputs[3] is not None
    residual = [ctx.input(node, 4)] if len(node.inputs) > 4 and node.inputs[4] else []
    w_t = _weight_t(ctx, node)
    scale = ctx.input(node, 2)
    n_out = int(node.inputs[1].shape[0])

    def core(out):
        if node.attrs.get("per_token"):
            return _per_token_core(ctx, node, w_t, scale, out)
        if ctx.contrib:
            zp = int8_weights.zero_point(ctx, (n_out,))
            args = [ctx.input(node, 0), w_t, scale, zp] + ([ctx.input(node, 3)] if has_bias else [])
            return ctx.op("DynamicQuantizeMatMul", args, out=out, domain=MICROSOFT)
        xq, xs, xzp = ctx.op("DynamicQuantizeLinear", [ctx.input(node, 0)], outs=3)
        acc = int8_weights.matmul_integer(ctx, xq, xzp, w_t, n_out)
        y = ctx.op("Cast", [acc], to=TO_ONNX_DTYPE[DType.float32])
        combined = ctx.op("Mul", [xs, scale])
        if not has_bias:
            return ctx.op("Mul", [y, combined], out=out)
        return ctx.op("Add", [ctx.op("Mul", [y, combined]), ctx.input(node, 3)], out=out)

    _epilogue(ctx, node, core, residual)


def _row_reduce(ctx, op: str, x: str) -> str:
    if ctx.opset >= 18:
        return ctx.op(op, [x, ctx.ints([-1])], keepdims=1)
    return ctx.op(op, [x], axes=[-1], keepdims=1)


def _per_token_core(ctx, node, w_t: str, w_scale: str, out: str) -> str:
    """``qlinear_dynamic{per_token}`` in standard ops: DynamicQuantizeLinear's rule per row, then
    MatMulInteger. onnxruntime's MatMulInteger takes a scalar A zero point only, so A goes in
    with zero point 0 and the per-row correction ``zp[m] * colsum(w_q)[n]`` is subtracted in
    int32: the result is the exact ``(x_q - zp) @ w_q`` of the reference, as are the f32 steps
    (same divisions, round half to even, scale product ``xs * w_scale`` before the multiply)."""
    f32 = DType.float32
    x = ctx.input(node, 0)
    zero, one = ctx.scalar(0.0, f32), ctx.scalar(1.0, f32)
    lo = ctx.op("Min", [_row_reduce(ctx, "ReduceMin", x), zero])
    hi = ctx.op("Max", [_row_reduce(ctx, "ReduceMax", x), zero])
    xs = ctx.op("Div", [ctx.op("Sub", [hi, lo]), ctx.scalar(255.0, f32)])
    safe = ctx.op("Where", [ctx.op("Greater", [xs, zero]), xs, one])
    top = ctx.scalar(255.0, f32)
    zp = ctx.op("Clip", [ctx.op("Round", [ctx.op("Div", [ctx.op("Neg", [lo]), safe])]),
                         zero, top])
    xq = ctx.op("Add", [ctx.op("Round", [ctx.op("Div", [x, safe])]), zp])
    xq = ctx.op("Cast", [ctx.op("Clip", [xq, zero, top])], to=TO_ONNX_DTYPE[DType.uint8])
    w_q = node.inputs[1].data.astype(np.int64)
    acc = int8_weights.matmul_integer(ctx, xq, "", w_t, int(w_q.shape[0]))
    colsum = ctx.const(w_q.sum(axis=1).astype(np.int32), DType.int32, "w_colsum")
    zp_i = ctx.op("Cast", [zp], to=TO_ONNX_DTYPE[DType.int32])
    acc = ctx.op("Sub", [acc, ctx.op("Mul", [zp_i, colsum])])
    has_bias = len(node.inputs) > 3 and node.inputs[3] is not None
    combined = ctx.op("Mul", [xs, w_scale])
    y = ctx.op("Mul", [ctx.op("Cast", [acc], to=TO_ONNX_DTYPE[f32]), combined],
               out=None if has_bias else out)
    return ctx.op("Add", [y, ctx.input(node, 3)], out=out) if has_bias else y


@register_lowering("onnx", "linear_weight_only")
def _linear_weight_only(ctx, node):
    """-> ``com.microsoft.MatMulNBits`` (zero point implicit 2**(bits-1)); ``act_bits=0``:
    accuracy_level 0 (f32 products on dequantized blocks); ``act_bits=8``: accuracy_level 4
    (activations int8 per block, integer products: onnxruntime's fast path, the op's act_bits=8
    semantics up to rounding); bias, residual and activation as in ``fused_linear``."""
    if not ctx.contrib:
        raise ctx.fail("linear_weight_only lowers to com.microsoft.MatMulNBits: needs contrib ops")
    w, scales = node.inputs[1], node.inputs[2]
    if w.kind != "const" or scales.kind != "const":
        raise ctx.fail("linear_weight_only needs constant weights and scales")
    adds = [ctx.input(node, i) for i in (3, 4) if len(node.inputs) > i and node.inputs[i]]
    flat_scales = ctx.const(scales.data.reshape(-1), DType.float32, f"{scales.name}_flat")

    def core(out):
        return ctx.op(
            "MatMulNBits", [ctx.input(node, 0), ctx.input(node, 1), flat_scales], out=out,
            domain=MICROSOFT, K=int(node.attrs["k"]), N=int(w.shape[0]),
            bits=int(node.attrs["bits"]), block_size=int(node.attrs["block_size"]),
            accuracy_level=4 if node.attrs.get("act_bits", 0) == 8 else 0,
        )

    _epilogue(ctx, node, core, adds)


@register_lowering("onnx", "linear_bf16")
def _linear_bf16(ctx, node):
    """x rounded to bf16 and back (Cast, Cast), times the bf16 weight widened by a Cast, f32
    MatMul (+ bias); the epilogue as ``fused_linear``. onnxruntime computes it in f32 from the
    same bf16 values (no bf16 GEMM on its CPU provider): the reference's numbers, not its
    speed."""
    w = node.inputs[1]
    if w.kind != "const":
        raise ctx.fail("linear_bf16 needs a constant weight")
    w_t = ctx.const(np.ascontiguousarray(w.data.T), DType.bfloat16, f"{w.name}_t")
    residual = [ctx.input(node, 3)] if len(node.inputs) > 3 and node.inputs[3] else []
    f32, bf16 = TO_ONNX_DTYPE[DType.float32], TO_ONNX_DTYPE[DType.bfloat16]

    def core(out):
        x = ctx.op("Cast", [ctx.op("Cast", [ctx.input(node, 0)], to=bf16)], to=f32)
        w32 = ctx.op("Cast", [w_t], to=f32)
        if len(node.inputs) < 3 or node.inputs[2] is None:
            return ctx.op("MatMul", [x, w32], out=out)
        return ctx.op("Add", [ctx.op("MatMul", [x, w32]), ctx.input(node, 2)], out=out)

    _epilogue(ctx, node, core, residual)
