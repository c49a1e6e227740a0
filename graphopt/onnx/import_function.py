"""ONNX ops that have no converter but whose schema defines them as a function of other ops
(``OpSchema.has_function`` or a context-dependent function, e.g. LinearAttention,
CausalConvWithState) are imported by expanding that function body in place.

The body comes from the installed onnx package's schema for the model's opset (for a
context-dependent function, generated for this node's attributes and operand types). Its
tensor names are local to the function, so every name is prefixed with the node's to stay
unique (two expansions of one function must not share tensors); attribute references
(``ref_attr_name``) take the node's attribute, or vanish where the node does not set it, as
the ONNX function semantics say. The renamed body is imported like a loop body
(importer.run_subgraph: same validation, same unroll budget).
"""

from __future__ import annotations

import onnx
from onnx import AttributeProto, helper

from graphopt.errors import GraphoptError
from graphopt.onnx._common import TO_ONNX_DTYPE
from graphopt.onnx.validation import op_schema

# Function bodies may use other function ops; a schema cycle (none exists today) or a crafted
# chain must end.
MAX_FUNCTION_DEPTH = 8


def has_function_body(op_type: str, opset: int, domain: str) -> bool:
    """Whether the schema of ``op_type`` at ``opset`` defines it by a function body."""
    schema = op_schema(op_type, opset, domain)
    return schema is not None and (schema.has_function or
                                   schema.has_context_dependent_function)


def _type_proto(value) -> onnx.TypeProto:
    t = onnx.TypeProto()
    if value is None:
        return t
    t.tensor_type.elem_type = TO_ONNX_DTYPE[value.dtype]
    for d in value.shape:
        dim = t.tensor_type.shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        else:
            dim.dim_param = str(d)
    return t


def function_proto(node, operands: list, opset: int, domain: str) -> onnx.FunctionProto:
    """The FunctionProto that defines ``node`` (an OnnxNode) for its operands' types."""
    schema = op_schema(node.op_type, opset, domain)
    if schema is None:
        raise GraphoptError(f"{node.op_type} has no schema at opset {opset}")
    fp = onnx.FunctionProto()
    if schema.has_function:
        fp.CopyFrom(schema.get_function_with_opset_version(opset) or schema.function_body)
        return fp
    types = [_type_proto(v).SerializeToString() for v in operands]
    body = schema.get_context_dependent_function_with_opset_version(
        opset, node.proto.SerializeToString(), types)
    if not body:
        raise GraphoptError(f"onnx builds no function body of {node.op_type} for this node "
                            "(its attributes or operand types)")
    fp.ParseFromString(body)
    return fp


class _Renamer:
    """Prefixes every tensor name of a body, nested graphs included, consistently."""

    def __init__(self, prefix: str, keep: dict[str, str]):
        self.prefix, self.map = prefix, dict(keep)

    def __call__(self, name: str) -> str:
        if not name:
            return name
        if name not in self.map:
            self.map[name] = f"{self.prefix}{name}"
        return self.map[name]

    def node(self, n: onnx.NodeProto, attrs: dict[str, AttributeProto] | None) -> onnx.NodeProto:
        out = onnx.NodeProto()
        out.CopyFrom(n)
        out.input[:] = [self(i) for i in n.input]
        out.output[:] = [self(o) for o in n.output]
        out.name = self(n.name or (n.output[0] if n.output else n.op_type))
        del out.attribute[:]
        for a in n.attribute:
            if a.ref_attr_name:
                if attrs is None or a.ref_attr_name not in attrs:
                    continue  # the node does not set it: the inner attribute is absent
                given = AttributeProto()
                given.CopyFrom(attrs[a.ref_attr_name])
                given.name = a.name
                out.attribute.append(given)
                continue
            copy = AttributeProto()
            copy.CopyFrom(a)
            if a.type == AttributeProto.GRAPH:
                copy.g.CopyFrom(self.graph(a.g))
            elif a.type == AttributeProto.GRAPHS:
                raise GraphoptError("function bodies with GRAPHS attributes are not supported")
            out.attribute.append(copy)
        return out

    def graph(self, g: onnx.GraphProto) -> onnx.GraphProto:
        out = onnx.GraphProto()
        out.CopyFrom(g)
        del out.node[:]
        out.node.extend(self.node(n, None) for n in g.node)
        for field in (out.input, out.output, out.value_info):
            for info in field:
                info.name = self(info.name)
        for init in out.initializer:
            init.name = self(init.name)
        return out


def expanded_body(node, operands: list, opset: int, domain: str, depth: int):
    """(body graph, bindings by body input name) that compute ``node``: its function's nodes
    renamed, its operands bound to the function's inputs (absent operands stay absent)."""
    if depth > MAX_FUNCTION_DEPTH:
        raise GraphoptError(f"function bodies nest deeper than {MAX_FUNCTION_DEPTH} levels")
    fp = function_proto(node, operands, opset, domain)
    renamer = _Renamer(f"{node.name}/", {})
    bindings = {}
    for i, name in enumerate(fp.input):
        if i < len(operands) and operands[i] is not None:
            bindings[renamer(name)] = operands[i]
        else:
            renamer.map[name] = ""  # an absent optional operand reads as ""
    # The node's attributes over the function's declared defaults.
    attrs = {a.name: a for a in fp.attribute_proto}
    attrs.update({a.name: a for a in node.proto.attribute})
    nodes = [renamer.node(n, attrs) for n in fp.node]
    outputs = [helper.make_value_info(renamer(o), onnx.TypeProto()) for o in fp.output]
    body = helper.make_graph(nodes, f"{node.op_type}_function", [], outputs)
    return body, bindings
