"""Parse the text form written by ``graphopt.ir.printer`` back into a ``Graph``.

A constant marked ``sparse(nnz=N)`` gets its CSR encoding (``graphopt.ir.encodings``) rebuilt
from its array, which must have exactly N non-zeros. The record is derived data (the CSR of the
array's own non-zeros, deterministic), so the text keeps *which* constants carry one rather than
a copy of their values; rebuilding all records with ``mark_sparse`` on parse instead would not
round-trip: its sparsity threshold adds records to weights that had none and misses weights
pruned below it, and the native backend picks its kernels from exactly this set (the
``graphopt.native`` artifact is IR text + arrays, so a saved pruned model keeps its sparse
kernels).

The graph is built through ``Graph.add_input``/``add_constant``/``create_node``, so attribute
schemas and arities are checked as usual, and every node's declared output types must equal what
the op's shape rule infers: a golden IR test with a wrong type fails here instead of passing
silently. Every error is a ``ParseError`` carrying ``line:col`` and a caret under the culprit.

Grammar (whitespace-insensitive; ``#`` starts a comment that runs to the end of the line)::

    graph    := "graph" NAME "(" [param ("," param)*] ")" "{" stmt* "return" [vals] "}"
    param    := VALUE ":" type
    stmt     := "const" VALUE ":" type [sparse] ["=" literal]
              | [VALUE ":" type ("," VALUE ":" type)* "="] OP "(" [operand ("," operand)*] ")"
                ["{" [IDENT "=" attr ("," IDENT "=" attr)*] "}"]
    type     := DTYPE "[" [dim ("," dim)*] "]" ["{" "scale=" list "," "zp=" list ... "}"]
    sparse   := "sparse" "(" "nnz" "=" INT ["," "transposed"] ")"
    operand  := VALUE | "None"
    attr     := INT | FLOAT | "inf" | "-inf" | "nan" | "true" | "false" | "none" | STRING
              | DTYPE | "sym(" EXPR ")" | "[" [attr ("," attr)*] "]"
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from graphopt.errors import GraphoptError, ParseError, UnknownOpError, entry_point
from graphopt.ir.dtypes import DType, torch_to_numpy
from graphopt.ir.encodings import attach_sparse
from graphopt.ir.graph import Graph, Value
from graphopt.ir.lexer import MAX_NESTING, _IDENT, _NUMBER, Lexer, _number, _Seq
from graphopt.ir.printer import format_type
from graphopt.ir.schema import all_ops, get_op
from graphopt.ir.symexpr import SizeExprError
from graphopt.ir.types import QuantInfo, TensorType, parse_dim

__all__ = ["MAX_NESTING", "parse_graph"]

_QUANT_START = re.compile(r"\s*\{\s*(?:scale|zp|axis|bits)\s*=")
_KEYWORD_CONSTS = {"true": True, "false": False, "none": None}

@entry_point("graphopt.parse")
def parse_graph(text: str, constants: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Build a graph from its text form.

    Args:
        text: IR text as written by ``print_graph`` (or by hand).
        constants: arrays for the constants printed without inline data, by name (without
            ``%``). For bfloat16 constants pass the raw ``np.uint16`` bits. The arrays are shared
            with the graph, not copied (``add_constant`` marks them read-only).

    Returns:
        The graph, with the value names exactly as in the text.

    Raises:
        ParseError: malformed text, unknown op/dtype/value, duplicate definition, a constant
            without data, or a declared type that differs from the inferred one.
    """
    if not isinstance(text, str):
        raise ParseError(f"IR text must be a str, got {type(text).__name__} (decode bytes first)")
    return _Parser(text, constants or {}).parse()


class _Parser(Lexer):
    def __init__(self, text: str, constants: Mapping[str, np.ndarray]):
        super().__init__(text)
        self.constants = constants
        self.graph = Graph()
        self.env: dict[str, tuple[Value, int]] = {}  # name -> (value, position of definition)
        self.dims: dict[str, Any] = {}  # sympify is slow and the same dims recur on every line

    # ------------------------------------------------------------------------------- grammar
    def parse(self) -> Graph:
        if not self.keyword("graph"):
            self.error(f"expected 'graph', found {self.found()}")
        self.graph.name = self.string() if self.peek('"') else self.ident("a graph name")[0]
        self.expect("(")
        self.items(")", self.graph_input, "after a graph input")
        self.expect("{")
        while not self.keyword("return"):
            if self.pos >= len(self.text) or self.peek("}"):
                self.error(f"expected 'return' before the end of the graph, found {self.found()}")
            if self.keyword("const"):
                self.constant()
            else:
                self.node()
        self.graph.set_outputs(self.items("}", self.use, "closing the graph"))
        self.skip()
        if self.pos < len(self.text):
            self.error(f"unexpected text after the graph: {self.found()}")
        return self.graph

    def check_new(self, name: str, pos: int) -> None:
        if name in self.env:
            first = self.text.count("\n", 0, self.env[name][1]) + 1
            self.error(f"duplicate definition of %{name} (first defined on line {first})", pos)

    def bind(self, name: str, pos: int, value: Value) -> None:
        if value.name != name:  # unique_name keeps names that are free, and ours are checked
            self.error(f"%{name} was renamed to %{value.name} by the graph", pos)
        self.env[name] = (value, pos)

    def graph_input(self) -> None:
        name, pos = self.value_name()
        self.check_new(name, pos)
        self.expect(":")
        self.bind(name, pos, self.graph.add_input(name, self.type()))

    def use(self) -> Value:
        name, pos = self.value_name()
        if name not in self.env:
            self.error(f"undefined value %{name}", pos)
        return self.env[name][0]

    def type(self) -> TensorType:
        name, pos = self.ident("a dtype")
        try:
            dtype = DType.parse(name)
        except ValueError as exc:
            self.error(str(exc), pos)
        self.expect("[", "after the dtype")
        dims = self.items("]", lambda: self.dim(*self.balanced(",]")), "in a shape")
        quant = self.quant() if _QUANT_START.match(self.text, self.pos) else None
        try:
            return TensorType(tuple(dims), dtype, quant)
        except (GraphoptError, TypeError, ValueError) as exc:
            self.error(f"invalid type: {exc}", pos)

    def dim(self, text: str, pos: int):
        if text in self.dims:
            return self.dims[text]
        if not text:
            self.error("empty dim", pos)
        try:
            dim = parse_dim(text)
        except SizeExprError as exc:
            self.error(f"malformed dim '{text}': {exc}", pos)
        if not isinstance(dim, int) and not (getattr(dim, "free_symbols", None)):
            self.error(f"dim '{text}' is neither an integer nor a symbolic size", pos)
        self.dims[text] = dim
        return dim

    def quant(self) -> QuantInfo:
        start = self.pos
        fields = self.attr_dict()
        unknown = sorted(set(fields) - {"scale", "zp", "axis", "bits"})
        if unknown or "scale" not in fields or "zp" not in fields:
            self.error("quantization must be {scale=[...], zp=[...], axis=N, bits=N}", start)
        try:
            return QuantInfo(
                scale=tuple(float(s) for s in fields["scale"]),
                zero_point=tuple(_as_int(z) for z in fields["zp"]),
                axis=None if fields.get("axis") is None else _as_int(fields["axis"]),
                bits=_as_int(fields.get("bits", 8)),
            )
        except (TypeError, ValueError) as exc:
            self.error(f"malformed quantization: {exc}", start)

    def constant(self) -> None:
        name, pos = self.value_name()
        self.check_new(name, pos)
        self.expect(":")
        self.skip()
        type_pos = self.pos
        type_ = self.type()
        if not type_.is_static:
            self.error(f"constant %{name} must have a static shape, got {type_}", type_pos)
        sparse = self.sparse_marker() if self.keyword("sparse") else None
        if self.accept("="):
            data = self.data(self.literal(), type_)
        elif name in self.constants:
            data = np.asarray(self.constants[name])
            dtype = type_.dtype.numpy
            if data.shape != type_.shape or data.dtype != dtype:
                self.error(
                    f"constants['{name}'] is {data.dtype}{list(data.shape)}, but %{name} is "
                    f"{type_} (numpy storage {dtype}{list(type_.shape)})",
                    pos,
                )
        else:
            self.error(
                f"constant %{name} has no inline data: pass its array with "
                f"parse_graph(text, constants={{'{name}': array, ...}})",
                pos,
            )
        # A given 2-D array may be a transposed view (a saved transposed weight, memory-mapped
        # in Fortran order): kept as it is rather than copied to C order.
        value = self.graph.add_constant(data, name, dtype=type_.dtype, transposed_view=True)
        if type_.quant is not None:
            value.type = type_
        if sparse is not None:
            self.attach_sparse(value, *sparse)
        self.bind(name, pos, value)

    def sparse_marker(self) -> tuple[int, bool, int]:
        """``(nnz=N[, transposed])`` after the keyword: (N, transposed, position)."""
        start = self.pos
        self.expect("(", "after 'sparse'")
        if not self.keyword("nnz"):
            self.error(f"expected 'nnz=' in sparse(...), found {self.found()}")
        self.expect("=")
        text, pos = self.token(_NUMBER, "the number of non-zeros")
        if not text.isdigit():
            self.error(f"nnz must be a non-negative integer, got {text}", pos)
        transposed = False
        if self.accept(","):
            if not self.keyword("transposed"):
                self.error(f"expected 'transposed' in sparse(...), found {self.found()}")
            transposed = True
        self.expect(")", "closing sparse(...)")
        return int(text), transposed, start

    def attach_sparse(self, value: Value, nnz: int, transposed: bool, pos: int) -> None:
        if not value.dtype.is_floating or value.data.ndim < 2 or \
                (transposed and value.data.ndim != 2):
            self.error(f"sparse(...) needs a floating constant of rank >= 2 (2 when transposed), "
                       f"%{value.name} is {value.type}", pos)
        found = int(np.count_nonzero(value.data))
        if found != nnz:
            self.error(f"%{value.name} is marked sparse(nnz={nnz}) but its data has {found} "
                       "non-zeros (not the array that was printed?)", pos)
        attach_sparse(value, transposed)

    def node(self) -> None:
        outs: list[tuple[str, int, TensorType, int]] = []
        if self.peek("%"):
            while True:
                name, pos = self.value_name()
                self.check_new(name, pos)
                if any(name == o[0] for o in outs):
                    self.error(f"duplicate definition of %{name} in the same node", pos)
                self.expect(":")
                self.skip()
                type_pos = self.pos
                outs.append((name, pos, self.type(), type_pos))
                if self.accept("="):
                    break
                self.expect(",", "or '=' after a node output")
        op, op_pos = self.ident("an op name")
        self.expect("(", f"after op '{op}'")
        operand = lambda: None if self.keyword("None") else self.use()  # noqa: E731
        inputs = self.items(")", operand, "after an operand")
        attrs = self.attr_dict() if self.peek("{") else {}
        self.build_node(op, op_pos, inputs, attrs, outs)

    def build_node(self, op, op_pos, inputs, attrs, outs) -> None:
        what = f"%{outs[0][0]} = {op}" if outs else op
        try:
            opdef = get_op(op)
        except UnknownOpError:
            close = difflib.get_close_matches(op, all_ops(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            self.error(f"unknown op '{op}'{hint}", op_pos)
        try:
            attrs = opdef.check_attrs(attrs, context=what)
            opdef.check_arity(inputs, context=what)
            inferred = opdef.infer_types([None if v is None else v.type for v in inputs], attrs)
        except GraphoptError as exc:
            self.error(str(exc), op_pos)
        if len(inferred) != len(outs):
            self.error(
                f"{what}: declares {len(outs)} output(s) but '{op}' produces {len(inferred)} "
                f"({', '.join(map(format_type, inferred))})",
                op_pos,
            )
        for (name, _, declared, type_pos), want in zip(outs, inferred):
            if not declared.same_as(want):
                self.error(
                    f"{what}: %{name} is declared {format_type(declared)} but '{op}' infers "
                    f"{format_type(want)}",
                    type_pos,
                )
        node = self.graph.create_node(
            op,
            inputs,
            attrs,
            name=outs[0][0] if outs else None,
            output_types=[o[2] for o in outs],
        )
        # create_node names outputs name, name.1, ...; the text may name them otherwise. Release
        # every generated name before claiming the wanted ones, which may overlap them.
        for value in node.outputs:
            self.graph._names.discard(value.name)
        for value, (name, pos, _, _) in zip(node.outputs, outs):
            self.graph._names.add(name)
            value.name = name
            self.bind(name, pos, value)

    def attr_dict(self) -> dict[str, Any]:
        self.expect("{")
        out: dict[str, Any] = {}

        def item() -> None:
            key, pos = self.ident("an attribute name")
            if key in out:
                self.error(f"duplicate attribute '{key}'", pos)
            self.expect("=", f"after attribute '{key}'")
            out[key] = self.attr_value()

        self.items("}", item, "after an attribute")
        return out

    def attr_value(self) -> Any:
        """A scalar attribute or a (nested) list of them, read with an explicit stack."""
        stack: list[list] = []  # the lists being read, innermost last
        while True:
            self.skip()
            if self.accept("["):
                if len(stack) >= MAX_NESTING:
                    self.error(f"attribute lists nested deeper than {MAX_NESTING} levels")
                stack.append([])
                if not self.accept("]"):
                    continue  # read the list's first item
                value: Any = tuple(stack.pop())
            else:
                value = self.scalar_attr()
            while True:  # hand the finished value to its list, closing lists that end here
                if not stack:
                    return value
                stack[-1].append(value)
                if self.accept(","):
                    break
                self.expect("]", "or ',' in a list")
                value = tuple(stack.pop())

    def scalar_attr(self) -> Any:
        pos = self.pos
        if self.peek('"'):
            return self.string()
        number = _NUMBER.match(self.text, pos)
        if number:
            self.pos = number.end()
            return _number(number.group())
        match = _IDENT.match(self.text, pos)
        if not match:
            self.error(f"malformed attribute value {self.found()}", pos)
        word = match.group()
        self.pos = match.end()
        if word in _KEYWORD_CONSTS:
            return _KEYWORD_CONSTS[word]
        if word == "sym" and self.accept("("):
            text, epos = self.balanced(")")
            self.expect(")")
            return self.dim(text, epos)
        try:
            return DType.parse(word)
        except ValueError:
            self.error(f"malformed attribute value '{word}' (strings need double quotes)", pos)


    def data(self, literal: Any, type_: TensorType) -> np.ndarray:
        flat: list[tuple[str, int]] = []
        self.flatten(literal, type_.shape, flat)
        dtype = type_.dtype
        values = []
        for text, epos in flat:
            if dtype is DType.bool:
                if text not in ("true", "false"):
                    self.error(f"bool constant element must be true/false, got '{text}'", epos)
                values.append(text == "true")
            elif text in ("true", "false"):
                self.error(f"{dtype} constant element cannot be '{text}'", epos)
            elif dtype.is_floating:
                values.append(float(text))
            else:
                number = _number(text)
                if not isinstance(number, int):
                    self.error(f"{dtype} constant element must be an integer, got '{text}'", epos)
                info = np.iinfo(dtype.numpy)
                if not info.min <= number <= info.max:
                    self.error(f"constant element {number} is out of range for {dtype}", epos)
                values.append(number)
        if dtype is DType.bfloat16:
            floats = torch.tensor(values, dtype=torch.float32).reshape(type_.shape)
            return torch_to_numpy(floats.to(torch.bfloat16))[0]
        return np.array(values, dtype=dtype.numpy).reshape(type_.shape)

    def flatten(self, literal: Any, shape: tuple[int, ...], flat: list) -> None:
        """Check that nested lists match ``shape`` and collect the scalars in C order."""
        pos = literal.pos if isinstance(literal, _Seq) else literal[1]
        if not shape:
            if isinstance(literal, _Seq):
                self.error("constant data is nested deeper than its shape", pos)
            flat.append(literal)
            return
        if not isinstance(literal, _Seq) or len(literal) != shape[0]:
            got = f"{len(literal)} items" if isinstance(literal, _Seq) else "a scalar"
            self.error(
                f"constant data does not match its shape: {got} where {shape[0]} were expected", pos
            )
        for item in literal:
            self.flatten(item, shape[1:], flat)



def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value
