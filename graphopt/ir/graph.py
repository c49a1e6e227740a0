"""The graph IR: SSA ``Value``s produced by ``Node``s, ordered in a ``Graph``.

* A ``Value`` has exactly one definition: a graph input, a graph constant (weights; numpy data
  owned by the graph) or one output of a node. It keeps its use list, so rewrites are
  ``old.replace_all_uses_with(new)`` followed by dead-node removal.
* A ``Node`` is an op name from the op registry (looked up through ``graphopt.ir.schema``),
  input values (``None`` for an absent optional operand), frozen attributes and output values.
* Nodes live in a doubly linked list: insertion and erasure are O(1) and ``graph.nodes`` may be
  iterated while the graph is being rewritten (erased nodes are skipped).
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from graphopt.errors import GraphoptError, StaleConstantError
from graphopt.ir.attrs import Attrs
from graphopt.ir.dtypes import DType
from graphopt.ir.schema import get_op
from graphopt.ir.types import TensorType

_NAME_RE = re.compile(r"[^A-Za-z0-9_.]")


class Value:
    """An SSA value. ``kind`` is ``"input"``, ``"const"`` or ``"node"``."""

    __slots__ = ("name", "type", "producer", "index", "uses", "graph", "kind", "data", "owner")

    def __init__(self, graph: "Graph", name: str, type: TensorType, kind: str):
        self.graph = graph
        self.name = name
        self.type = type
        self.kind = kind
        self.producer: Node | None = None
        self.index = 0  # position among the producer's outputs
        self.uses: list[tuple[Node, int]] = []
        self.data: np.ndarray | None = None  # constants only
        # A constant whose array is a view of memory owned outside the graph (a traced model's
        # parameter): an object with ``changed() -> str | None`` saying whether, and how, the
        # owner has been modified since (see ``Graph.check_borrowed_constants``). None: the
        # graph's own array.
        self.owner = None

    @property
    def shape(self):
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def is_constant(self) -> bool:
        return self.kind == "const"

    @property
    def users(self) -> list["Node"]:
        """Distinct nodes using this value, in use order."""
        seen: dict[int, Node] = {}
        for node, _ in self.uses:
            seen.setdefault(id(node), node)
        return list(seen.values())

    @property
    def is_graph_output(self) -> bool:
        return any(v is self for v in self.graph.outputs)

    def replace_all_uses_with(self, new: "Value") -> int:
        """Point every use (and graph output) of this value at ``new``; returns the count."""
        if new is self:
            return 0
        count = 0
        for node, slot in list(self.uses):
            node.set_input(slot, new)
            count += 1
        outputs = self.graph.outputs
        for i, v in enumerate(outputs):
            if v is self:
                outputs[i] = new
                count += 1
        return count

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One op application. Create nodes with ``Graph.create_node``."""

    __slots__ = ("op", "inputs", "attrs", "outputs", "graph", "source", "_prev", "_next", "_erased")

    def __init__(self, graph: "Graph", op: str, attrs: Attrs):
        self.graph = graph
        self.op = op
        self.attrs = attrs
        self.inputs: list[Value | None] = []
        self.outputs: list[Value] = []
        self.source: str | None = None  # where the node came from (model source line), for errors
        self._prev: Node | None = None
        self._next: Node | None = None
        self._erased = False

    @property
    def name(self) -> str:
        return self.outputs[0].name if self.outputs else f"<{self.op}>"

    @property
    def output(self) -> Value:
        """The single output; raises for multi-output nodes."""
        if len(self.outputs) != 1:
            raise GraphoptError(f"node {self.name} ({self.op}) has {len(self.outputs)} outputs")
        return self.outputs[0]

    @property
    def opdef(self):
        return get_op(self.op)

    def has_trait(self, trait: str) -> bool:
        return trait in self.opdef.traits

    def set_input(self, slot: int, value: Value | None) -> None:
        old = self.inputs[slot]
        if old is not None:
            old.uses.remove((self, slot))
        self.inputs[slot] = value
        if value is not None:
            value.uses.append((self, slot))

    def describe(self) -> str:
        """``%name = op`` plus where it came from, for error messages."""
        text = f"%{self.name} = {self.op}"
        if self.source:
            text += f" (from {self.source})"
        return text

    def __repr__(self) -> str:
        args = ", ".join("None" if v is None else f"%{v.name}" for v in self.inputs)
        return f"<Node %{self.name} = {self.op}({args})>"


class _Sentinel(Node):
    __slots__ = ()


class NodeList:
    """Live view of a graph's nodes; iteration tolerates erasure and insertion."""

    def __init__(self, graph: "Graph"):
        self._graph = graph

    def __iter__(self) -> Iterator[Node]:
        root = self._graph._root
        node = root._next
        while node is not root:
            if not node._erased:
                yield node
            nxt = node._next
            # An erased node keeps its forward link, so iteration resumes correctly.
            node = nxt

    def __reversed__(self) -> Iterator[Node]:
        root = self._graph._root
        node = root._prev
        while node is not root:
            if not node._erased:
                yield node
            node = node._prev

    def __len__(self) -> int:
        return self._graph._num_nodes

    def __bool__(self) -> bool:
        return self._graph._num_nodes > 0


class Graph:
    """An ordered, typed SSA graph with named inputs, constants and outputs."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.constants: dict[str, Value] = {}
        self._root = _Sentinel(self, "<root>", Attrs())
        self._root._prev = self._root._next = self._root
        self._num_nodes = 0
        self._names: set[str] = set()
        self._name_counts: Counter = Counter()
        self._insert_point: Node = self._root  # new nodes go before this node
        # pytree specs of the traced model's inputs/outputs (None: flat tuple).
        self.input_spec: Any = None
        self.output_spec: Any = None
        # Which input dim each size symbol was first seen on: symbol -> (input index, axis).
        self.symbol_sources: dict[Any, tuple[int, int]] = {}

    # ----------------------------------------------------------------------------------- names
    def unique_name(self, hint: str) -> str:
        base = _NAME_RE.sub("_", hint) or "v"
        if base not in self._names:
            self._names.add(base)
            return base
        while True:
            self._name_counts[base] += 1
            candidate = f"{base}_{self._name_counts[base]}"
            if candidate not in self._names:
                self._names.add(candidate)
                return candidate

    def _release_name(self, name: str) -> None:
        self._names.discard(name)

    # ---------------------------------------------------------------------- inputs & constants
    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(self, self.unique_name(name), type, "input")
        self.inputs.append(value)
        for axis, dim in enumerate(type.shape):
            if not isinstance(dim, int) and dim.is_Symbol:
                self.symbol_sources.setdefault(dim, (len(self.inputs) - 1, axis))
        return value

    def add_constant(
        self, data: np.ndarray, name: str = "const", dtype: DType | None = None, owner=None,
        transposed_view: bool = False,
    ) -> Value:
        """Register a constant (weights). ``dtype`` is required only for bfloat16 bit arrays.

        Constants are C-ordered arrays (copied into C order when needed), with one exception:
        ``transposed_view=True`` keeps a 2-D array that is the transpose of a C-ordered one
        (``w.T``, Fortran order) as it is, so a pass that needs a weight transposed does not
        copy it (consumers that need C order copy at use: ``np.ascontiguousarray``).

        ``owner``: ``data`` is a zero-copy view of memory owned outside the graph (a model's
        parameter), kept as is; ``owner.changed()`` reports a later modification
        (:meth:`check_borrowed_constants`).
        """
        data = np.asarray(data)
        if dtype is None:
            dtype = DType.from_numpy(data.dtype)
        elif data.dtype != dtype.numpy:
            data = data.astype(dtype.numpy)
            owner = None  # a converted copy no longer shares the owner's memory
        keep = transposed_view and data.ndim == 2 and data.T.flags.c_contiguous
        if not keep:
            shared = data
            data = np.require(data, requirements="C")  # keeps 0-d arrays 0-d
            if data is not shared:
                owner = None
        data.flags.writeable = False
        value = Value(self, self.unique_name(name), TensorType(data.shape, dtype), "const")
        value.data = data
        value.owner = owner
        self.constants[value.name] = value
        return value

    def check_borrowed_constants(self) -> None:
        """Raise :class:`StaleConstantError` if the owner of a borrowed constant (a traced
        model's parameter) was modified in place after the graph was built from it.

        Lowering (``compile``, ``to_onnx``, saving) calls this: a graph whose weights changed
        under it would mix old (folded, transposed, quantized) and new values.
        """
        stale = []
        for value in self.constants.values():
            reason = value.owner.changed() if value.owner is not None else None
            if reason:
                stale.append(f"%{value.name} ({reason})")
        if stale:
            shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
            raise StaleConstantError(
                f"graph {self.name}: {len(stale)} constant(s) share memory with model parameters "
                f"that were modified in place after the trace: {shown}. Trace the model again "
                "after changing its weights (or trace with copy_weights=True to snapshot them)."
            )

    def remove_constant(self, value: Value) -> None:
        if value.uses or value.is_graph_output:
            raise GraphoptError(f"constant %{value.name} is still used")
        del self.constants[value.name]
        self._release_name(value.name)

    def set_outputs(self, values: Sequence[Value]) -> None:
        self.outputs = list(values)

    # ---------------------------------------------------------------------------------- nodes
    @property
    def nodes(self) -> NodeList:
        return NodeList(self)

    @contextlib.contextmanager
    def inserting_before(self, node: Node | None):
        """New nodes are created before ``node`` (None: at the end) inside this block."""
        saved = self._insert_point
        self._insert_point = node if node is not None else self._root
        try:
            yield
        finally:
            self._insert_point = saved

    @contextlib.contextmanager
    def inserting_after(self, node: Node):
        with self.inserting_before(node._next):
            yield

    def create_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: dict[str, Any] | Attrs | None = None,
        *,
        name: str | None = None,
        output_types: Sequence[TensorType] | None = None,
        source: str | None = None,
    ) -> Node:
        """Insert ``op(inputs){attrs}`` at the insertion point.

        Attributes are checked against the op's schema (defaults filled in); output types are
        inferred by the op's shape rule unless ``output_types`` is given.
        """
        opdef = get_op(op)
        if not opdef.variadic and len(inputs) < len(opdef.inputs):
            # Trailing optional operands may be omitted; store them as explicit absences.
            inputs = list(inputs) + [None] * (len(opdef.inputs) - len(inputs))
        attrs = opdef.check_attrs(attrs, context=f"creating a {op} node")
        opdef.check_arity(inputs, context=f"creating a {op} node")
        for v in inputs:
            if v is not None and v.graph is not self:
                raise GraphoptError(f"value %{v.name} belongs to another graph")
        if output_types is None:
            output_types = opdef.infer_types([None if v is None else v.type for v in inputs], attrs)
        node = Node(self, op, attrs)
        node.source = source
        for slot, v in enumerate(inputs):
            node.inputs.append(v)
            if v is not None:
                v.uses.append((node, slot))
        base = name or op
        for i, t in enumerate(output_types):
            out = Value(self, self.unique_name(base if i == 0 else f"{base}.{i}"), t, "node")
            out.producer, out.index = node, i
            node.outputs.append(out)
        self._link_before(node, self._insert_point)
        return node

    def _link_before(self, node: Node, anchor: Node) -> None:
        prev = anchor._prev
        prev._next = node
        node._prev = prev
        node._next = anchor
        anchor._prev = node
        self._num_nodes += 1

    def erase_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused; drops it from its operands' use lists."""
        for out in node.outputs:
            if out.uses or out.is_graph_output:
                users = ", ".join(f"%{n.name}" for n in out.users) or "graph output"
                raise GraphoptError(f"cannot erase {node.describe()}: %{out.name} is used by {users}")
        for slot, v in enumerate(node.inputs):
            if v is not None:
                v.uses.remove((node, slot))
        node._prev._next = node._next
        node._next._prev = node._prev
        node._erased = True
        self._num_nodes -= 1
        if self._insert_point is node:
            self._insert_point = node._next
        for out in node.outputs:
            self._release_name(out.name)

    def move_before(self, node: Node, anchor: Node) -> None:
        node._prev._next = node._next
        node._next._prev = node._prev
        self._num_nodes -= 1
        self._link_before(node, anchor)

    # --------------------------------------------------------------------------------- queries
    def values(self) -> Iterable[Value]:
        yield from self.inputs
        yield from self.constants.values()
        for node in self.nodes:
            yield from node.outputs

    def op_histogram(self) -> Counter:
        return Counter(node.op for node in self.nodes)

    def constant_bytes(self) -> int:
        return sum(int(v.data.nbytes) for v in self.constants.values())

    def verify(self) -> None:
        """Check SSA, order, use lists, attributes and types; raise VerificationError."""
        from graphopt.ir.verify import verify_graph

        verify_graph(self)

    def clone(self) -> "Graph":
        from graphopt.ir.clone import clone_graph

        return clone_graph(self)

    def __str__(self) -> str:
        from graphopt.ir.printer import print_graph

        return print_graph(self)

    def __repr__(self) -> str:
        return (
            f"<Graph {self.name}: {len(self.inputs)} inputs, {len(self.constants)} constants, "
            f"{self._num_nodes} nodes, {len(self.outputs)} outputs>"
        )
