"""Checks on ONNX data where it enters the importer: node views, value types, node schemas.

An ONNX file is untrusted input. ``onnx.checker`` catches much (and ``from_onnx`` runs it), but
it can be switched off, and it does not check what the IR relies on: that dims are non-negative,
that an axis is in range for the operand's rank *at import time*, that a stride is non-zero.
Everything here raises a :class:`~graphopt.errors.GraphoptError` that names the node, the
attribute or the tensor, and how to fix it, instead of letting a crafted value turn into a
``ZeroDivisionError`` deep in a shape rule or, worse, be silently wrapped into another axis.

* :class:`OnnxNode`: the read-only node view converters get, with validating accessors
  (``axis``, ``axes``, ``positive_ints``...).
* :func:`check_node_schema`: input/output counts, required inputs present and attribute types,
  against the ONNX schema of the node's opset (and a small table for onnxruntime contrib ops).
* :func:`value_type`: a graph input's TensorType (known dtype, dims >= 0, symbol names that are
  plain identifiers: no text from the file is ever evaluated).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Iterable

import onnx
import sympy
from onnx import AttributeProto

from graphopt.errors import GraphoptError, OnnxImportError
from graphopt.ir.types import TensorType
from graphopt.onnx._common import (
    FROM_ONNX_DTYPE,
    MICROSOFT,
    check_dims_product,
    onnx_dtype_name,
)

REQUIRED = object()
MAX_DIM_PARAM = 256
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")

_KINDS = {AttributeProto.INT: "int", AttributeProto.FLOAT: "float",
          AttributeProto.STRING: "string", AttributeProto.INTS: "ints",
          AttributeProto.FLOATS: "floats", AttributeProto.STRINGS: "strings",
          AttributeProto.TENSOR: "tensor"}


def _kind_of_default(default: Any) -> tuple[int, ...] | None:
    """The attribute types a converter's default value implies (None: no constraint)."""
    if isinstance(default, bool) or default is None or default is REQUIRED:
        return None
    if isinstance(default, int):
        return (AttributeProto.INT,)
    if isinstance(default, float):
        return (AttributeProto.FLOAT,)
    if isinstance(default, str):
        return (AttributeProto.STRING,)
    if isinstance(default, (list, tuple)):
        return (AttributeProto.INTS, AttributeProto.FLOATS, AttributeProto.STRINGS)
    return None


class OnnxNode:
    """A read-only view of one ONNX node for converters, with validating accessors.

    Accessor errors are :class:`GraphoptError`; the importer prefixes them with the node's
    description, so they only need to name the attribute or operand.
    """

    def __init__(self, proto: onnx.NodeProto, opset: int):
        self.proto = proto
        self.op_type = proto.op_type
        self.domain = proto.domain
        self.opset = opset
        self.inputs = list(proto.input)
        while self.inputs and not self.inputs[-1]:
            self.inputs.pop()
        self.outputs = list(proto.output)
        self.name = proto.name or (proto.output[0] if proto.output else proto.op_type)
        self._attrs = {a.name: a for a in proto.attribute}

    def has_input(self, i: int) -> bool:
        return i < len(self.inputs) and bool(self.inputs[i])

    def has_attr(self, name: str) -> bool:
        return name in self._attrs

    def attr(self, name: str, default: Any = REQUIRED) -> Any:
        """The attribute as a Python value (str for strings, list for repeated, a TensorProto
        for tensors). A default implies the expected type: an int default wants an INT."""
        a = self._attrs.get(name)
        if a is None:
            if default is REQUIRED:
                raise GraphoptError(f"required attribute '{name}' is missing; add it to the "
                                    "node")
            return default
        if a.ref_attr_name:
            raise GraphoptError(f"attribute references ('{a.ref_attr_name}') only exist inside "
                                "functions")
        t = a.type
        expected = _kind_of_default(default)
        if expected is not None and t not in expected:
            raise GraphoptError(f"attribute '{name}' is of type {_KINDS.get(t, t)}, expected "
                                f"{' or '.join(_KINDS[k] for k in expected)}")
        if t == AttributeProto.INT:
            return int(a.i)
        if t == AttributeProto.FLOAT:
            return float(a.f)
        if t == AttributeProto.STRING:
            return a.s.decode("utf-8", errors="replace")
        if t == AttributeProto.INTS:
            return [int(v) for v in a.ints]
        if t == AttributeProto.FLOATS:
            return [float(v) for v in a.floats]
        if t == AttributeProto.STRINGS:
            return [s.decode("utf-8", errors="replace") for s in a.strings]
        if t == AttributeProto.TENSOR:
            return a.t
        raise GraphoptError(f"attribute '{name}' has type "
                            f"{AttributeProto.AttributeType.Name(t) if t in _ALL_TYPES else t},"
                            " which graphopt does not import")

    def graph_attr(self, name: str) -> onnx.GraphProto:
        """A GRAPH attribute (a control-flow body)."""
        a = self._attrs.get(name)
        if a is None or a.type != AttributeProto.GRAPH:
            raise GraphoptError(f"attribute '{name}' must be a graph (the loop body)")
        return a.g

    def describe(self) -> str:
        return f"{self.op_type} node '{self.name}'"

    # ----------------------------------------------------------------- validating accessors
    def axis(self, axis: int, rank: int, what: str = "axis") -> int:
        """``axis`` normalized into [0, rank): ONNX allows [-rank, rank - 1]; anything else is
        an error, not a silent wrap-around. A rank-0 operand takes axis 0 or -1."""
        r = max(int(rank), 1)
        axis = int(axis)
        if not -r <= axis < r:
            raise GraphoptError(f"{what} {axis} is out of range for a rank-{rank} tensor "
                                f"(ONNX allows [{-r}, {r - 1}])")
        return axis + r if axis < 0 else axis

    def axis_attr(self, name: str, default: int, rank: int) -> int:
        return self.axis(self.attr(name, default), rank, f"attribute '{name}'")

    def axes(self, axes: Iterable[int], rank: int, what: str = "axes") -> list[int]:
        """Each axis normalized (see :meth:`axis`); repeated axes are an error."""
        out = [self.axis(a, rank, f"{what} entry") for a in axes]
        if len(set(out)) != len(out):
            raise GraphoptError(f"{what} {list(axes)} name an axis twice")
        return out

    def ints(self, name: str, default: list[int] | None, length: int | None = None,
             minimum: int | None = None, what: str | None = None) -> list[int] | None:
        """An INTS attribute with an expected length and a lower bound on each entry."""
        values = self.attr(name, default)
        if values is None:
            return None
        label = what or f"attribute '{name}'"
        if not isinstance(values, list) or any(not isinstance(v, int) for v in values):
            raise GraphoptError(f"{label} must be a list of ints, got {values!r}")
        if length is not None and len(values) != length:
            raise GraphoptError(f"{label} = {values} has {len(values)} entries, expected "
                                f"{length}")
        if minimum is not None and any(v < minimum for v in values):
            raise GraphoptError(f"{label} = {values} has entries below {minimum}; ONNX "
                                f"requires each to be >= {minimum}")
        return values

    def positive_int(self, name: str, default: int | Any = REQUIRED) -> int:
        value = self.attr(name, default)
        if not isinstance(value, int) or value < 1:
            raise GraphoptError(f"attribute '{name}' = {value!r} must be a positive integer")
        return value

    def choice(self, name: str, default: str, allowed: Iterable[str]) -> str:
        value = self.attr(name, default)
        allowed = tuple(allowed)
        if value not in allowed:
            raise GraphoptError(f"attribute '{name}' = {value!r} is not one of {list(allowed)}")
        return value


_ALL_TYPES = set(AttributeProto.AttributeType.values())


# ------------------------------------------------------------------------- node schemas
# Minimum operand counts of the onnxruntime contrib ops graphopt imports (no onnx schema).
_CONTRIB_MIN_INPUTS = {"Gelu": 1, "FastGelu": 1, "BiasGelu": 2, "FusedMatMul": 2,
                       "FusedGemm": 2, "QuickGelu": 1, "FusedConv": 2, "MultiHeadAttention": 1}
_CONTRIB_ATTR_TYPES = {"num_heads": AttributeProto.INT, "activation": AttributeProto.STRING,
                       "activation_params": AttributeProto.FLOATS,
                       "unidirectional": AttributeProto.INT, "scale": AttributeProto.FLOAT}


@lru_cache(maxsize=4096)
def op_schema(op_type: str, opset: int, domain: str):
    try:
        return onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None


def check_node_schema(proto: onnx.NodeProto, opset: int, domain: str) -> None:
    """Operand/result counts, required operands and attribute types against the op's schema.

    The checker does this too, but ``check=False`` skips it and converters index operands
    and read attributes by position and type, so a node missing its weight would otherwise
    reach a converter as ``None``.
    """
    what = f"{proto.op_type} node '{proto.name or (proto.output[0] if proto.output else '?')}'"
    if domain == MICROSOFT:
        need = _CONTRIB_MIN_INPUTS.get(proto.op_type, 0)
        missing = [i for i in range(need) if i >= len(proto.input) or not proto.input[i]]
        if missing:
            raise OnnxImportError(f"{what} lacks its required input(s) at position(s) "
                                  f"{missing}; fix the model's node")
        for a in proto.attribute:
            want = _CONTRIB_ATTR_TYPES.get(a.name)
            if want is not None and a.type != want:
                raise OnnxImportError(f"{what}: attribute '{a.name}' is of type "
                                      f"{_KINDS.get(a.type, a.type)}, expected {_KINDS[want]}")
        return
    schema = op_schema(proto.op_type, int(opset), domain)
    if schema is None:
        if domain or op_schema(proto.op_type, onnx.defs.onnx_opset_version(), domain) is None:
            return  # unknown to this onnx version: the converter reads what it needs
        raise OnnxImportError(f"{what}: {proto.op_type} does not exist at opset {opset} of the "
                              "default domain (it was added in a later opset); fix the model's "
                              "opset_import")
    n_in = len(proto.input)
    while n_in and not proto.input[n_in - 1]:
        n_in -= 1
    if n_in < schema.min_input or n_in > schema.max_input:
        raise OnnxImportError(f"{what} has {n_in} input(s); {proto.op_type}-"
                              f"{schema.since_version} takes {schema.min_input} to "
                              f"{schema.max_input}")
    single = onnx.defs.OpSchema.FormalParameterOption.Single
    for i, formal in enumerate(schema.inputs):
        if formal.option == single and (i >= len(proto.input) or not proto.input[i]):
            raise OnnxImportError(f"{what} lacks its required input {i} ('{formal.name}')")
    if not schema.min_output <= len(proto.output) <= schema.max_output:
        raise OnnxImportError(f"{what} has {len(proto.output)} output(s); {proto.op_type}-"
                              f"{schema.since_version} has {schema.min_output} to "
                              f"{schema.max_output}")
    for a in proto.attribute:
        declared = schema.attributes.get(a.name)
        if declared is None:
            raise OnnxImportError(f"{what}: '{a.name}' is not an attribute of {proto.op_type}-"
                                  f"{schema.since_version} (opset {opset}); remove it or fix "
                                  "the model's opset_import")
        if int(declared.type) != a.type:
            raise OnnxImportError(f"{what}: attribute '{a.name}' is of type "
                                  f"{_KINDS.get(a.type, a.type)}, but {proto.op_type} declares "
                                  f"it {_KINDS.get(int(declared.type), declared.type)}")


def check_opsets(opsets: dict[str, int], where: str) -> None:
    """The default-domain opset must be one the installed onnx package defines."""
    newest = onnx.defs.onnx_opset_version()
    for domain in ("", "ai.onnx"):
        version = opsets.get(domain)
        if version is not None and not 1 <= version <= newest:
            raise OnnxImportError(f"{where} imports opset {version} of the default domain; "
                                  f"valid versions are 1 to {newest} (upgrade onnx for newer)")


# --------------------------------------------------------------------------- value types
def symbol(name: str, cache: dict[str, sympy.Symbol]) -> sympy.Symbol:
    """The size symbol of an ONNX ``dim_param``: a plain name, never parsed or evaluated.

    Names that are not identifiers (``"batch size"``, ``"N*2"``) are mapped to one by
    replacing other characters with ``_``; names of sympy functions or constants get a
    trailing ``_`` so that printing and re-parsing the IR keeps them symbols.
    """
    if len(name) > MAX_DIM_PARAM:
        raise OnnxImportError(f"dim_param '{name[:40]}...' is {len(name)} characters long (at "
                              f"most {MAX_DIM_PARAM}); use a short symbol name")
    clean = re.sub(r"[^A-Za-z0-9_]", "_", name) or "d"
    if not _IDENT.match(clean):
        clean = "d_" + clean
    if hasattr(sympy, clean) or len(clean) == 1 and clean in "NSEIOQ":
        clean += "_"
    if clean not in cache:
        cache[clean] = sympy.Symbol(clean, integer=True, positive=True)
    return cache[clean]


def value_type(info: onnx.ValueInfoProto, symbols: dict, what: str) -> TensorType:
    """The TensorType of a graph input: a tensor of a known dtype, dims >= 0 or symbols."""
    which = info.type.WhichOneof("value")
    if which != "tensor_type":
        raise OnnxImportError(f"{what} '{info.name}' is a {which or 'untyped value'}; graphopt "
                              "graphs take tensors only")
    tt = info.type.tensor_type
    dtype = FROM_ONNX_DTYPE.get(tt.elem_type)
    if dtype is None:
        raise OnnxImportError(f"{what} '{info.name}' has element type "
                              f"{onnx_dtype_name(tt.elem_type)}, which graphopt does not support")
    if not tt.HasField("shape"):
        raise OnnxImportError(f"{what} '{info.name}' has no shape (not even a rank)")
    dims = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value"):
            if d.dim_value < 0:
                raise OnnxImportError(f"{what} '{info.name}' declares dim {i} as "
                                      f"{d.dim_value}; dims must be >= 0 (use a dim_param "
                                      "name for an unknown size)")
            dims.append(int(d.dim_value))
        elif d.dim_param:
            dims.append(symbol(d.dim_param, symbols))
        else:
            dims.append(symbol(f"{info.name[:MAX_DIM_PARAM - 16]}_dim{i}", symbols))
    check_dims_product(dims, f"{what} '{info.name}'", dtype.itemsize)
    return TensorType(tuple(dims), dtype)
