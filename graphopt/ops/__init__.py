"""The built-in IR ops. Importing this package registers them all (see registry.py)."""

from graphopt.ops import attention, elementwise, indexing, nn, reduce, shape  # noqa: F401
from graphopt.ops.registry import OpDef, all_ops, get_op, register_lowering, register_op

__all__ = ["OpDef", "all_ops", "get_op", "register_lowering", "register_op"]
