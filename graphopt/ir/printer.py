"""Readable, stable text form of a graph; ``graphopt.ir.parser`` reads it back.

Example::

    graph main(%x: f32[1, 3, 8, 8], %ids: i64[s0, 128]) {
      const %conv.weight: f32[16, 3, 3, 3]
      const %scale: f32[] = 0.125
      %conv: f32[1, 16, 8, 8] = conv(%x, %conv.weight, None) {groups=1, stride=[1, 1]}
      %split: f32[1, 8, 8, 8], %split.1: f32[1, 8, 8, 8] = split(%conv) {axis=1, sizes=[8, 8]}
      return %split, %split.1
    }

Constants with at most ``INLINE_LIMIT`` elements print their data; larger ones print only their
type, and the parser takes their arrays from its ``constants=`` argument. A constant carrying a
sparse (CSR) encoding (``graphopt.ir.encodings``: an unstructured-pruned weight) is marked
``sparse(nnz=N)`` (``sparse(nnz=N, transposed)`` for a matmul right operand) after its type.
Every literal is printed so that it parses back to the same value (floats in shortest
round-tripping form, never as a bare integer), which is what makes golden IR tests and
``parse(print(g))`` exact.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import sympy

from graphopt.ir.dtypes import DType
from graphopt.ir.encodings import sparse_weight
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.types import QuantInfo, TensorType, dim_str

INLINE_LIMIT = 16  # constants with more elements print without data
_BARE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")


def print_graph(graph: Graph) -> str:
    """The text form of ``graph`` (no trailing newline); see the module docstring."""
    params = ", ".join(f"%{v.name}: {format_type(v.type)}" for v in graph.inputs)
    name = graph.name if _BARE_NAME.match(graph.name) else json.dumps(graph.name)
    lines = [f"graph {name}({params}) {{"]
    lines += ["  " + format_constant(v) for v in graph.constants.values()]
    lines += ["  " + format_node(node) for node in graph.nodes]
    results = ", ".join(f"%{v.name}" for v in graph.outputs)
    lines.append(f"  return {results}" if results else "  return")
    lines.append("}")
    return "\n".join(lines)


def format_type(t: TensorType) -> str:
    """``f32[1, s0]``, plus ``{scale=[...], zp=[...], axis=0, bits=8}`` for quantized types."""
    text = f"{t.dtype}[{', '.join(dim_str(d) for d in t.shape)}]"
    if t.quant is not None:
        text += format_quant(t.quant)
    return text


def format_quant(q: QuantInfo) -> str:
    # Unlike QuantInfo.__str__, this keeps every per-channel scale so the parser can rebuild it.
    scale = ", ".join(format_float(float(s)) for s in q.scale)
    zero_point = ", ".join(str(int(z)) for z in q.zero_point)
    axis = "" if q.axis is None else f", axis={int(q.axis)}"
    return f"{{scale=[{scale}], zp=[{zero_point}]{axis}, bits={int(q.bits)}}}"


def format_constant(value: Value) -> str:
    """``const %name: type [sparse(...)]`` with ``= data`` when the constant is small enough."""
    text = f"const %{value.name}: {format_type(value.type)}{format_sparse(value)}"
    data = value.data
    if data is not None and data.size <= INLINE_LIMIT:
        text += " = " + format_data(data, value.dtype)
    return text


def format_sparse(value: Value) -> str:
    """`` sparse(nnz=N[, transposed])`` when ``value`` carries a CSR record, else ``""``.

    Only the marker is printed, not the CSR arrays: a record is the CSR form of the constant's
    own non-zeros, so the parser rebuilds it identically from the array (see
    ``graphopt.ir.parser``); ``nnz`` lets it check that the array is the one that was printed.
    """
    record = sparse_weight(value)
    if record is None:
        return ""
    return f" sparse(nnz={record.nnz}{', transposed' if record.transposed else ''})"


def format_node(node: Node) -> str:
    """``%a: T, %b: T = op(%x, None) {attr=value}``; a node without outputs omits ``... =``."""
    args = ", ".join("None" if v is None else f"%{v.name}" for v in node.inputs)
    text = f"{node.op}({args})"
    if node.attrs:
        items = sorted(node.attrs.items())  # Attrs is sorted already; plain dicts may not be
        text += " {" + ", ".join(f"{k}={format_attr_value(v)}" for k, v in items) + "}"
    if not node.outputs:
        return text
    outs = ", ".join(f"%{v.name}: {format_type(v.type)}" for v in node.outputs)
    return f"{outs} = {text}"


def format_attr_value(value: Any) -> str:
    """Attribute literal: ints, floats, true/false, none, "strings", f32, sym(...), [a, b]."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, DType):
        return str(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return format_float(float(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, sympy.Expr):
        return f"sym({value})"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_attr_value(v) for v in value) + "]"
    raise TypeError(f"cannot print attribute value {value!r} of type {type(value).__name__}")


def format_float(x: float) -> str:
    """``repr`` of a Python float (always with '.' or 'e'), or ``inf``/``-inf``/``nan``/``-nan``
    (a NaN keeps its sign bit: x86 gives -nan for 0 * inf, and folded constants keep it)."""
    if math.isnan(x):
        return "-nan" if math.copysign(1.0, x) < 0 else "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


def format_data(data: np.ndarray, dtype: DType) -> str:
    """A bare literal for 0-d data, else nested ``[...]`` lists matching the shape."""
    if dtype is DType.bfloat16:
        # bf16 bits are the top half of a float32: widen them to get exact values (and no torch
        # round trip, which warns on read-only arrays).
        data = (data.astype(np.uint32) << 16).view(np.float32)
    flat = [_element(x, dtype) for x in data.reshape(-1)]
    return _nest(flat, 0, tuple(data.shape))


def _element(x: Any, dtype: DType) -> str:
    if dtype is DType.bool:
        return "true" if bool(x) else "false"
    if not dtype.is_floating:
        return str(int(x))
    if not math.isfinite(float(x)):
        return format_float(float(x))
    # numpy prints the shortest text that identifies the value in its own precision (0.1, not
    # 0.10000000149011612 for f32). The parser goes text -> Python float -> storage dtype; fall
    # back to the exact float64 repr in the rare case where that double rounding would differ.
    text = str(x)
    if type(x)(float(text)) != x:
        text = repr(float(x))
    return text


def _nest(flat: list[str], offset: int, shape: tuple[int, ...]) -> str:
    if not shape:
        return flat[offset]
    step = int(np.prod(shape[1:], dtype=np.int64))
    items = (_nest(flat, offset + i * step, shape[1:]) for i in range(shape[0]))
    return "[" + ", ".join(items) + "]"
