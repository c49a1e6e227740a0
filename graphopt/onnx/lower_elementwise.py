"""ONNX lowerings of the elementwise ops: unary math, activations, arithmetic, comparisons.

IR ops follow torch's type promotion (``int_tensor + 0.5`` is float); ONNX wants operands of one
type, so operands are cast to the node's result type (or, for comparisons, to the promoted
operand type) first. The casts are free when the types already agree.
"""

from __future__ import annotations

import math

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Node
from graphopt.onnx._common import TO_ONNX_DTYPE
from graphopt.onnx.export import OnnxLowering
from graphopt.ops._infer import promote
from graphopt.ops.registry import register_lowering

# ------------------------------------------------------------------------------------- unary
_FLOAT_UNARY = {
    "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "reciprocal": "Reciprocal", "sin": "Sin",
    "cos": "Cos", "tan": "Tan", "atan": "Atan", "tanh": "Tanh", "sigmoid": "Sigmoid",
    "erf": "Erf", "softsign": "Softsign",
}


def _float_in(ctx: OnnxLowering, node: Node) -> str:
    """Operand 0 converted to the (floating) result type."""
    return ctx.input_as(node, 0, node.outputs[0].dtype)


def _declare_float_unary(ir_op: str, onnx_op: str) -> None:
    @register_lowering("onnx", ir_op)
    def lower(ctx: OnnxLowering, node: Node) -> None:
        ctx.op(onnx_op, [_float_in(ctx, node)], out=ctx.output(node))


for _ir, _onnx in _FLOAT_UNARY.items():
    _declare_float_unary(_ir, _onnx)


@register_lowering("onnx", "neg")
def _neg(ctx, node):
    ctx.op("Neg", [ctx.input(node, 0)], out=ctx.output(node))


@register_lowering("onnx", "abs")
def _abs(ctx, node):
    ctx.op("Abs", [ctx.input(node, 0)], out=ctx.output(node))


@register_lowering("onnx", "relu")
def _relu(ctx, node):
    x = node.inputs[0]
    if x.dtype.is_floating:
        ctx.op("Relu", [ctx.input(node, 0)], out=ctx.output(node))
    else:  # onnxruntime has no int64 Relu kernel
        ctx.op("Max", [ctx.input(node, 0), ctx.scalar(0, x.dtype)], out=ctx.output(node))


def _declare_rounding(ir_op: str, onnx_op: str) -> None:
    @register_lowering("onnx", ir_op)
    def lower(ctx: OnnxLowering, node: Node) -> None:
        if node.inputs[0].dtype.is_floating:
            ctx.op(onnx_op, [ctx.input(node, 0)], out=ctx.output(node))
        else:  # torch.floor/ceil/round of an integer tensor is the tensor itself
            ctx.alias(node, ctx.input(node, 0))


for _ir, _onnx in {"floor": "Floor", "ceil": "Ceil", "round": "Round"}.items():
    _declare_rounding(_ir, _onnx)


@register_lowering("onnx", "sign")
def _sign(ctx, node):
    ctx.op("Sign", [ctx.input(node, 0)], out=ctx.output(node))


@register_lowering("onnx", "bitwise_not")
def _bitwise_not(ctx, node):
    op = "Not" if node.inputs[0].dtype is DType.bool else "BitwiseNot"
    ctx.op(op, [ctx.input(node, 0)], out=ctx.output(node))


@register_lowering("onnx", "logical_not")
def _logical_not(ctx, node):
    ctx.op("Not", [ctx.input_as(node, 0, DType.bool)], out=ctx.output(node))


@register_lowering("onnx", "isnan")
def _isnan(ctx, node):
    x = node.inputs[0]
    if x.dtype.is_floating:
        ctx.op("IsNaN", [ctx.input(node, 0)], out=ctx.output(node))
    else:  # integers are never NaN
        ctx.op("Not", [ctx.op("Equal", [ctx.input(node, 0), ctx.input(node, 0)])],
               out=ctx.output(node))


@register_lowering("onnx", "log1p")
def _log1p(ctx, node):
    x = _float_in(ctx, node)
    one = ctx.scalar(1.0, node.outputs[0].dtype)
    ctx.op("Log", [ctx.op("Add", [x, one])], out=ctx.output(node))


@register_lowering("onnx", "expm1")
def _expm1(ctx, node):
    x = _float_in(ctx, node)
    one = ctx.scalar(1.0, node.outputs[0].dtype)
    ctx.op("Sub", [ctx.op("Exp", [x]), one], out=ctx.output(node))


@register_lowering("onnx", "rsqrt")
def _rsqrt(ctx, node):
    ctx.op("Reciprocal", [ctx.op("Sqrt", [_float_in(ctx, node)])], out=ctx.output(node))


@register_lowering("onnx", "silu")
def _silu(ctx, node):
    x = _float_in(ctx, node)
    ctx.op("Mul", [x, ctx.op("Sigmoid", [x])], out=ctx.output(node))


@register_lowering("onnx", "mish")
def _mish(ctx, node):
    x = _float_in(ctx, node)
    if ctx.opset >= 18:
        ctx.op("Mish", [x], out=ctx.output(node))
    else:
        ctx.op("Mul", [x, ctx.op("Tanh", [ctx.op("Softplus", [x])])], out=ctx.output(node))


@register_lowering("onnx", "hardswish")
def _hardswish(ctx, node):
    x = _float_in(ctx, node)
    if ctx.opset >= 14:
        ctx.op("HardSwish", [x], out=ctx.output(node))
    else:
        ctx.op("Mul", [x, ctx.op("HardSigmoid", [x], alpha=1 / 6, beta=0.5)], out=ctx.output(node))


@register_lowering("onnx", "hardsigmoid")
def _hardsigmoid(ctx, node):
    ctx.op("HardSigmoid", [_float_in(ctx, node)], out=ctx.output(node), alpha=1 / 6, beta=0.5)


@register_lowering("onnx", "gelu")
def _gelu(ctx, node):
    emit_gelu(ctx, _float_in(ctx, node), node.attrs["approximate"], node.outputs[0].dtype,
              ctx.output(node))


def emit_gelu(ctx: OnnxLowering, x: str, approximate: str, dtype: DType,
              out: str | None = None) -> str:
    """Gelu (opset 20) or its erf/tanh formula at older opsets."""
    if ctx.opset >= 20:
        return ctx.op("Gelu", [x], out=out, approximate=approximate)
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = ctx.op("Mul", [ctx.op("Mul", [x, x]), x])
        inner = ctx.op("Add", [x, ctx.op("Mul", [cube, ctx.scalar(0.044715, dtype)])])
        t = ctx.op("Tanh", [ctx.op("Mul", [inner, ctx.scalar(math.sqrt(2 / math.pi), dtype)])])
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        t = ctx.op("Erf", [ctx.op("Div", [x, ctx.scalar(math.sqrt(2.0), dtype)])])
    half_x = ctx.op("Mul", [x, ctx.scalar(0.5, dtype)])
    return ctx.op("Mul", [half_x, ctx.op("Add", [t, ctx.scalar(1.0, dtype)])], out=out)


@register_lowering("onnx", "clamp")
def _clamp(ctx, node):
    dtype = node.inputs[0].dtype
    lo, hi = node.attrs["min"], node.attrs["max"]
    args = [ctx.input(node, 0),
            "" if lo is None else ctx.scalar(lo, dtype),
            "" if hi is None else ctx.scalar(hi, dtype)]
    while args[-1] == "":
        args.pop()
    ctx.op("Clip", args, out=ctx.output(node))


@register_lowering("onnx", "leaky_relu")
def _leaky_relu(ctx, node):
    ctx.op("LeakyRelu", [ctx.input(node, 0)], out=ctx.output(node),
           alpha=float(node.attrs["negative_slope"]))


@register_lowering("onnx", "elu")
def _elu(ctx, node):
    alpha, scale, input_scale = (float(node.attrs[k]) for k in ("alpha", "scale", "input_scale"))
    x = ctx.input(node, 0)
    if input_scale == 1.0 and scale == 1.0:
        ctx.op("Elu", [x], out=ctx.output(node), alpha=alpha)
    elif input_scale == 1.0:  # Selu is exactly scale * elu(x, alpha)
        ctx.op("Selu", [x], out=ctx.output(node), alpha=alpha, gamma=scale)
    else:  # scale * (x > 0 ? x : alpha * (exp(x * input_scale) - 1))
        dtype = node.inputs[0].dtype
        e = ctx.op("Exp", [ctx.op("Mul", [x, ctx.scalar(input_scale, dtype)])])
        neg = ctx.op("Mul", [ctx.op("Sub", [e, ctx.scalar(1.0, dtype)]),
                             ctx.scalar(alpha, dtype)])
        y = ctx.op("Where", [ctx.op("Greater", [x, ctx.scalar(0.0, dtype)]), x, neg])
        ctx.op("Mul", [y, ctx.scalar(scale, dtype)], out=ctx.output(node))


@register_lowering("onnx", "softplus")
def _softplus(ctx, node):
    beta, threshold = float(node.attrs["beta"]), float(node.attrs["threshold"])
    dtype = node.inputs[0].dtype
    x = ctx.input(node, 0)
    bx = x if beta == 1.0 else ctx.op("Mul", [x, ctx.scalar(beta, dtype)])
    if beta == 1.0 and threshold >= 15.0:
        # Above the threshold softplus(x) - x < 3e-7: torch's linear branch only avoids overflow,
        # and onnxruntime's Softplus is already overflow-free.
        ctx.op("Softplus", [x], out=ctx.output(node))
        return
    soft = ctx.op("Softplus", [bx])
    if beta != 1.0:
        soft = ctx.op("Div", [soft, ctx.scalar(beta, dtype)])
    over = ctx.op("Greater", [bx, ctx.scalar(threshold, dtype)])
    ctx.op("Where", [over, x, soft], out=ctx.output(node))


@register_lowering("onnx", "cast")
def _cast(ctx, node):
    src, dst = node.inputs[0].dtype, node.outputs[0].dtype
    if src == dst:
        ctx.alias(node, ctx.input(node, 0))
    else:
        ctx.op("Cast", [ctx.input(node, 0)], out=ctx.output(node), to=TO_ONNX_DTYPE[dst])


# ------------------------------------------------------------------------------------ binary
_ARITH = {"add": "Add", "sub": "Sub", "mul": "Mul", "pow": "Pow", "maximum": "Max",
          "minimum": "Min"}
# torch computes these on bools as logic ops (True + True is True)
_BOOL_ARITH = {"add": "Or", "mul": "And", "maximum": "Or", "minimum": "And"}


def _declare_arith(ir_op: str, onnx_op: str) -> None:
    @register_lowering("onnx", ir_op)
    def lower(ctx: OnnxLowering, node: Node) -> None:
        dtype = node.outputs[0].dtype
        op = _BOOL_ARITH.get(ir_op, onnx_op) if dtype is DType.bool else onnx_op
        ctx.op(op, [ctx.input_as(node, 0, dtype), ctx.input_as(node, 1, dtype)],
               out=ctx.output(node))


for _ir, _onnx in _ARITH.items():
    _declare_arith(_ir, _onnx)


def _operands_promoted(ctx: OnnxLowering, node: Node) -> tuple[str, str, DType]:
    a, b = node.inputs[:2]
    dtype = promote(a.type, b.type)
    return ctx.input_as(node, 0, dtype), ctx.input_as(node, 1, dtype), dtype


_COMPARE = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater",
            "ge": "GreaterOrEqual"}


def _declare_compare(ir_op: str, onnx_op: str) -> None:
    @register_lowering("onnx", ir_op)
    def lower(ctx: OnnxLowering, node: Node) -> None:
        a, b, dtype = _operands_promoted(ctx, node)
        if dtype is DType.bool and onnx_op != "Equal":  # ordering of bools: compare as ints
            a, b = ctx.cast(a, dtype, DType.int32), ctx.cast(b, dtype, DType.int32)
        ctx.op(onnx_op, [a, b], out=ctx.output(node))


for _ir, _onnx in _COMPARE.items():
    _declare_compare(_ir, _onnx)


@register_lowering("onnx", "ne")
def _ne(ctx, node):
    a, b, _ = _operands_promoted(ctx, node)
    ctx.op("Not", [ctx.op("Equal", [a, b])], out=ctx.output(node))


def _declare_logical(ir_op: str, onnx_op: str) -> None:
    @register_lowering("onnx", ir_op)
    def lower(ctx: OnnxLowering, node: Node) -> None:
        ctx.op(onnx_op, [ctx.input_as(node, 0, DType.bool), ctx.input_as(node, 1, DType.bool)],
               out=ctx.output(node))


for _ir, _onnx in {"logical_and": "And", "logical_or": "Or", "logical_xor": "Xor"}.items():
    _declare_logical(_ir, _onnx)


def _declare_bitwise(ir_op: str, logic: str, bitwise: str) -> None:
    @register_lowering("onnx", ir_op)
    def lower(ctx: OnnxLowering, node: Node) -> None:
        dtype = node.outputs[0].dtype
        op = logic if dtype is DType.bool else bitwise
        ctx.op(op, [ctx.input_as(node, 0, dtype), ctx.input_as(node, 1, dtype)],
               out=ctx.output(node))


for _ir, (_logic, _bitwise) in {"bitwise_and": ("And", "BitwiseAnd"),
                                "bitwise_or": ("Or", "BitwiseOr"),
                                "bitwise_xor": ("Xor", "BitwiseXor")}.items():
    _declare_bitwise(_ir, _logic, _bitwise)


def trunc(ctx: OnnxLowering, x: str, dtype: DType, out: str | None = None) -> str:
    """Round toward zero (ONNX has no Trunc): x < 0 ? ceil(x) : floor(x)."""
    negative = ctx.op("Less", [x, ctx.scalar(0, dtype)])
    return ctx.op("Where", [negative, ctx.op("Ceil", [x]), ctx.op("Floor", [x])], out=out)


@register_lowering("onnx", "div")
def _div(ctx, node):
    dtype = node.outputs[0].dtype
    a, b = ctx.input_as(node, 0, dtype), ctx.input_as(node, 1, dtype)
    mode = node.attrs["rounding_mode"]
    out = ctx.output(node)
    if mode is None or (mode == "trunc" and not dtype.is_floating):
        ctx.op("Div", [a, b], out=out)  # integer Div truncates in onnxruntime, like C
    elif dtype.is_floating:
        q = ctx.op("Div", [a, b])
        if mode == "floor":
            ctx.op("Floor", [q], out=out)
        else:
            trunc(ctx, q, dtype, out=out)
    else:  # integer floor division: (a - python_mod(a, b)) / b divides exactly
        r = ctx.op("Mod", [a, b], fmod=0)
        ctx.op("Div", [ctx.op("Sub", [a, r]), b], out=out)


@register_lowering("onnx", "remainder")
def _remainder(ctx, node):
    dtype = node.outputs[0].dtype
    a, b = ctx.input_as(node, 0, dtype), ctx.input_as(node, 1, dtype)
    if not dtype.is_floating:
        ctx.op("Mod", [a, b], out=ctx.output(node), fmod=0)  # Python's sign-of-divisor modulo
        return
    # torch: r = fmod(a, b); r += b where r != 0 and sign(r) != sign(b)
    r = ctx.op("Mod", [a, b], fmod=1)
    zero = ctx.scalar(0, dtype)
    nonzero = ctx.op("Not", [ctx.op("Equal", [r, zero])])
    signs_differ = ctx.op("Xor", [ctx.op("Less", [r, zero]), ctx.op("Less", [b, zero])])
    fix = ctx.op("And", [nonzero, signs_differ])
    ctx.op("Where", [fix, ctx.op("Add", [r, b]), r], out=ctx.output(node))


@register_lowering("onnx", "atan2")
def _atan2(ctx, node):
    dtype = node.outputs[0].dtype
    y, x = ctx.input_as(node, 0, dtype), ctx.input_as(node, 1, dtype)
    zero = ctx.scalar(0.0, dtype)
    base = ctx.op("Atan", [ctx.op("Div", [y, x])])
    y_neg = ctx.op("Less", [y, zero])
    pi = ctx.op("Where", [y_neg, ctx.scalar(-math.pi, dtype), ctx.scalar(math.pi, dtype)])
    left = ctx.op("Add", [base, pi])  # x < 0: shift by +-pi toward y's half plane
    half = ctx.op("Where", [y_neg, ctx.scalar(-math.pi / 2, dtype),
                            ctx.scalar(math.pi / 2, dtype)])
    on_axis = ctx.op("Where", [ctx.op("Equal", [y, zero]), zero, half])  # x == 0
    x_zero = ctx.op("Where", [ctx.op("Equal", [x, zero]), on_axis, base])
    ctx.op("Where", [ctx.op("Less", [x, zero]), left, x_zero], out=ctx.output(node))


@register_lowering("onnx", "where")
def _where(ctx, node):
    dtype = node.outputs[0].dtype
    cond = ctx.input_as(node, 0, DType.bool)
    if dtype is DType.bool:  # onnxruntime has no bool Where kernel: select bytes instead
        a, b = ctx.input_as(node, 1, DType.uint8), ctx.input_as(node, 2, DType.uint8)
        ctx.op("Cast", [ctx.op("Where", [cond, a, b])], out=ctx.output(node),
               to=TO_ONNX_DTYPE[DType.bool])
        return
    a, b = ctx.input_as(node, 1, dtype), ctx.input_as(node, 2, dtype)
    ctx.op("Where", [cond, a, b], out=ctx.output(node))
