"""ONNX lowerings of reductions, arg-reductions and softmax."""

from __future__ import annotations

from typing import Sequence

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Node
from graphopt.onnx._common import TO_ONNX_DTYPE
from graphopt.onnx.export import OnnxLowering
from graphopt.ops._infer import norm_axes
from graphopt.ops.registry import register_lowering


def reduce(ctx: OnnxLowering, op_type: str, x: str, axes: Sequence[int], keepdim: bool,
           out: str | None = None) -> str:
    """``op_type`` over ``axes`` (all when empty); axes are an input from opset 13/18 on."""
    axes = [int(a) for a in axes]
    axes_as_input = ctx.opset >= (13 if op_type == "ReduceSum" else 18)
    if not axes:
        return ctx.op(op_type, [x], out=out, keepdims=int(keepdim))
    if axes_as_input:
        return ctx.op(op_type, [x, ctx.ints(axes)], out=out, keepdims=int(keepdim))
    return ctx.op(op_type, [x], out=out, axes=axes, keepdims=int(keepdim))


_REDUCE = {"sum": "ReduceSum", "mean": "ReduceMean", "prod": "ReduceProd", "amax": "ReduceMax",
           "amin": "ReduceMin", "logsumexp": "ReduceLogSumExp"}


def _declare_reduce(ir_op: str, onnx_op: str) -> None:
    @register_lowering("onnx", ir_op)
    def lower(ctx: OnnxLowering, node: Node) -> None:
        x = ctx.input_as(node, 0, node.outputs[0].dtype)  # ints/bools sum in int64, as torch
        reduce(ctx, onnx_op, x, _axes(node), node.attrs["keepdim"], out=ctx.output(node))


for _ir, _onnx in _REDUCE.items():
    _declare_reduce(_ir, _onnx)


def _axes(node: Node) -> list[int]:
    axes = node.attrs["axes"]
    return list(norm_axes(axes, node.inputs[0].type.rank)) if axes else []


def _declare_logic_reduce(ir_op: str, onnx_op: str) -> None:
    @register_lowering("onnx", ir_op)
    def lower(ctx: OnnxLowering, node: Node) -> None:
        x = ctx.input_as(node, 0, DType.bool)
        if ctx.opset >= 20:  # bool ReduceMin/Max exist from opset 20 on
            reduce(ctx, onnx_op, x, _axes(node), node.attrs["keepdim"], out=ctx.output(node))
            return
        r = reduce(ctx, onnx_op, ctx.cast(x, DType.bool, DType.int32), _axes(node),
                   node.attrs["keepdim"])
        ctx.op("Cast", [r], out=ctx.output(node), to=TO_ONNX_DTYPE[DType.bool])


_declare_logic_reduce("all", "ReduceMin")
_declare_logic_reduce("any", "ReduceMax")


def element_count(ctx: OnnxLowering, node: Node, axes: Sequence[int], dtype: DType) -> str:
    """Number of elements reduced over ``axes`` as a 0-d tensor of ``dtype``."""
    shape = node.inputs[0].shape
    dims = [shape[a] for a in (axes or range(len(shape)))]
    count = 1
    for d in dims:
        count = count * d
    if isinstance(count, int) or count.is_number:
        return ctx.scalar(int(count), dtype)
    n = ctx.op("Cast", [ctx.dim_tensor(count)], to=TO_ONNX_DTYPE[dtype])
    return ctx.op("Squeeze", [n, ctx.ints([0])])


def _var(ctx: OnnxLowering, node: Node, sqrt: bool) -> None:
    dtype = node.outputs[0].dtype
    x = ctx.input_as(node, 0, dtype)
    axes = _axes(node)
    mean = reduce(ctx, "ReduceMean", x, axes, True)
    d = ctx.op("Sub", [x, mean])
    ss = reduce(ctx, "ReduceSum", ctx.op("Mul", [d, d]), axes, node.attrs["keepdim"])
    n = element_count(ctx, node, axes, dtype)
    correction = float(node.attrs["correction"])
    if correction:
        n = ctx.op("Max", [ctx.op("Sub", [n, ctx.scalar(correction, dtype)]),
                           ctx.scalar(0.0, dtype)])
    if sqrt:
        ctx.op("Sqrt", [ctx.op("Div", [ss, n])], out=ctx.output(node))
    else:
        ctx.op("Div", [ss, n], out=ctx.output(node))


@register_lowering("onnx", "var")
def _lower_var(ctx, node):
    _var(ctx, node, sqrt=False)


@register_lowering("onnx", "std")
def _lower_std(ctx, node):
    _var(ctx, node, sqrt=True)


def _declare_arg(ir_op: str, onnx_op: str) -> None:
    @register_lowering("onnx", ir_op)
    def lower(ctx: OnnxLowering, node: Node) -> None:
        x = ctx.input(node, 0)
        axis, keepdim = node.attrs["axis"], node.attrs["keepdim"]
        rank = node.inputs[0].type.rank
        if axis is not None:
            ctx.op(onnx_op, [x], out=ctx.output(node), axis=axis % max(rank, 1),
                   keepdims=int(keepdim))
            return
        flat = ctx.op("Reshape", [x, ctx.ints([-1])])
        if keepdim:
            r = ctx.op(onnx_op, [flat], axis=0, keepdims=1)
            ctx.op("Reshape", [r, ctx.ints([1] * rank)], out=ctx.output(node))
        else:
            ctx.op(onnx_op, [flat], out=ctx.output(node), axis=0, keepdims=0)


_declare_arg("argmax", "ArgMax")
_declare_arg("argmin", "ArgMin")


def _declare_softmax(ir_op: str, onnx_op: str) -> None:
    @register_lowering("onnx", ir_op)
    def lower(ctx: OnnxLowering, node: Node) -> None:
        rank = node.inputs[0].type.rank
        x = ctx.input_as(node, 0, node.outputs[0].dtype)
        axis = node.attrs["axis"] % max(rank, 1)
        if rank == 0:  # softmax of a scalar is 1 (log_softmax 0); ONNX wants rank >= 1
            one = ctx.op("Reshape", [x, ctx.ints([1])])
            r = ctx.op(onnx_op, [one], axis=0)
            ctx.op("Reshape", [r, ctx.ints([])], out=ctx.output(node))
            return
        if ctx.opset >= 13 or axis == rank - 1:
            ctx.op(onnx_op, [x], out=ctx.output(node), axis=axis)
            return
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]
        t = ctx.op(onnx_op, [ctx.op("Transpose", [x], perm=perm)], axis=rank - 1)
        ctx.op("Transpose", [t], out=ctx.output(node), perm=perm)


_declare_softmax("softmax", "Softmax")
_declare_softmax("log_softmax", "LogSoftmax")
