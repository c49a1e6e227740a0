"""ONNX lowerings of the integer ops of static quantization (graphopt/ops/quant_int.py).

``qconv`` / ``qlinear`` with a u8 result lower in one of two forms (``set_quant_format`` /
``with quant_format(...)``):

* ``"qlinear"`` (default): the operator form, ``QLinearConv`` and ``com.microsoft.QGemm``
  (int32 bias), when the output's u8 saturation implies the activation (none; relu with
  ``y_zp = 0``; relu6 / clamps covering the u8 range, see ``_activation_implied``). Other
  activations, and QGemm without contrib ops, use the QDQ form.
* ``"qdq"``: the QDQ group onnxruntime fuses into the same kernels::

      DequantizeLinear(x) --+
      DequantizeLinear(w) --+-> Conv / Gemm{transB} -> [activation] -> QuantizeLinear
      DequantizeLinear(b_i32, x_scale * w_scale) -+   (Gemm: the f32 bias as is)

  An activation the u8 saturation implies is not emitted (onnxruntime 1.32 fuses
  Gemm -> Relu -> Q into QGemm only without the Relu); any other stays a float op between the
  Conv and the Q (onnxruntime then runs that group in float). A rank > 2 ``qlinear`` input is
  reshaped to 2-D in u8 around the Gemm.

The int32 bias (in units of ``x_scale * w_scale``) moves the accumulator by at most half a unit,
far below one output LSB. Measured on onnxruntime 1.32 / 2 cores (benchmarks/bench_quant.py,
batch 1): both forms are equal on ResNet-50 (0.41x / 0.40x of fp32) and MobileNetV2 (0.79x /
0.80x); on the small digits CNN the operator form is faster (0.88x vs 0.99x), so it is the
default.

With an f32 result (no ``y_scale``): ``qlinear`` -> ``com.microsoft.MatMulIntegerToFloat``
(without contrib ops: ``MatMulInteger`` -> Cast -> Mul -> Add), exactly the op's formula;
``qconv`` -> DequantizeLinear -> float Conv (onnxruntime's ConvInteger is a slow reference
kernel, 14x slower than the fp32 conv on MobileNetV2; the float conv of the dequantized values
differs from the exact integer sum by f32 rounding only). ``qconv_dynamic``:
DynamicQuantizeLinear -> DequantizeLinear -> float Conv + epilogue, for the same reason.
``requantize_linear``: DequantizeLinear -> QuantizeLinear.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Node
from graphopt.onnx import int8_weights
from graphopt.onnx._common import MICROSOFT
from graphopt.onnx.conv_padding import conv_input_pads
from graphopt.onnx.export import TO_ONNX_DTYPE, OnnxLowering
from graphopt.onnx.lower_fused import _epilogue, emit_activation
from graphopt.onnx.lower_nn import spatial
from graphopt.ops.registry import register_lowering

QUANT_FORMATS = ("qdq", "qlinear")
_format = ["qlinear"]


def set_quant_format(fmt: str) -> None:
    """Select how ``qconv`` / ``qlinear`` lower from now on: ``"qlinear"`` (default) or
    ``"qdq"``."""
    if fmt not in QUANT_FORMATS:
        raise ValueError(f"quant format must be one of {QUANT_FORMATS}, got '{fmt}'")
    _format[0] = fmt


@contextlib.contextmanager
def quant_format(fmt: str):
    """``with quant_format("qdq"): graphopt.to_onnx(q)``."""
    saved = _format[0]
    set_quant_format(fmt)
    try:
        yield
    finally:
        _format[0] = saved


def _const(node: Node, i: int) -> np.ndarray | None:
    v = node.inputs[i] if i < len(node.inputs) else None
    return None if v is None or v.kind != "const" else v.data


def _int32_bias(ctx: OnnxLowering, node: Node) -> tuple[str, str] | None:
    """(int32 bias, its f32 scale ``x_scale * w_scale``) initializers, or None when absent or
    not computable (non-constant operands)."""
    b, xs, ws = _const(node, 5), _const(node, 1), _const(node, 4)
    if b is None or xs is None or ws is None:
        return None
    scale = (np.float32(xs) * ws.astype(np.float32)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    b_q = np.clip(np.rint(b.astype(np.float64) / safe), -2**31, 2**31 - 1).astype(np.int32)
    hint = node.inputs[5].name
    return ctx.const(b_q, DType.int32, f"{hint}_i32"), ctx.const(scale, DType.float32,
                                                                 f"{hint}_i32_scale")


def _dq(ctx, q: str, scale: str, zp: str = "", axis: int | None = None) -> str:
    args = [q, scale] + ([zp] if zp else [])
    return ctx.op("DequantizeLinear", args, axis=axis)


def _activation_implied(node: Node) -> bool:
    """True when saturating to u8 with (y_scale, y_zp) already applies the activation: a clamp
    to [a, b] is implied iff ``round(a / y_scale) + y_zp <= 0`` and ``round(b / y_scale) +
    y_zp >= 255`` (values beyond a bound then saturate to the same code either way)."""
    act, params = node.attrs["activation"], tuple(node.attrs["activation_params"])
    if act == "none":
        return True
    ys, yz = _const(node, 6), _const(node, 7)
    if ys is None or not float(ys) > 0:
        return False
    zp = 0 if yz is None else int(yz)
    if act == "relu":
        a, b = 0.0, math.inf
    elif act == "relu6":
        a, b = 0.0, 6.0
    elif act == "clamp":
        a, b = params
    else:
        return False

    def code(bound: float) -> float:
        return float(np.rint(np.float32(bound) / np.float32(ys))) + zp

    return (math.isinf(a) or code(a) <= 0) and (math.isinf(b) or code(b) >= 255)


def _y_zp(ctx, node: Node) -> str:
    if node.inputs[7] is not None:
        return ctx.input(node, 7)
    return ctx.const(np.zeros((), np.uint8), DType.uint8, "y_zp")


def _quantized_core(ctx, node: Node, core, bias_dq: str | None) -> str:
    """``activation(core(x_dq, w_dq, bias))``; the caller adds the QuantizeLinear."""
    xd = _dq(ctx, ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2))
    w, wz = int8_weights.weight_operand(ctx, node, 3, int(node.inputs[3].shape[0]))
    wd = _dq(ctx, w, ctx.input(node, 4), wz if ctx.int8_weights == "u8" else "", axis=0)
    y = core(xd, wd, bias_dq)
    act = node.attrs["activation"]
    if act != "none" and not _activation_implied(node):
        y = emit_activation(ctx, y, act, tuple(node.attrs["activation_params"]), DType.float32)
    return y


def _bias_for_qdq(ctx, node: Node) -> tuple[str | None, str | None]:
    """(DQ'd int32 bias, or None) and (float bias to add after the op, or None)."""
    if node.inputs[5] is None:
        return None, None
    ints = _int32_bias(ctx, node)
    if ints is None:
        return None, ctx.input(node, 5)
    return ctx.op("DequantizeLinear", list(ints), axis=0), None


# ------------------------------------------------------------------------------------- qconv
def _conv_attrs(node: Node, weight: int) -> dict:
    a = node.attrs
    return {
        "kernel_shape": [int(k) for k in node.inputs[weight].shape[2:]],
        "strides": spatial(a["stride"], 2),
        "pads": conv_input_pads(node, spatial(a["padding"], 2)),  # + an absorbed zero pad
        "dilations": spatial(a["dilation"], 2),
        "group": int(a["groups"]),
    }


@register_lowering("onnx", "qconv")
def _qconv(ctx, node):
    if node.inputs[6] is None:
        return _qconv_float(ctx, node)
    attrs = _conv_attrs(node, 3)
    if _format[0] == "qlinear" and _activation_implied(node):
        ints = _int32_bias(ctx, node)
        if node.inputs[5] is None or ints is not None:
            w, wz = int8_weights.weight_operand(ctx, node, 3, int(node.inputs[3].shape[0]))
            args = [ctx.input(node, i) for i in range(3)]
            args += [w, ctx.input(node, 4), wz, ctx.input(node, 6), _y_zp(ctx, node)]
            if ints is not None:
                args.append(ints[0])
            ctx.op("QLinearConv", args, out=ctx.output(node), **attrs)
            return
    bias_dq, bias_f = _bias_for_qdq(ctx, node)

    def core(xd, wd, b):
        y = ctx.op("Conv", [xd, wd] + ([b] if b else []), **attrs)
        return ctx.op("Add", [y, _channel(ctx, bias_f, 4)]) if bias_f else y

    y = _quantized_core(ctx, node, core, bias_dq)
    ctx.op("QuantizeLinear", [y, ctx.input(node, 6), _y_zp(ctx, node)], out=ctx.output(node))


def _channel(ctx, name: str, rank: int) -> str:
    """A [C] tensor reshaped to broadcast along axis 1 of a rank-``rank`` tensor."""
    return ctx.op("Reshape", [name, ctx.ints([1, -1] + [1] * (rank - 2))])


def _scale_bias_act(ctx, node: Node, acc_f: str, combined: str, bias: str | None,
                    channel_rank: int | None, residual: str | None = None) -> None:
    """``act(acc_f * combined + bias (+ residual))`` into the node's output."""
    if channel_rank is not None:
        combined = _channel(ctx, combined, channel_rank)
        bias = _channel(ctx, bias, channel_rank) if bias else None
    adds = ([bias] if bias else []) + ([residual] if residual else [])

    def core(out):
        return ctx.op("Mul", [acc_f, combined], out=out)

    _epilogue(ctx, node, core, adds)


def _qconv_float(ctx, node):
    """f32 result: DequantizeLinear(x), DequantizeLinear(w) -> float Conv -> bias, activation.
    onnxruntime has no int8 conv with a float output (ConvInteger is a slow reference kernel,
    10x slower than the float conv here), so the float conv runs on the dequantized values."""
    attrs = _conv_attrs(node, 3)
    xd = _dq(ctx, ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2))
    wd = _dq(ctx, ctx.input(node, 3), ctx.input(node, 4), axis=0)
    bias = [ctx.input(node, 5)] if node.inputs[5] is not None else []
    _epilogue(ctx, node, lambda out: ctx.op("Conv", [xd, wd] + bias, out=out, **attrs), [])


# ----------------------------------------------------------------------------------- qlinear
def _weight_t(ctx, node) -> str:
    w = node.inputs[3]
    if w.kind != "const":
        raise ctx.fail("qlinear needs a constant weight")
    return int8_weights.weight(ctx, np.ascontiguousarray(w.data.T), f"{w.name}_t")


@register_lowering("onnx", "qlinear")
def _qlinear(ctx, node):
    if node.inputs[6] is None:
        return _qlinear_float(ctx, node)
    x = node.inputs[0]
    k = int(node.inputs[3].shape[1])
    xq = ctx.input(node, 0)
    if x.type.rank != 2:
        xq = ctx.op("Reshape", [xq, ctx.ints([-1, k])])
    final = ctx.output(node) if x.type.rank == 2 else None
    if _format[0] == "qlinear" and _activation_implied(node) and ctx.contrib:
        ints = _int32_bias(ctx, node)
        if node.inputs[5] is None or ints is not None:
            w, wz = int8_weights.weight_operand(ctx, node, 3, int(node.inputs[3].shape[0]))
            args = [xq, ctx.input(node, 1), ctx.input(node, 2), w,
                    ctx.input(node, 4), wz, ints[0] if ints else "", ctx.input(node, 6),
                    _y_zp(ctx, node)]
            y = ctx.op("QGemm", args, out=final, domain=MICROSOFT, transB=1)
            _reshape_back(ctx, node, y)
            return
    # Gemm takes the f32 bias as is: onnxruntime 1.32 fuses DQ -> Gemm(f32 C) -> Q into QGemm
    # (quantizing C itself), but not a Gemm whose C is a DequantizeLinear of int32.
    xd = _dq(ctx, xq, ctx.input(node, 1), ctx.input(node, 2))
    # QGemm fusion wants the weight zero point explicit
    w, wz = int8_weights.weight_operand(ctx, node, 3, int(node.inputs[3].shape[0]))
    wd = _dq(ctx, w, ctx.input(node, 4), wz, axis=0)
    bias = [ctx.input(node, 5)] if node.inputs[5] is not None else []
    y = ctx.op("Gemm", [xd, wd] + bias, transB=1)
    act = node.attrs["activation"]
    if act != "none" and not _activation_implied(node):
        y = emit_activation(ctx, y, act, tuple(node.attrs["activation_params"]), DType.float32)
    y = ctx.op("QuantizeLinear", [y, ctx.input(node, 6), _y_zp(ctx, node)], out=final)
    _reshape_back(ctx, node, y)


def _reshape_back(ctx, node: Node, y: str) -> None:
    if node.inputs[0].type.rank != 2:
        ctx.op("Reshape", [y, ctx.shape_tensor(node.outputs[0].shape)], out=ctx.output(node))


def _qlinear_float(ctx, node):
    w_t = _weight_t(ctx, node)
    n = int(node.inputs[3].shape[0])
    bias = ctx.input(node, 5) or None
    act = node.attrs["activation"]
    if ctx.contrib:
        w_zp = int8_weights.zero_point(ctx, (n,)) if ctx.int8_weights == "u8" else ""
        args = [ctx.input(node, 0), w_t, ctx.input(node, 1), ctx.input(node, 4),
                ctx.input(node, 2), w_zp, bias or ""]
        while args[-1] == "":
            args.pop()
        out = ctx.output(node) if act == "none" else None
        y = ctx.op("MatMulIntegerToFloat", args, out=out, domain=MICROSOFT)
        if act != "none":
            emit_activation(ctx, y, act, tuple(node.attrs["activation_params"]), DType.float32,
                            out=ctx.output(node))
        return
    acc = int8_weights.matmul_integer(ctx, ctx.input(node, 0), ctx.input(node, 2), w_t, n)
    acc_f = ctx.op("Cast", [acc], to=TO_ONNX_DTYPE[DType.float32])
    combined = ctx.op("Mul", [ctx.input(node, 1), ctx.input(node, 4)])
    _scale_bias_act(ctx, node, acc_f, combined, bias, None)


# ----------------------------------------------------------------------------- qconv_dynamic
@register_lowering("onnx", "qconv_dynamic")
def _qconv_dynamic(ctx, node):
    """DynamicQuantizeLinear -> DequantizeLinear(x), DequantizeLinear(w) -> float Conv ->
    bias, residual, activation. ConvInteger (the integer form) measured 14x slower than the
    fp32 conv on onnxruntime 1.32 / AVX2 (MobileNetV2), so the int8 weights are dequantized."""
    xq, xs, xz = ctx.op("DynamicQuantizeLinear", [ctx.input(node, 0)], outs=3)
    xd = _dq(ctx, xq, xs, xz)
    wd = _dq(ctx, ctx.input(node, 1), ctx.input(node, 2), axis=0)
    bias = [ctx.input(node, 3)] if node.inputs[3] is not None else []
    residual = [ctx.input(node, 4)] if len(node.inputs) > 4 and node.inputs[4] else []
    attrs = _conv_attrs(node, 1)
    _epilogue(ctx, node, lambda out: ctx.op("Conv", [xd, wd] + bias, out=out, **attrs),
              residual)


# ------------------------------------------------------------------------- requantize_linear
@register_lowering("onnx", "requantize_linear")
def _requantize_linear(ctx, node):
    real = _dq(ctx, ctx.input(node, 0), ctx.input(node, 1), ctx.input(node, 2))
    zp = ctx.input(node, 4)
    if not zp:
        dt = DType.parse(node.attrs["dtype"])
        zp = ctx.const(np.zeros((), dt.numpy), dt, "zp")
    ctx.op("QuantizeLinear", [real, ctx.input(node, 3), zp], out=ctx.output(node))
