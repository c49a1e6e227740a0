"""The catalog of deliberately broken rewrites run by ``tests/test_mutation.py``.

Each ``@mutation(subject, caught_by, blame)`` function is one bug a pass could have, applied to
the subject graph (see ``SUBJECTS`` in test_mutation.py) in place, the way the buggy pass would:
through the graph API (``create_node``, ``set_input``, ``replace_all_uses_with``) or, for the
bugs that bypass it, by assigning fields directly. ``caught_by`` names the instrument that must
catch it ("verifier" or "numeric") and ``blame`` a text the error must contain (the culprit
node, or the output that drifted). A mutation with ``gap=reason`` is a known instrument gap,
run as xfail(strict=True).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from mutation_util import drop_node, node_named, rebuild, replace_constant, value_named

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph
from graphopt.ir.types import TensorType

# ----------------------------------------------------------------------------- mutations
@dataclass(frozen=True)
class Mutation:
    name: str
    subject: str
    mutate: Callable[[Graph], object]
    caught_by: str  # "verifier" or "numeric"
    blame: str  # what the error message must name (the culprit node, or the drifted output)
    bug: str  # the bug class, from the docstring
    gap: str | None = None  # a known instrument gap: the test is xfail(strict) with this reason

    def __str__(self) -> str:
        return self.name


MUTATIONS: list[Mutation] = []


def mutation(subject: str, caught_by: str, blame: str, gap: str | None = None):
    def register(fn):
        name = fn.__name__.replace("_", "-")
        MUTATIONS.append(Mutation(name, subject, fn, caught_by, blame, fn.__doc__.strip(), gap))
        return fn

    return register


def swapped(node):
    return list(reversed(node.inputs))


# --- caught by the numeric check: well-formed IR that computes something else ---------------
@mutation("tensorops", "numeric", "output 2")
def swap_sub_operands(g):
    """swapped operands of a non-commutative op (sub: a - b -> b - a)"""
    node = node_named(g, "sub", "sub")
    rebuild(g, node, inputs=swapped(node))


@mutation("tensorops", "numeric", "output 2")
def swap_div_operands(g):
    """swapped operands of a non-commutative op (div: x / c -> c / x)"""
    node = node_named(g, "div_1", "div")
    rebuild(g, node, inputs=[node.inputs[1], node.inputs[0]])


@mutation("tensorops", "numeric", "output 2")
def reverse_concat_order(g):
    """concat operands in the wrong order (same result shape)"""
    node = node_named(g, "cat", "concat")
    rebuild(g, node, inputs=swapped(node))


@mutation("tensorops", "numeric", "output 2")
def swap_where_branches(g):
    """where(c, a, b) -> where(c, b, a)"""
    node = node_named(g, "where", "where")
    cond, a, b = node.inputs
    rebuild(g, node, inputs=[cond, b, a])


@mutation("gpt2", "numeric", "output 0")
def swap_attention_query_key(g):
    """attention(q, k, v) -> attention(k, q, v): operands of the same type mixed up"""
    node = node_named(g, "scaled_dot_product_attention", "attention")
    q, k, v, mask = node.inputs
    rebuild(g, node, inputs=[k, q, v, mask])


@mutation("tensorops", "numeric", "output 2")
def rewire_use_to_wrong_value(g):
    """a use rewired to another value of the same type (sub's operand mul_1 -> tanh)"""
    node_named(g, "sub", "sub").set_input(0, value_named(g, "tanh"))


@mutation("tensorops", "numeric", "output 0")
def rewire_graph_output(g):
    """a graph output replaced by a value of the same type (add_2 -> add_1)"""
    g.outputs[0] = value_named(g, "add_1")


@mutation("mlp", "numeric", "output 0")
def drop_relu(g):
    """a dropped node with its uses rewired to its input (relu removed)"""
    drop_node(g, node_named(g, "relu", "relu"))


@mutation("convzoo-opt", "numeric", "output 0")
def drop_residual_add(g):
    """a dropped residual add (add(y, skip) -> y)"""
    drop_node(g, node_named(g, "add", "add"))


@mutation("bert-opt", "numeric", "output 0")
def drop_fused_linear_residual(g):
    """a fused_linear that lost its residual operand"""
    node = node_named(g, "fused_linear", "fused_linear")
    rebuild(g, node, inputs=node.inputs[:3] + [None])


@mutation("mlp-opt", "numeric", "output 0")
def drop_fused_activation(g):
    """an edited fused-linear epilogue (activation relu -> none)"""
    node = node_named(g, "fused_linear", "fused_linear")
    rebuild(g, node, attrs={"activation": "none"})


@mutation("mlp-opt", "numeric", "output 0")
def scale_weight(g):
    """a wrong constant: a folded weight scaled by 1.5"""
    replace_constant(g, node_named(g, "linear_2", "linear"), 1, lambda w: w * 1.5)


@mutation("convzoo-opt", "numeric", "output 0")
def shift_folded_bias(g):
    """a wrong constant: the batch-norm-folded conv bias off by 0.1"""
    replace_constant(g, node_named(g, "fused_conv", "fused_conv"), 2, lambda b: b + 0.1)


@mutation("bert", "numeric", "output 0")
def wrong_layer_norm_eps(g):
    """a wrong epsilon (layer_norm eps 1e-12 -> 1e-3)"""
    rebuild(g, node_named(g, "layer_norm", "layer_norm"), attrs={"eps": 1e-3})


@mutation("convzoo", "numeric", "output 0")
def wrong_batch_norm_eps(g):
    """a wrong epsilon (batch_norm eps 1e-5 -> 0.1)"""
    node = node_named(g, "_native_batch_norm_legit_no_training", "batch_norm")
    rebuild(g, node, attrs={"eps": 0.1})


@mutation("tensorops", "numeric", "output 0")
def wrong_softmax_axis(g):
    """a wrong attr that keeps the shape (softmax over the square matrix's other axis)"""
    rebuild(g, node_named(g, "softmax", "softmax"), attrs={"axis": 2})


@mutation("convzoo", "numeric", "output 0")
def wrong_gelu_approximate(g):
    """a wrong attr (gelu approximate tanh -> none)"""
    rebuild(g, node_named(g, "gelu", "gelu"), attrs={"approximate": "none"})


@mutation("convzoo", "numeric", "output 0")
def wrong_leaky_relu_slope(g):
    """a wrong attr (leaky_relu negative_slope 0.1 -> 0.01)"""
    rebuild(g, node_named(g, "leaky_relu", "leaky_relu"), attrs={"negative_slope": 0.01})


@mutation("tensorops", "numeric", "output 2")
def slice_off_by_one(g):
    """an off-by-one slice window of the same length ([0:8] -> [1:9])"""
    rebuild(g, node_named(g, "slice_4", "slice"), attrs={"start": 1, "end": 9})


@mutation("bert-opt", "numeric", "output 0")
def wrong_attention_scale(g):
    """a wrong attention scale (0.125 -> 0.25)"""
    rebuild(g, node_named(g, "attention", "attention"), attrs={"scale": 0.25})


@mutation("bert-opt", "numeric", "output 0")
def attention_made_causal(g):
    """a mask semantics change (is_causal false -> true)"""
    rebuild(g, node_named(g, "attention", "attention"), attrs={"is_causal": True})


@mutation("tensorops", "numeric", "output 2")
def wrong_op(g):
    """an op replaced by another of the same signature (sigmoid -> tanh)"""
    node_named(g, "sigmoid", "sigmoid").op = "tanh"


# --- caught by the verifier: the IR itself is broken ----------------------------------------
@mutation("tensorops", "verifier", "%div = div")
def swap_matmul_operands(g):
    """swapped matmul operands (shape re-inferred: the users' types no longer match)"""
    node = node_named(g, "matmul", "matmul")
    rebuild(g, node, inputs=swapped(node))


@mutation("tensorops", "verifier", "%linear_1 = linear")
def wrong_reshape_target(g):
    """a reshape target changed ([2, 12, 32] -> [2, 32, 12])"""
    rebuild(g, node_named(g, "view_3", "reshape"), attrs={"shape": (2, 32, 12)})


@mutation("tensorops", "verifier", "%matmul = matmul")
def wrong_transpose_perm(g):
    """a wrong transpose perm ([0, 1, 3, 2] -> identity)"""
    rebuild(g, node_named(g, "transpose_4", "permute"), attrs={"perm": (0, 1, 2, 3)})


@mutation("convzoo-opt", "verifier", "%conv2d_2_1 = conv")
def wrong_conv_stride(g):
    """a wrong conv stride with the old output type kept"""
    node = node_named(g, "conv2d_2", "conv")
    rebuild(g, node, attrs={"stride": (2, 2)}, keep_types=True)


@mutation("convzoo", "verifier", "batch_norm")
def wrong_conv_padding(g):
    """a wrong conv padding (output shape re-inferred, the batch_norm user disagrees)"""
    rebuild(g, node_named(g, "conv2d", "conv"), attrs={"padding": (0, 0)})


@mutation("tensorops", "verifier", "%split_with_sizes_1 = split")
def swap_split_sizes(g):
    """split sizes swapped ([10, 22] -> [22, 10]) with the old output types kept"""
    node = node_named(g, "split_with_sizes", "split")
    rebuild(g, node, attrs={"sizes": (22, 10)}, keep_types=True)


@mutation("mlp", "verifier", "%linear = linear")
def wrong_declared_shape(g):
    """a declared output type with the wrong shape"""
    v = value_named(g, "linear")
    v.type = v.type.with_shape((2, 33))


@mutation("tensorops", "verifier", "%sub = sub")
def wrong_declared_dtype(g):
    """a declared output type with the wrong dtype (f32 -> f16)"""
    v = value_named(g, "sub")
    v.type = v.type.with_dtype(DType.float16)


@mutation("tensorops", "verifier", "%_to_copy_1 = cast")
def wrong_cast_dtype(g):
    """a cast to the wrong dtype with the old output type kept"""
    node = node_named(g, "_to_copy", "cast")
    rebuild(g, node, attrs={"dtype": DType.float16}, keep_types=True)


@mutation("tensorops", "verifier", "used before its definition")
def move_node_before_operand(g):
    """a node moved before its operand (order violation)"""
    node = node_named(g, "softmax", "softmax")
    g.move_before(node, node.inputs[0].producer)


@mutation("tensorops", "verifier", "erased node %neg = neg")
def dangling_use(g):
    """a dangling use: a node erased without rewiring its users"""
    node = node_named(g, "neg", "neg")
    node.output.uses.clear()
    g.erase_node(node)


@mutation("tensorops", "verifier", "%sigmoid is defined 2 times")
def duplicate_ssa_name(g):
    """a duplicated SSA name (tanh renamed to sigmoid)"""
    value_named(g, "tanh").name = "sigmoid"


@mutation("tensorops", "verifier", "missing from its use list")
def stale_use_list(g):
    """an operand assigned without set_input: use lists out of date"""
    node_named(g, "sub", "sub").inputs[1] = value_named(g, "mul_1")


@mutation("tensorops", "verifier", "%neg = neg")
def extra_operand(g):
    """an operand appended to a unary op (arity)"""
    node = node_named(g, "neg", "neg")
    node.inputs.append(None)
    node.set_input(1, value_named(g, "abs_2"))


@mutation("convzoo", "verifier", "%gelu = gelu")
def unknown_attribute(g):
    """an attribute the op does not have"""
    node = node_named(g, "gelu", "gelu")
    node.attrs = node.attrs.replace(mode="fast")


@mutation("mlp-opt", "verifier", "constant %layers.0.bias")
def constant_wrong_dtype(g):
    """a folded constant stored as float64 under an f32 type"""
    v = value_named(g, "layers.0.bias")
    v.data = v.data.astype(np.float64)


@mutation("convzoo-opt", "verifier", "constant %head.bias")
def constant_wrong_shape(g):
    """a folded constant whose data has the wrong shape"""
    v = value_named(g, "head.bias")
    v.data = np.concatenate([v.data, v.data[:1]])


@mutation("mlp-opt", "verifier", "%layers.2.weight is not defined")
def undefined_constant(g):
    """a constant removed from the graph while still used"""
    del g.constants["layers.2.weight"]


@mutation("bert-opt", "verifier", "not defined in the graph")
def output_from_scratch_graph(g):
    """a graph output built in a scratch graph (never inserted)"""
    scratch = Graph("scratch")
    x = scratch.add_input("x", TensorType((1, 8, 768), DType.float32))
    g.outputs[0] = scratch.create_node("relu", [x]).output


# --- attribute kinds, enumerated attributes and operand dtypes: the verifier checks them -------


# These edit nodes in place (no create_node), so that only the verifier can catch them.
def set_attr(g, name: str, op: str, **changes) -> None:
    node = node_named(g, name, op)
    node.attrs = node.attrs.replace(**changes)


@mutation("convzoo", "verifier", "%leaky_relu = leaky_relu")
def attribute_of_wrong_kind(g):
    """an attribute of the wrong kind (negative_slope "0.1", a str, for a float)"""
    set_attr(g, "leaky_relu", "leaky_relu", negative_slope="0.1")


@mutation("convzoo", "verifier", "%gelu = gelu")
def unknown_gelu_approximation(g):
    """an enumerated attribute set to a value the op does not have (approximate="fast")"""
    set_attr(g, "gelu", "gelu", approximate="fast")


@mutation("tensorops", "verifier", "%div_1 = div")
def unknown_div_rounding_mode(g):
    """an enumerated attribute set to a value the op does not have (rounding_mode="round")"""
    set_attr(g, "div_1", "div", rounding_mode="round")


@mutation(
    "tensorops",
    "verifier",
    "%where = where",
)
def where_condition_not_bool(g):
    """where(cond, a, b) given a float condition (operands of the wrong dtype)"""
    node = node_named(g, "where", "where")
    node.set_input(0, node.inputs[1])


@mutation(
    "convzoo",
    "verifier",
    "%relu6 = clamp",
)
def clamp_without_bounds(g):
    """a clamp whose bounds were both dropped"""
    set_attr(g, "relu6", "clamp", min=None, max=None)


MUTATION_IDS = [m.name for m in MUTATIONS]
CHECKED = [m for m in MUTATIONS if m.gap is None]
