"""The context a graphopt IR -> ONNX lowering sees: :class:`OnnxLowering`.

It maps IR values to ONNX tensor names and emits ONNX nodes, constants (deduplicated
initializers) and symbolic-size arithmetic. ``graphopt.onnx.export`` drives the lowering and
re-exports this class.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
import sympy
from onnx import helper

from graphopt.errors import GraphoptError, LoweringError
from graphopt.ir.array_identity import same_bytes, sample_digest
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.types import Dim
from graphopt.onnx._common import TO_ONNX_DTYPE, array_to_tensor

class OnnxLowering:
    """What a lowering sees: names of the node's operands/results and helpers to emit ONNX.

    Attributes:
        graph: the IR graph being lowered.
        opset: the default-domain opset of the model being built.
        contrib: whether onnxruntime contrib ops (``com.microsoft``) may be used.
        int8_weights: how int8 weights of integer GEMMs / convolutions are stored, "s8" or
            "u8" (``graphopt.onnx.int8_weights``).
    """

    def __init__(self, graph: Graph, opset: int, contrib: bool, int8_weights: str = "s8"):
        self.graph = graph
        self.opset = opset
        self.contrib = contrib
        self.int8_weights = int8_weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []  # headers; bytes in initializer_data
        self.initializer_data: dict[str, tuple[np.ndarray, DType]] = {}
        self.domains: dict[str, int] = {"": opset}
        self.current: Node | None = None
        self._names: dict[Value, str] = {}
        self._used: set[str] = {v.name for v in graph.values()}
        self._init_by_key: dict[tuple, list[tuple[np.ndarray, str]]] = {}
        self._dim_cache: dict[Any, str] = {}
        self._node_count = 0
        self._temp_count = 0

    # ------------------------------------------------------------------------------ names
    def fresh(self, hint: str = "t") -> str:
        """A tensor name used nowhere else in the model."""
        base = f"{self.current.name}__{hint}" if self.current is not None else hint
        while True:
            self._temp_count += 1
            name = f"{base}_{self._temp_count}"
            if name not in self._used:
                self._used.add(name)
                return name

    def name(self, value: Value) -> str:
        """The ONNX tensor name of an IR value (constants become initializers on first use)."""
        name = self._names.get(value)
        if name is None:
            if value.kind != "const":
                raise GraphoptError(f"%{value.name} is used before it is lowered")
            name = self._add_initializer(value.data, value.dtype, value.name)
            self._names[value] = name
        return name

    def input(self, node: Node, i: int) -> str:
        """The ONNX name of operand ``i`` ('' for an absent optional operand)."""
        v = node.inputs[i] if i < len(node.inputs) else None
        return "" if v is None else self.name(v)

    def output(self, node: Node, i: int = 0) -> str:
        value = node.outputs[i]
        self._names[value] = value.name
        return value.name

    def alias(self, node: Node, name: str, i: int = 0) -> None:
        """Output ``i`` of ``node`` is the existing tensor ``name`` (no node is emitted)."""
        self._names[node.outputs[i]] = name

    def finish(self, node: Node, name: str, i: int = 0) -> None:
        """Make tensor ``name`` output ``i`` of ``node``: a temporary that this lowering just
        produced is renamed to the output's name (keeping IR names in the model), anything
        else is aliased."""
        producer = next((n for n in reversed(self.nodes) if name in n.output), None)
        lowered_here = producer is not None and producer.name.startswith(
            f"{self.current.name}/") and name.startswith(f"{self.current.name}__")
        if not lowered_here:
            self.alias(node, name, i)
            return
        out = self.output(node, i)
        for n in self.nodes:
            for k, inp in enumerate(n.input):
                if inp == name:
                    n.input[k] = out
        producer.output[list(producer.output).index(name)] = out

    # ------------------------------------------------------------------------------ emit
    def op(self, op_type: str, inputs: Sequence[str], *, out: str | None = None,
           outs: int | Sequence[str] | None = None, domain: str = "", **attrs: Any):
        """Emit one ONNX node; returns its output name (a list when ``outs`` is given).

        Attribute values are passed to ``onnx.helper.make_node``: give floats as ``float``
        (an ``int`` becomes an INT attribute). ``None`` attributes are left out.
        """
        if outs is None:
            names = [out if out is not None else self.fresh(op_type.lower())]
        elif isinstance(outs, int):
            names = [self.fresh(f"{op_type.lower()}{i}") for i in range(outs)]
        else:
            names = list(outs)
        if domain:
            self.domains.setdefault(domain, 1)
        base = self.current.name if self.current is not None else "graph"
        self._node_count += 1
        node = helper.make_node(
            op_type, list(inputs), names, name=f"{base}/{op_type}_{self._node_count}",
            domain=domain or None, **{k: v for k, v in attrs.items() if v is not None},
        )
        self.nodes.append(node)
        return names if outs is not None else names[0]

    def const(self, array, dtype: DType | None = None, hint: str = "const") -> str:
        """An initializer holding ``array`` (deduplicated by content)."""
        array = np.asarray(array)
        if dtype is None:
            dtype = DType.from_numpy(array.dtype)
        elif dtype is not DType.bfloat16:
            array = array.astype(dtype.numpy, copy=False)  # a weight is not copied
        return self._add_initializer(array, dtype, hint)

    def scalar(self, value, dtype: DType) -> str:
        """A 0-d initializer of ``dtype`` (bf16 from a Python float is rounded to nearest)."""
        if dtype is DType.bfloat16:
            import torch

            bits = torch.tensor(value, dtype=torch.bfloat16).view(torch.int16).numpy()
            return self.const(bits.astype(np.uint16), DType.bfloat16, "scalar")
        return self.const(np.array(value, dtype=dtype.numpy), dtype, "scalar")

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 initializer (for shapes, axes, pads...)."""
        return self.const(np.array([int(v) for v in values], dtype=np.int64), DType.int64, "ints")

    def cast(self, name: str, src: DType, dst: DType) -> str:
        """``name`` converted to ``dst`` (no node when it already is)."""
        if src == dst:
            return name
        return self.op("Cast", [name], to=TO_ONNX_DTYPE[dst])

    def input_as(self, node: Node, i: int, dtype: DType) -> str:
        """Operand ``i`` cast to ``dtype`` (torch promotion made explicit for ONNX)."""
        return self.cast(self.input(node, i), node.inputs[i].dtype, dtype)

    def fail(self, reason: str) -> LoweringError:
        """A typed error naming the node being lowered; ``raise ctx.fail("why")``."""
        node = self.current
        return LoweringError("onnx", [(node.op, node.describe(), reason)])

    # -------------------------------------------------------------------- symbolic sizes
    def shape_tensor(self, dims: Sequence[Dim]) -> str:
        """A 1-D int64 tensor holding ``dims`` (computed from input shapes for size symbols)."""
        if all(isinstance(d, int) for d in dims):
            return self.ints(dims)
        pieces: list[str] = []
        run: list[int] = []
        for d in dims:
            if isinstance(d, int):
                run.append(d)
                continue
            if run:
                pieces.append(self.ints(run))
                run = []
            pieces.append(self.dim_tensor(d))
        if run:
            pieces.append(self.ints(run))
        return pieces[0] if len(pieces) == 1 else self.op("Concat", pieces, axis=0)

    def dim_tensor(self, dim: Dim) -> str:
        """A 1-element int64 tensor holding the run-time value of ``dim``."""
        if isinstance(dim, int):
            return self.ints([dim])
        if dim.is_number:
            return self.ints([int(dim)])
        key = sympy.srepr(dim)
        if key not in self._dim_cache:
            self._dim_cache[key] = self._lower_dim_expr(dim)
        return self._dim_cache[key]

    def _lower_dim_expr(self, expr: sympy.Expr) -> str:
        if expr.is_Integer:
            return self.ints([int(expr)])
        if expr.is_Symbol:
            source = self.graph.symbol_sources.get(expr)
            if source is None:
                raise self.fail(f"size symbol {expr} is not a dim of any graph input")
            index, axis = source
            shape_input = self.name(self.graph.inputs[index])
            if self.opset >= 15:
                return self.op("Shape", [shape_input], start=axis, end=axis + 1)
            return self.op("Gather", [self.op("Shape", [shape_input]), self.ints([axis])], axis=0)
        if expr.is_Add:
            terms = [self.dim_tensor(a) for a in expr.args]
            out = terms[0]
            for t in terms[1:]:
                out = self.op("Add", [out, t])
            return out
        if expr.is_Mul:
            coeff, rest = expr.as_coeff_Mul()
            num, den = sympy.fraction(sympy.Rational(coeff))
            out = self.dim_tensor(rest) if rest != 1 else self.ints([1])
            if num != 1:
                out = self.op("Mul", [out, self.ints([int(num)])])
            if den != 1:
                out = self.op("Div", [out, self.ints([int(den)])])
            return out
        if expr.is_Pow and expr.exp.is_Integer and int(expr.exp) > 0:
            base = self.dim_tensor(expr.base)
            out = base
            for _ in range(int(expr.exp) - 1):
                out = self.op("Mul", [out, base])
            return out
        if isinstance(expr, (sympy.floor, sympy.ceiling)):
            arg = expr.args[0]
            num, den = sympy.fraction(sympy.together(arg))
            if den.is_Integer:
                n = self.dim_tensor(num)
                if isinstance(expr, sympy.ceiling):
                    n = self.op("Add", [n, self.ints([int(den) - 1])])
                # Sizes are non-negative, where ONNX's truncating Div equals floor division.
                return self.op("Div", [n, self.ints([int(den)])])
        if isinstance(expr, sympy.Mod):
            return self.op("Mod", [self.dim_tensor(expr.args[0]), self.dim_tensor(expr.args[1])])
        if isinstance(expr, (sympy.Max, sympy.Min)):
            args = [self.dim_tensor(a) for a in expr.args]
            return self.op("Max" if isinstance(expr, sympy.Max) else "Min", args)
        raise self.fail(f"cannot compute the size expression {expr} in ONNX")

    # ------------------------------------------------------------------------------ internals
    def _add_initializer(self, array: np.ndarray, dtype: DType, hint: str) -> str:
        # No copy of the weights while lowering: equal arrays are found by a sampled digest
        # and a byte comparison (graphopt.ir.array_identity), and the bytes are written once
        # at the end (_fill_initializers), in place or to the data file, in C order.
        candidates = self._init_by_key.setdefault((dtype, sample_digest(array)), [])
        for known, name in candidates:
            if same_bytes(known, array):
                return name
        name = hint if hint not in self._used else self.fresh(hint)
        self._used.add(name)
        candidates.append((array, name))
        self.initializers.append(array_to_tensor(array, dtype, name, data=False))
        self.initializer_data[name] = (array, dtype)
        return name
