"""torch.export frontend: a model becomes a graphopt ``Graph``.

The model is exported non-strict, functionalized (``run_decompositions({})`` keeps high-level
ops such as linear, conv2d, layer_norm and SDPA, which is what the fusion passes want), then each
ATen call is translated by the converter registered for it in ``graphopt.frontend.aten``.
Unmapped ops are collected, not raised one at a time: a user porting a model wants the full list.
"""

from __future__ import annotations

import operator
import re
import warnings
from typing import Any, Callable

import torch
import torch.fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from graphopt.errors import GraphoptError, UnsupportedOpError
from graphopt.ir.dtypes import DType, torch_to_numpy
from graphopt.ir.graph import Graph, Value
from graphopt.ir.types import TensorType, normalize_dim
from graphopt.rewrite.dce import eliminate_dead_code
from graphopt.stagereport import reports_stage

Converter = Callable[..., Any]
SIZE_TYPES = (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)
# Ops whose scalar result depends on tensor data: the graph would need data-dependent shapes.
DATA_DEPENDENT = {"aten._local_scalar_dense.default", "aten.item.default", "aten.nonzero.default"}
CONVERTERS: dict[str, Converter] = {}
# fx call targets that only assert or annotate; they produce nothing the model computes.
IGNORED_TARGETS = {
    "aten._assert_tensor_metadata.default",
    "aten._assert_scalar.default",
    "aten.sym_constrain_range_for_size.default",
    "aten._assert_async.msg",
    "aten.sym_constrain_range.default",
}


def converter(*targets: str):
    """Register a converter for ATen overloads like ``"aten.add.Tensor"``."""

    def decorate(fn: Converter) -> Converter:
        for target in targets:
            CONVERTERS[target] = fn
        return fn

    return decorate


def source_location(node: torch.fx.Node) -> str:
    """``file.py:LINE in fn: code`` of the innermost user frame that produced ``node``."""
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)', trace)
    if not frames:
        return f"fx node '{node.name}' (no source location recorded)"
    path, line, fn, code = frames[-1]
    short = "/".join(path.split("/")[-2:])
    return f"{short}:{line} in {fn}: {code.strip()}"


class ConversionContext:
    """What converters see: the graph under construction plus helpers to emit IR."""

    def __init__(self, graph: Graph, copy_weights: bool = True):
        self.graph = graph
        self.fx_node: torch.fx.Node | None = None
        self.copy_weights = copy_weights  # False: parameters become borrowed constants

    @property
    def source(self) -> str | None:
        return source_location(self.fx_node) if self.fx_node is not None else None

    def emit(self, op: str, inputs, attrs=None, **kwargs) -> Value | tuple[Value, ...]:
        """Create an IR node; returns its output (or a tuple for multi-output ops)."""
        name = self.fx_node.name if self.fx_node is not None else op
        node = self.graph.create_node(op, list(inputs), attrs or {}, name=name,
                                      source=self.source, **kwargs)
        return node.outputs[0] if len(node.outputs) == 1 else tuple(node.outputs)

    def constant(self, value, dtype: DType | None = None, name: str = "c") -> Value:
        """A constant from a Python scalar, list or tensor (0-d for scalars)."""
        if isinstance(value, torch.Tensor):
            array, dt = torch_to_numpy(value)
            return self.graph.add_constant(array, name, dt)
        if dtype is None:
            dtype = scalar_dtype(value)
        tensor = torch.tensor(value, dtype=dtype.torch)
        array, dt = torch_to_numpy(tensor)
        return self.graph.add_constant(array, name, dt)

    def as_value(self, x, like: Value | None = None) -> Value:
        """Operand as a Value: scalars become 0-d constants (which do not promote tensors)."""
        if isinstance(x, Value):
            return x
        if isinstance(x, (bool, int, float)):
            return self.constant(x, scalar_dtype(x, like), name="scalar")
        raise GraphoptError(f"cannot use {x!r} as a tensor operand at {self.source}")

    def meta_type(self) -> TensorType | None:
        val = self.fx_node.meta.get("val") if self.fx_node is not None else None
        if isinstance(val, torch.Tensor):
            return TensorType(tuple(normalize_dim(d) for d in val.shape), DType.from_torch(val.dtype))
        return None


def scalar_dtype(value, like: Value | None = None) -> DType:
    if isinstance(value, bool):
        return DType.bool
    if isinstance(value, int):
        return DType.int64
    if like is not None and like.dtype in (DType.float64,):
        return DType.float64
    return DType.float32


def _meta_value(node: torch.fx.Node):
    val = node.meta.get("val")
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return normalize_dim(val.node.expr) if isinstance(val, torch.SymInt) else val
    return val


def import_exported_program(ep: ExportedProgram, name: str = "main",
                            copy_weights: bool = True) -> Graph:
    """Translate an ExportedProgram (already functional) into a Graph; with
    ``copy_weights=False`` its parameters and buffers become zero-copy constants."""
    from graphopt.frontend import aten  # noqa: F401  (registers the converters)

    graph = Graph(name)
    ctx = ConversionContext(graph, copy_weights)
    sig = ep.graph_signature
    kinds = {spec.arg.name: spec for spec in sig.input_specs}
    env: dict[torch.fx.Node, Any] = {}
    unsupported: list[tuple[str, str]] = []
    state = dict(ep.state_dict)
    state.update(ep.constants)

    for node in ep.graph.nodes:
        ctx.fx_node = node
        if node.op == "placeholder":
            env[node] = _import_placeholder(ctx, node, kinds[node.name], state)
        elif node.op == "call_function":
            _import_call(ctx, node, env, unsupported)
        elif node.op == "output":
            if unsupported:
                raise UnsupportedOpError(unsupported)
            graph.set_outputs(_graph_outputs(node, env))
    if unsupported:
        raise UnsupportedOpError(unsupported)
    graph.input_spec = ep.call_spec.in_spec
    graph.output_spec = ep.call_spec.out_spec
    eliminate_dead_code(graph, nodes=False)  # weights the converters did not use
    return graph


def _import_placeholder(ctx: ConversionContext, node: torch.fx.Node, spec, state: dict):
    """A user input becomes a graph input (a non-tensor one stays its specialized value);
    parameters, buffers and tensor constants become graph constants."""
    if spec.kind == InputKind.USER_INPUT:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            ttype = TensorType(tuple(normalize_dim(d) for d in val.shape),
                               DType.from_torch(val.dtype))
            return ctx.graph.add_input(node.name, ttype)
        return val  # a specialized non-tensor input
    tensor = state[spec.target]
    if ctx.copy_weights or tensor.device.type != "cpu" or not tensor.is_contiguous():
        return ctx.constant(tensor.detach(), name=spec.target)
    array, dtype = torch_to_numpy(tensor, copy=False)  # zero-copy: the graph borrows it
    return ctx.graph.add_constant(array, spec.target, dtype,
                                  owner=ParameterOwner(tensor, spec.target))


class ParameterOwner:
    """What a borrowed constant shares memory with: a model's parameter / buffer, and its
    version counter at trace time (torch bumps it on every in-place change made through the
    tensor; changes through ``.data`` bypass it and go unnoticed)."""

    __slots__ = ("tensor", "version", "name")

    def __init__(self, tensor: torch.Tensor, name: str):
        self.tensor = tensor
        self.version = tensor._version
        self.name = name

    def changed(self) -> str | None:
        if self.tensor._version != self.version:
            return f"model tensor {self.name}"
        return None


def _import_call(ctx: ConversionContext, node: torch.fx.Node, env: dict,
                 unsupported: list[tuple[str, str]]) -> None:
    """Convert one ``call_function`` node into ``env``; an op without a converter is added to
    ``unsupported``, and once there is one, nothing more is built."""
    target = str(node.target) if node.target is not operator.getitem else "getitem"
    if target in IGNORED_TARGETS:
        return
    raw = node.meta.get("val")
    if target != "getitem" and isinstance(raw, SIZE_TYPES) and target not in DATA_DEPENDENT:
        # Size arithmetic (sym_size, operator.mul on SymInts...): its value is known
        # symbolically from export's shape environment, so it needs no IR node.
        env[node] = _meta_value(node)
        return
    fn = CONVERTERS.get(target)
    if fn is None:
        unsupported.append((target, source_location(node)))
        env[node] = None
        return
    if unsupported:  # keep scanning for more unmapped ops, but build nothing more
        env[node] = None
        return
    def converted(a):
        return env.get(a, a) if isinstance(a, torch.fx.Node) else a

    args = torch.fx.node.map_aggregate(node.args, converted)
    kwargs = torch.fx.node.map_aggregate(node.kwargs, converted)
    try:
        result = fn(ctx, *args, **kwargs)
    except GraphoptError as exc:
        raise type(exc)(f"{exc}\n  while converting {target} at {source_location(node)}") from exc
    env[node] = result
    _check_against_meta(ctx, node, result, target)


def _graph_outputs(node: torch.fx.Node, env: dict) -> list[Value]:
    """The values the fx ``output`` node returns; each must be a tensor the graph computes."""
    outputs = []
    flat = torch.fx.node.map_aggregate(node.args[0], lambda a: a)
    for item in (flat if isinstance(flat, (list, tuple)) else [flat]):
        value = env.get(item) if isinstance(item, torch.fx.Node) else item
        if not isinstance(value, Value):
            raise GraphoptError(
                f"model output {item!r} is not a tensor computed by the graph; "
                "graphopt graphs return tensors only"
            )
        outputs.append(value)
    return outputs


def _check_against_meta(ctx: ConversionContext, node, result, target: str) -> None:
    """Our shape rule must agree with torch's; a disagreement is a graphopt bug, say so."""
    expected = ctx.meta_type()
    if expected is None or not isinstance(result, Value):
        return
    if not result.type.same_as(expected):
        raise GraphoptError(
            f"graphopt infers {result.type} for {target} at {source_location(node)} but torch "
            f"says {expected}; please report this with the model"
        )


@reports_stage("trace")
def trace(model: torch.nn.Module, args: tuple, kwargs: dict | None = None,
          dynamic_shapes: Any = None, copy_weights: bool = False) -> Graph:
    """Trace ``model`` with ``torch.export`` (non-strict) into graphopt IR.

    Args:
        model: an ``nn.Module`` (put it in eval mode first for inference graphs).
        args: example positional inputs (a tuple).
        kwargs: example keyword inputs.
        dynamic_shapes: passed to ``torch.export.export``; dynamic dims become size symbols.
        copy_weights: snapshot the weights. By default the graph's constants share memory
            with the model's (contiguous CPU) parameters and buffers, so tracing a large
            model costs no second copy of it; changing those weights in place afterwards
            makes lowering the graph raise :class:`StaleConstantError` (re-trace instead).
        report: also return a :class:`~graphopt.stagereport.StageReport` (time, peak RSS).

    Returns:
        The graph; weights (parameters, buffers, tensor constants) are graph constants.
        ``(graph, StageReport)`` with ``report=True``.

    Raises:
        UnsupportedOpError: listing every ATen op that has no converter, with source lines.
    """
    if not isinstance(args, tuple):
        args = (args,)
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.13's own pytree pickling warns about its deprecated LeafSpec; not actionable.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        ep = torch.export.export(model, args, kwargs=kwargs, dynamic_shapes=dynamic_shapes,
                                 strict=False)
        ep = ep.run_decompositions({})
    return import_exported_program(ep, name=type(model).__name__, copy_weights=copy_weights)
