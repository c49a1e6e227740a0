"""fold-constants: evaluate pure nodes whose operands are all constants into new constants.

Before -> after::

    graph main(%x: i64[1, 8]) {                          graph main(%x: i64[1, 8]) {
      const %arange: i64[8] = [0, 1, 2, 3, 4, 5, 6, 7]     const %arange: i64[8] = [0, ..., 7]
      const %zero: i64[] = 0                               const %zero: i64[] = 0
      %pos: i64[8] = add(%arange, %zero)                   const %ids: i64[1, 8] = [[0, ..., 7]]
      %ids: i64[1, 8] = unsqueeze(%pos) {axis=0}           %y: i64[1, 8] = add(%x, %ids)
      %y: i64[1, 8] = add(%x, %ids)                        return %y
      return %y                                          }
    }

(the now-unused inputs of folded nodes are left to ``dce``). Shape-arithmetic chains fold in one
sweep because nodes are visited in order and each folded result is a constant for its users.

Sound because a PURE node's output depends only on its operands and attributes, and the value is
computed by the op's reference implementation, which is the definition of the op's semantics
(the interpreter runs the same function). Nodes with symbolic shapes or attributes are skipped
(their value depends on run-time sizes), as are nodes whose result dtype/shape would differ from
the node's declared type. Size guard: a node whose output is much larger than its operands
(``expand`` of a scalar to a big tensor, ``full``) is kept unless the output is small, so that
folding never blows up the model size. Casts of f16 / bf16 constants to f32 (half-precision
weight storage, ``graphopt.quantize(graph, "fp16")``), weight decoders (``WEIGHT_STORAGE``: a
codebook lookup of shared weights) and nodes reading quantized constants stay.
"""

from __future__ import annotations

import torch

from graphopt.ir.attrs import has_symbols
from graphopt.ir.dtypes import DType, numpy_to_torch, torch_to_numpy
from graphopt.ir.graph import Graph, Node
from graphopt.ops.registry import PURE, WEIGHT_STORAGE
from graphopt.rewrite import Var, match_at, op
from graphopt.rewrite.rewriter import Rewriter
from graphopt.transform.registry import register_pass


@register_pass("fold-constants")
class FoldConstants:
    """Constant folding: evaluate pure nodes whose operands are all constants.

    Options:
        max_growth: fold only if the output has at most this many times the elements of all
            operands together (outputs of at most ``small_elements`` always fold).
        small_elements: outputs this small always fold.
        max_elements: never create a folded constant with more elements than this.
    """

    max_growth: float = 2.0
    small_elements: int = 4096
    max_elements: int = 1 << 26

    def run(self, graph: Graph) -> bool:
        rw = Rewriter(graph)  # each folded node is one rewrite ("fold"): counted, bisectable
        for node in graph.nodes:
            if not self.foldable(node):
                continue
            results = self.evaluate(node)
            if results is None:
                continue
            if not rw.edit("fold", node):
                break
            consts = []
            for out, (array, dtype) in zip(node.outputs, results):
                const = graph.add_constant(array, name=out.name, dtype=dtype)
                rw.replace_value(out, const)
                consts.append((const, out.name))
            rw.erase_node(node)
            for const, name in consts:  # the folded value keeps the node output's name
                _rename_constant(graph, const, name)
        return rw.stats.changed

    def foldable(self, node: Node) -> bool:
        if PURE not in node.opdef.traits:
            return False
        if any(v is not None and not v.is_constant for v in node.inputs):
            return False
        if any(has_symbols(v) for v in node.attrs.values()):
            return False
        if any(not o.type.is_static or o.type.quant is not None for o in node.outputs):
            return False
        if any(v is not None and v.type.quant is not None for v in node.inputs):
            return False
        if _is_storage_cast(node) or WEIGHT_STORAGE in node.opdef.traits:
            return False
        out_elems = sum(int(o.type.numel) for o in node.outputs)
        in_elems = sum(int(v.data.size) for v in node.inputs if v is not None)
        if out_elems > self.max_elements:
            return False
        return out_elems <= self.small_elements or out_elems <= self.max_growth * max(in_elems, 1)

    @staticmethod
    def evaluate(node: Node):
        """[(array, dtype)] per output, or None if the result does not match the node's types."""
        args = [None if v is None else numpy_to_torch(v.data, v.dtype) for v in node.inputs]
        with torch.no_grad():
            result = node.opdef.reference(*args, **dict(node.attrs))
        results = result if isinstance(result, (tuple, list)) else (result,)
        if len(results) != len(node.outputs):
            return None
        out = []
        for value, tensor in zip(node.outputs, results):
            if not isinstance(tensor, torch.Tensor):
                return None
            array, dtype = torch_to_numpy(tensor)
            if dtype != value.dtype or tuple(array.shape) != tuple(value.shape):
                return None
            out.append((array, dtype))
        return out


def _is_storage_cast(node: Node) -> bool:
    """A cast of an f16 / bf16 constant to f32: half-precision weight storage
    (``graphopt.quantize`` modes fp16 / bf16); folding it would double the weights again."""
    half = Var("x", where=lambda v: v.dtype in (DType.float16, DType.bfloat16))
    return match_at(op.cast(half, dtype=DType.float32), node) is not None


def _rename_constant(graph: Graph, value, name: str) -> None:
    # Graph has no public rename; constants are keyed by name, so re-key the entry.
    if value.name == name or name in graph._names:
        return
    del graph.constants[value.name]
    graph._release_name(value.name)
    value.name = graph.unique_name(name)
    graph.constants[value.name] = value
