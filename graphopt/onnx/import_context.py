"""What converters work with: the graph under construction and the values known at import time.

:class:`ImportContext` maps ONNX tensor names to IR values, emits IR nodes, and reads the
import-time value of small tensors (shapes, axes, pads) with validation: ``ctx.ints`` wants a
1-D integer constant, ``ctx.scalar_const`` exactly one number, ``ctx.dims`` a 1-D integer (or
symbolic) shape. A value that depends on run-time data raises :class:`NeedsStaticValue`, which
the importer turns into an ``OnnxImportError`` naming the graph inputs to freeze.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from graphopt.errors import GraphoptError
from graphopt.ir.dtypes import DType, torch_to_numpy
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.types import normalize_dim
from graphopt.onnx.validation import OnnxNode

_KIND_NAMES = {"iu": "integer", "fiu": "numeric", "f": "floating-point", "biu": "integer"}


class NeedsStaticValue(GraphoptError):
    """A converter needs a tensor's value at import time but it depends on run-time data."""

    def __init__(self, tensor: str, what: str):
        self.tensor = tensor
        super().__init__(f"{what} '{tensor}' must be a constant (or computable from shapes), "
                         "but it depends on run-time data")


class ImportContext:
    """The graph under construction, the ONNX-name environment and import-time known values."""

    def __init__(self, graph: Graph, fold_constants: bool):
        self.graph = graph
        self.fold_constants = fold_constants
        self.env: dict[str, Value] = {}
        # Import-time values of small tensors: numpy arrays, object dtype when holding dims.
        self.known: dict[Value, np.ndarray] = {}
        self.node: OnnxNode | None = None
        # Layout nodes a converter added only to reach the IR's layout (e.g. head split/merge
        # around contrib attention); they cancel against the model's own inverse layout ops.
        self.synthetic: set[Node] = set()
        # The model and its opsets (converters of control flow import bodies through
        # importer.run_subgraph), and how many body nodes unrolling has added so far.
        self.model = None
        self.opsets: dict[str, int] = {}
        self.opset = 1
        self.unrolled_nodes = 0
        self.function_depth = 0  # schema function bodies being expanded (import_function)

    def mark_synthetic(self, value: Value) -> Value:
        """Record that ``value``'s producer is an adapter reshape/permute (see synthetic)."""
        if value.producer is not None:
            self.synthetic.add(value.producer)
        return value

    # ---------------------------------------------------------------------------- operands
    def value(self, node: OnnxNode, i: int) -> Value | None:
        """Operand ``i`` as an IR value (None when absent)."""
        if not node.has_input(i):
            return None
        name = node.inputs[i]
        try:
            return self.env[name]
        except KeyError:
            raise GraphoptError(f"{node.describe()} reads '{name}', which nothing defines") \
                from None

    def values(self, node: OnnxNode) -> list[Value]:
        """Every operand of a variadic node (all must be present)."""
        out = [self.value(node, i) for i in range(len(node.inputs))]
        if not out or any(v is None for v in out):
            raise GraphoptError(f"variadic inputs {node.inputs} must all be given")
        return out

    def known_value(self, value: Value | None) -> np.ndarray | None:
        if value is None:
            return None
        if value.kind == "const":
            if value.dtype is DType.bfloat16:
                return None
            return value.data
        return self.known.get(value)

    def maybe_const(self, node: OnnxNode, i: int) -> np.ndarray | None:
        """Operand ``i``'s import-time value, or None (absent or run-time dependent)."""
        v = self.known_value(self.value(node, i))
        if v is None or v.dtype == object:
            return None
        return v

    def const(self, node: OnnxNode, i: int, what: str = "input") -> np.ndarray:
        """Operand ``i``'s value at import time (concrete numbers).

        Raises:
            NeedsStaticValue: it depends on run-time data (or on a symbolic dim).
        """
        v = self._known(node, i, what)
        if v.dtype == object:
            raise NeedsStaticValue(node.inputs[i], f"{what} of {node.describe()}")
        return v

    def _known(self, node: OnnxNode, i: int, what: str) -> np.ndarray:
        value = self.value(node, i)
        if value is None:
            raise GraphoptError(f"input {i} ('{what}') is missing")
        v = self.known_value(value)
        if v is None:
            raise NeedsStaticValue(node.inputs[i], f"{what} of {node.describe()}")
        return v

    def dims(self, node: OnnxNode, i: int, what: str = "input") -> list:
        """Operand ``i`` as a list of ints or symbolic dims (for shapes, sizes, pads)."""
        v = self._known(node, i, what)
        if v.ndim > 1 or (v.dtype != object and v.dtype.kind not in "iu"):
            raise GraphoptError(f"input '{what}' must be a 1-D integer tensor, got "
                                f"{v.dtype} of shape {list(v.shape)}")
        return [normalize_dim(d) if v.dtype == object else int(d) for d in v.reshape(-1)]

    def ints(self, node: OnnxNode, i: int, what: str = "input") -> list[int]:
        """Operand ``i`` as a list of concrete ints (a 0-d or 1-D integer constant)."""
        v = self.const(node, i, what)
        if v.ndim > 1 or v.dtype.kind not in "iu":
            raise GraphoptError(f"input '{what}' must be a 1-D integer tensor, got "
                                f"{v.dtype} of shape {list(v.shape)}")
        return [int(d) for d in v.reshape(-1)]

    def scalar_const(self, node: OnnxNode, i: int, what: str = "input", kinds: str = "iu"):
        """Operand ``i`` as one Python number (a one-element constant of a ``kinds`` dtype)."""
        v = self.const(node, i, what)
        if v.size != 1 or v.dtype.kind not in kinds:
            raise GraphoptError(f"input '{what}' must hold one {_KIND_NAMES.get(kinds, kinds)} "
                                f"value, got {v.dtype} of shape {list(v.shape)}")
        return v.reshape(-1)[0].item()

    # ------------------------------------------------------------------------------- emit
    def emit(self, op: str, inputs: Sequence[Value | None], attrs: dict | None = None):
        """Create an IR node; returns its output (a tuple for multi-output ops)."""
        hint = self.node.outputs[0] if self.node is not None and self.node.outputs else op
        source = self.node.describe() if self.node is not None else None
        node = self.graph.create_node(op, list(inputs), attrs or {}, name=hint, source=source)
        return node.outputs[0] if len(node.outputs) == 1 else tuple(node.outputs)

    def constant(self, array, dtype: DType | None = None, name: str = "const") -> Value:
        if isinstance(array, torch.Tensor):
            array, dtype = torch_to_numpy(array)
        return self.graph.add_constant(np.asarray(array), name, dtype)

    def scalar(self, value, dtype: DType) -> Value:
        """A 0-d constant (scalars do not promote tensors in IR arithmetic, as in torch)."""
        if dtype is DType.bfloat16:
            return self.constant(torch.tensor(value, dtype=torch.bfloat16))
        try:
            array = np.array(value, dtype=dtype.numpy)
        except (OverflowError, ValueError, TypeError):
            raise GraphoptError(f"the constant {value!r} does not fit the operand type {dtype}") \
                from None
        return self.graph.add_constant(array, "scalar", dtype)

    def cast(self, value: Value, dtype: DType) -> Value:
        return value if value.dtype == dtype else self.emit("cast", [value], {"dtype": dtype})
