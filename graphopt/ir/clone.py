"""Deep copies of graphs: new ``Value``/``Node`` objects, shared read-only constant data.

Passes that may fail half-way, numeric checks against the pre-pass graph and "try this rewrite and
compare" all need a graph that can be mutated without touching the original. Constants are the
only large part and are read-only numpy arrays, so they are shared rather than copied.
"""

from __future__ import annotations

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph, Node, Value


def clone_graph(graph: Graph) -> Graph:
    """A structurally independent copy of ``graph`` with the same names, types and attributes."""
    return clone_graph_with_map(graph)[0]


def clone_graph_with_map(graph: Graph) -> tuple[Graph, dict[Value, Value]]:
    """Clone ``graph`` and return the map from each old value to its copy.

    ``Value`` hashes by identity, so the map can be indexed with values of the original graph
    (e.g. to find the copy of a node's output). Node order, node ``source``, pytree specs and
    ``symbol_sources`` are kept, and the name table is copied so that later ``unique_name`` calls
    hand out the same names in both graphs.

    Raises:
        GraphoptError: an operand or output is not defined in ``graph`` (an erased node's or
            another graph's value); run ``graph.verify()`` for the full diagnosis.
    """
    new = Graph(graph.name)
    mapping: dict[Value, Value] = {}

    def copy_value(old: Value) -> Value:
        value = Value(new, old.name, old.type, old.kind)
        value.index = old.index
        value.data = old.data  # read-only array (add_constant), safe to share
        value.owner = old.owner
        mapping[old] = value
        return value

    new.inputs = [copy_value(v) for v in graph.inputs]
    new.constants = {key: copy_value(v) for key, v in graph.constants.items()}
    # Outputs first, operands second: a copy never depends on the original being in order.
    pairs: list[tuple[Node, Node]] = []
    for old in graph.nodes:
        node = Node(new, old.op, old.attrs)  # Attrs are frozen: sharing is safe
        node.source = old.source
        for out in old.outputs:
            copy_value(out).producer = node
            node.outputs.append(mapping[out])
        new._link_before(node, new._root)
        pairs.append((old, node))
    for old, node in pairs:
        for v in old.inputs:
            if v is not None and v not in mapping:
                raise GraphoptError(
                    f"cannot clone {old.describe()}: operand %{v.name} is not defined in graph "
                    f"{graph.name}"
                )
            node.inputs.append(None if v is None else mapping[v])
    # Use lists keep their order (passes that walk users must behave alike on both graphs).
    node_map = {id(old): node for old, node in pairs}
    for old_value, value in mapping.items():
        value.uses = [
            (node_map[id(user)], slot)
            for user, slot in old_value.uses
            if id(user) in node_map and value in node_map[id(user)].inputs[slot : slot + 1]
        ]
    for v in graph.outputs:
        if v not in mapping:
            raise GraphoptError(f"cannot clone: output %{v.name} is not defined in {graph.name}")
    new.outputs = [mapping[v] for v in graph.outputs]
    new._names = set(graph._names)
    new._name_counts = graph._name_counts.copy()
    # Pytree specs are immutable descriptions: share them. The symbol table is a plain dict.
    new.input_spec = graph.input_spec
    new.output_spec = graph.output_spec
    new.symbol_sources = dict(graph.symbol_sources)
    return new, mapping
