"""cse: merge pure nodes that compute the same thing, and constants with identical data.

Before -> after::

    graph main(%x: f32[4]) {                      graph main(%x: f32[4]) {
      const %a: f32[] = 2.0                         const %a: f32[] = 2.0
      const %b: f32[] = 2.0                         %m: f32[4] = mul(%x, %a)
      %m: f32[4] = mul(%x, %a)                      %s: f32[4] = add(%m, %m)
      %n: f32[4] = mul(%x, %b)                      return %s
      %s: f32[4] = add(%m, %n)                    }
      return %s
    }

Sound because a PURE node's outputs depend only on its op, operands and attributes: two nodes
equal in all three (``Attrs`` hashes floats by repr, so 0.0 and -0.0 stay distinct) produce
equal outputs, and the later one is replaced by the earlier one, which dominates it (the graph is
in topological order). Constants merge only when dtype, shape and raw bytes are identical (a
sample of the bytes is hashed to find candidates, whose whole bytes are then compared), so -0.0
vs 0.0 or NaN payloads never merge by accident.
"""

from __future__ import annotations

from graphopt.ir.array_identity import same_bytes, sample_digest
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ops.registry import PURE
from graphopt.rewrite.rewriter import Rewriter
from graphopt.transform.registry import register_pass

def _merge_constants(graph: Graph, rw: Rewriter) -> bool:
    """Merge identical constants; returns False when the rewrite budget ran out."""
    groups: dict[tuple, list[Value]] = {}
    for value in graph.constants.values():
        key = (value.dtype, tuple(value.data.shape), value.type.quant)
        groups.setdefault(key, []).append(value)
    for values in groups.values():
        if len(values) < 2:
            continue  # a constant with a unique type/shape has no duplicate: skip hashing it
        seen: dict[bytes, list[Value]] = {}
        for value in values:
            candidates = seen.setdefault(sample_digest(value.data), [])
            first = next((c for c in candidates if same_bytes(c.data, value.data)), None)
            if first is None:  # new bytes (or only the sample matched: keep both)
                candidates.append(value)
                continue
            if not rw.edit("merge-constants", f"const %{value.name}"):
                return False
            rw.replace_value(value, first)
            rw.remove_constant(value)
    return True


def _key(node: Node) -> tuple:
    return (
        node.op,
        tuple(None if v is None else id(v) for v in node.inputs),
        node.attrs,
        tuple(o.type for o in node.outputs),
    )


@register_pass("cse")
def cse(graph: Graph) -> bool:
    """Common subexpression elimination of pure nodes and identical constants."""
    rw = Rewriter(graph)  # each merge is one rewrite: counted, and bisectable
    if not _merge_constants(graph, rw):
        return rw.stats.changed
    seen: dict[tuple, Node] = {}
    for node in graph.nodes:
        if PURE not in node.opdef.traits:
            continue
        key = _key(node)
        first = seen.get(key)
        if first is None:
            seen[key] = node
            continue
        if not rw.edit("merge-nodes", node):
            break
        for old, new in zip(node.outputs, first.outputs):
            rw.replace_value(old, new)
        rw.erase_node(node)
    return rw.stats.changed
