"""ONNX lowerings of the fused ops (graphopt/ops/fused.py).

With contrib ops allowed (float32), the fused forms map to onnxruntime's fused kernels:

* ``fused_conv`` -> ``com.microsoft.FusedConv`` (conv + bias + residual ``Z`` + activation in
  one kernel) for relu / relu6 / clamp / leaky_relu / tanh / sigmoid / hardsigmoid;
* ``fused_linear`` -> ``com.microsoft.FusedGemm`` for 2-D inputs with relu / leaky_relu / tanh /
  sigmoid; ``MatMul`` + ``com.microsoft.BiasGelu`` / ``FastGelu`` for a bias + gelu epilogue;
* ``fused_matmul`` -> ``com.microsoft.FusedMatMul`` (transposes and alpha in the GEMM);
* silu -> ``com.microsoft.QuickGelu{alpha=1}`` (``x * sigmoid(1 * x)``, the same function).

Everything else, and every op with ``contrib_ops=False``, is the unfused standard-ONNX chain:
Conv / Gemm / MatMul, ``Add`` for bias and residual, then the activation op.
"""

from __future__ import annotations

import math

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Node
from graphopt.onnx._common import MICROSOFT
from graphopt.onnx.conv_padding import conv_input_pads
from graphopt.onnx.export import OnnxLowering
from graphopt.onnx.lower_nn import spatial, transposed_weight
from graphopt.ops.registry import register_lowering

# epilogues onnxruntime's FusedConv / FusedGemm kernels apply themselves
_ORT_CONV_ACTIVATIONS = {"relu", "relu6", "clamp", "leaky_relu", "tanh", "sigmoid", "hardsigmoid"}
_ORT_GEMM_ACTIVATIONS = {"relu", "leaky_relu", "tanh", "sigmoid"}


def _ort_activation(activation: str, params: tuple) -> tuple[str, list[float] | None]:
    if activation == "relu6":
        return "Clip", [0.0, 6.0]
    if activation == "clamp":
        lo, hi = params
        return "Clip", [max(lo, -3.4028234663852886e38), min(hi, 3.4028234663852886e38)]
    if activation == "leaky_relu":
        return "LeakyRelu", [float(params[0])]
    if activation == "hardsigmoid":
        return "HardSigmoid", [1.0 / 6.0, 0.5]
    return {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[activation], None


def _contrib_f32(ctx: OnnxLowering, node: Node) -> bool:
    return ctx.contrib and node.outputs[0].dtype is DType.float32


def emit_activation(
    ctx: OnnxLowering, x: str, activation: str, params: tuple, dtype: DType, out: str | None = None
) -> str:
    """The activation of a fused epilogue applied to tensor ``x``; returns the result's name."""
    if activation == "relu":
        return ctx.op("Relu", [x], out=out)
    if activation in ("relu6", "clamp"):
        lo, hi = (0.0, 6.0) if activation == "relu6" else params
        args = [
            x,
            "" if math.isinf(lo) else ctx.scalar(lo, dtype),
            "" if math.isinf(hi) else ctx.scalar(hi, dtype),
        ]
        while args[-1] == "":
            args.pop()
        return ctx.op("Clip", args, out=out)
    if activation == "leaky_relu":
        return ctx.op("LeakyRelu", [x], out=out, alpha=float(params[0]))
    if activation in ("gelu", "gelu_tanh"):
        approximate = "tanh" if activation == "gelu_tanh" else "none"
        if ctx.opset >= 20:
            return ctx.op("Gelu", [x], out=out, approximate=approximate)
        if ctx.contrib:
            op_type = "FastGelu" if approximate == "tanh" else "Gelu"
            return ctx.op(op_type, [x], out=out, domain=MICROSOFT)
        return _gelu_decomposed(ctx, x, approximate, dtype, out)
    if activation == "silu":
        if ctx.contrib and dtype is DType.float32:
            return ctx.op("QuickGelu", [x], out=out, domain=MICROSOFT, alpha=1.0)
        return ctx.op("Mul", [x, ctx.op("Sigmoid", [x])], out=out)
    if activation == "sigmoid":
        return ctx.op("Sigmoid", [x], out=out)
    if activation == "tanh":
        return ctx.op("Tanh", [x], out=out)
    if activation == "hardswish":
        return ctx.op("HardSwish", [x], out=out)
    if activation == "hardsigmoid":
        return ctx.op("HardSigmoid", [x], out=out, alpha=1.0 / 6.0, beta=0.5)
    raise ctx.fail(f"fused activation '{activation}' has no ONNX lowering")


def _gelu_decomposed(ctx, x, approximate, dtype, out):
    if approximate == "tanh":
        cube = ctx.op("Mul", [ctx.op("Mul", [x, x]), x])
        inner = ctx.op("Add", [x, ctx.op("Mul", [cube, ctx.scalar(0.044715, dtype)])])
        t = ctx.op("Tanh", [ctx.op("Mul", [inner, ctx.scalar(math.sqrt(2 / math.pi), dtype)])])
    else:
        t = ctx.op("Erf", [ctx.op("Div", [x, ctx.scalar(math.sqrt(2.0), dtype)])])
    half_x = ctx.op("Mul", [x, ctx.scalar(0.5, dtype)])
    return ctx.op("Mul", [half_x, ctx.op("Add", [t, ctx.scalar(1.0, dtype)])], out=out)


def _epilogue(ctx: OnnxLowering, node: Node, core, adds: list[str]) -> None:
    """Emit ``core(out)``, then Add each of ``adds``, then the activation, naming the last
    tensor after the node's output."""
    activation = node.attrs["activation"]
    params = tuple(node.attrs["activation_params"])
    dtype = node.outputs[0].dtype
    steps = len(adds) + (activation != "none")
    y = core(ctx.output(node) if steps == 0 else None)
    for other in adds:
        steps -= 1
        y = ctx.op("Add", [y, other], out=ctx.output(node) if steps == 0 else None)
    if activation != "none":
        emit_activation(ctx, y, activation, params, dtype, out=ctx.output(node))


# ------------------------------------------------------------------------------- fused_conv
def _conv_attrs(node: Node) -> dict:
    n = node.inputs[0].type.rank - 2
    a = node.attrs
    return {
        "kernel_shape": [int(k) for k in node.inputs[1].shape[2:]],
        "strides": spatial(a["stride"], n),
        "pads": conv_input_pads(node, spatial(a["padding"], n)),
        "dilations": spatial(a["dilation"], n),
        "group": int(a["groups"]),
    }


@register_lowering("onnx", "fused_conv")
def _fused_conv(ctx, node):
    x, w, b = (ctx.input(node, i) for i in range(3))
    residual = node.inputs[3] if len(node.inputs) > 3 else None
    activation = node.attrs["activation"]
    if _contrib_f32(ctx, node) and activation in _ORT_CONV_ACTIVATIONS | {"none"}:
        args = [x, w, b]
        if residual is not None:
            args.append(ctx.input(node, 3))
        while args[-1] == "":
            args.pop()
        kwargs = _conv_attrs(node)
        if activation != "none":
            name, params = _ort_activation(activation, tuple(node.attrs["activation_params"]))
            kwargs.update(activation=name, activation_params=params)
        ctx.op("FusedConv", args, out=ctx.output(node), domain=MICROSOFT, **kwargs)
        return
    args = [x, w] + ([b] if b else [])
    adds = [ctx.input(node, 3)] if residual is not None else []
    _epilogue(ctx, node, lambda out: ctx.op("Conv", args, out=out, **_conv_attrs(node)), adds)


# ----------------------------------------------------------------------------- fused_linear
@register_lowering("onnx", "fused_linear")
def _fused_linear(ctx, node):
    has_bias = node.inputs[2] is not None
    residual = [ctx.input(node, 3)] if len(node.inputs) > 3 and node.inputs[3] else []
    activation = node.attrs["activation"]
    if node.inputs[0].type.rank == 2:  # Gemm takes the bias and the [out, in] weight as is
        args = [ctx.input(node, 0), ctx.input(node, 1)] + ([ctx.input(node, 2)] if has_bias else [])
        if _contrib_f32(ctx, node) and activation in _ORT_GEMM_ACTIVATIONS and not residual:
            name, params = _ort_activation(activation, tuple(node.attrs["activation_params"]))
            ctx.op(
                "FusedGemm",
                args,
                out=ctx.output(node),
                domain=MICROSOFT,
                transB=1,
                activation=name,
                activation_alpha=params[0] if params else None,
            )
            return
        _epilogue(ctx, node, lambda out: ctx.op("Gemm", args, out=out, transB=1), residual)
        return
    weight = transposed_weight(ctx, node, 1)
    if (
        has_bias
        and not residual
        and activation in ("gelu", "gelu_tanh")
        and _contrib_f32(ctx, node)
    ):  # bias + gelu in one kernel
        product = ctx.op("MatMul", [ctx.input(node, 0), weight])
        op_type = "BiasGelu" if activation == "gelu" else "FastGelu"
        ctx.op(op_type, [product, ctx.input(node, 2)], out=ctx.output(node), domain=MICROSOFT)
        return
    adds = ([ctx.input(node, 2)] if has_bias else []) + residual
    _epilogue(ctx, node, lambda out: ctx.op("MatMul", [ctx.input(node, 0), weight], out=out), adds)


# ----------------------------------------------------------------------------- fused_matmul
def _swap_last(ctx: OnnxLowering, name: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return ctx.op("Transpose", [name], perm=perm)


@register_lowering("onnx", "fused_matmul")
def _fused_matmul(ctx, node):
    a, b = node.inputs[0], node.inputs[1]
    trans_a, trans_b = bool(node.attrs["trans_a"]), bool(node.attrs["trans_b"])
    alpha = float(node.attrs["alpha"])
    adds = [ctx.input(node, i) for i in (2, 3) if len(node.inputs) > i and node.inputs[i]]
    dtype = node.outputs[0].dtype

    def core(out):
        if _contrib_f32(ctx, node) and (trans_a or trans_b or alpha != 1.0):
            return ctx.op(
                "FusedMatMul",
                [ctx.input(node, 0), ctx.input(node, 1)],
                out=out,
                domain=MICROSOFT,
                transA=int(trans_a),
                transB=int(trans_b),
                alpha=alpha,
            )
        an = _swap_last(ctx, ctx.input(node, 0), a.type.rank) if trans_a else ctx.input(node, 0)
        bn = _swap_last(ctx, ctx.input(node, 1), b.type.rank) if trans_b else ctx.input(node, 1)
        if alpha == 1.0:
            return ctx.op("MatMul", [an, bn], out=out)
        return ctx.op("Mul", [ctx.op("MatMul", [an, bn]), ctx.scalar(alpha, dtype)], out=out)

    _epilogue(ctx, node, core, adds)
