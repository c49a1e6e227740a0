"""The built-in IR ops. Importing this package registers them all (see registry.py)."""

from graphopt.ops import (  # noqa: F401
    attention,
    codebook,
    elementwise,
    fused,
    indexing,
    nn,
    onnx_extra,
    onnx_resize,
    onnx_rnn,
    quant,
    quant_int,
    reduce,
    shape,
)
from graphopt.ops.registry import OpDef, all_ops, get_op, register_lowering, register_op

__all__ = ["OpDef", "all_ops", "get_op", "register_lowering", "register_op"]
