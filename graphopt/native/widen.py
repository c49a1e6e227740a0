"""float16 / bfloat16 nodes computed in float32 ("cast_half", csrc/rt_half.cpp).

The math kernels are float32 (and float64); a node whose lowering cannot take its 16-bit
floats is lowered again on a shadow node whose 16-bit operands are float32 copies (converted at
plan time for constants, by a "cast_half" step otherwise) and whose 16-bit outputs are float32
values converted back after it. Widening is exact and the result is rounded once, so a node
agrees with the float16 op to within one rounding of its result (numpy's float16 ops, which the
ONNX tests use, compute in float32 and round the same way).
"""

from __future__ import annotations

import numpy as np
import torch

from graphopt.ir.dtypes import DType, numpy_to_torch, torch_to_numpy
from graphopt.ir.graph import Node, Value
from graphopt.ir.types import TensorType
from graphopt.native.lowering_context import LoweringContext

HALF = (DType.float16, DType.bfloat16)
_TO_F32 = {DType.float16: 0, DType.bfloat16: 2}
_FROM_F32 = {DType.float16: 1, DType.bfloat16: 3}


def has_half(node: Node) -> bool:
    return any(v is not None and v.dtype in HALF for v in (*node.inputs, *node.outputs))


def lower_widened(builder, node: Node, index: int, lowering) -> None:
    """Lowers ``node`` on float32 shadows of its 16-bit operands (raises what the lowering
    raises: Unsupported when even the float32 form has no kernel)."""
    shadow = Node(node.graph, node.op, node.attrs)
    shadow.source = node.source
    for v in node.inputs:
        shadow.inputs.append(v if v is None or v.dtype not in HALF
                             else _widened_input(builder, v, index))
    back = []
    for v in node.outputs:
        if v.dtype not in HALF:
            shadow.outputs.append(v)
            continue
        wide = Value(node.graph, f"{v.name}.f32", TensorType(builder.shape(v), DType.float32),
                     "node")
        builder.last_use[wide] = index
        shadow.outputs.append(wide)
        back.append((v, wide))
    lowering(LoweringContext(builder, shadow, index))
    for v, wide in back:
        if wide in builder.consts and not builder.holds(wide):
            half = numpy_to_torch(builder.consts[wide], DType.float32).to(v.dtype.torch)
            builder.consts[v] = torch_to_numpy(half)[0]
            continue
        src = builder.plain_ref(wide)
        if not src.is_contiguous:
            src = builder.materialize(wide, src, f"{wide.name}.contiguous")
        out = builder.new_ref(builder.shape(v), v.dtype, v.name, builder.last_use.get(v, -1))
        builder.env[v] = out
        if out.numel:
            builder.emit("cast_half", node.name, [out, src], [_FROM_F32[v.dtype], out.numel],
                         op=node.op)


def _widened_input(builder, v: Value, index: int) -> Value:
    shape = builder.shape(v)
    wide = Value(v.graph, f"{v.name}.f32", TensorType(shape, DType.float32), "node")
    builder.last_use[wide] = index
    if v in builder.consts and not builder.holds(v):
        data = numpy_to_torch(builder.consts[v], v.dtype).to(torch.float32)
        builder.consts[wide] = np.ascontiguousarray(data.numpy())
        return wide
    src = builder.plain_ref(v)
    if not src.is_contiguous:
        src = builder.materialize(v, src, f"{v.name}.contiguous")
    out = builder.new_ref(shape, DType.float32, wide.name, index)
    if out.numel:
        builder.emit("cast_half", wide.name, [out, src], [_TO_F32[v.dtype], out.numel],
                     op="cast")
    builder.env[wide] = out
    return wide
