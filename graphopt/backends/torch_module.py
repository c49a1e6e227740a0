"""Lower a graph to a regular ``torch.nn.Module`` whose ``forward`` is generated Python code.

Each IR node becomes one ``torch.fx`` ``call_function`` of its op's reference implementation (a
module-level torch function; an op may register a ``"torch"`` lowering to use instead), so the
module is plain PyTorch: it trains, pickles, moves between devices and prints as readable code::

    >>> module = graphopt.to_torch(graphopt.trace(mlp, (x,)))
    >>> print(module.code)
    def forward(self, x):
        fc1_weight = self.fc1.weight
        fc1_bias = self.fc1.bias
        linear = graphopt_ops_nn_linear(x, fc1_weight, fc1_bias);  x = fc1_weight = fc1_bias = None
        relu = graphopt_ops_elementwise_relu(linear);  linear = None
        ...
        return (linear_1,)

* Weights: floating constants become trainable ``nn.Parameter``s (batch-norm statistics and
  integer/bool constants become buffers), at
  attribute paths mirroring their dotted names (``fc1.weight`` -> ``self.fc1.weight``), so the
  ``state_dict`` keys read like the traced model's, under the ``graph_module.`` prefix. The data
  is copied: the module owns its weights, the graph's read-only arrays are never aliased.
* Size symbols: a symbolic attribute (``reshape{shape=[s0, 80]}``) is computed in the generated
  code from the input shapes (``s0 = x.size(0)``, ``mul = s0 * 5``); static graphs get no such code.
* Structure: ``TorchModule.forward`` takes the traced model's inputs (any pytree of tensors or
  numpy arrays) and returns its outputs in the model's own structure, as ``graphopt.run`` does.
* Files: :func:`save_module` writes a pickle-free ``.graphopt`` bundle (IR text + safetensors
  weights, ``graphopt.backends.torch_bundle``) and :func:`load_module` rebuilds the module from
  one, parsing the IR and never unpickling, so a bundle from anywhere is safe to load. The
  module still pickles (``copy.deepcopy``, ``torch.save`` of your own in-memory object), but
  ``torch.load`` of a pickle runs code named by the file: never load a pickled module you did not
  write yourself.
"""

from __future__ import annotations

import functools
import importlib
import linecache
import operator
import re
import traceback
from typing import Any, Callable, Sequence

import numpy as np
import sympy
import torch
import torch.fx
import torch.utils._pytree as pytree
import torch.utils._sympy.functions as torch_sympy

from graphopt.backends.torch_bundle import load_module, module_ir_text, save_module  # noqa: F401
from graphopt.backends.torch_names import attribute_paths  # noqa: F401  (public here too)
from graphopt.backends.torch_names import _argument_name
from graphopt.errors import GraphoptError, InputMismatchError, ParseError
from graphopt.ir.attrs import has_symbols
from graphopt.filemap import is_file_mapped
from graphopt.ir.dtypes import numpy_to_torch
from graphopt.interpreter import reorder_kwargs
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.symexpr import parse_size_expr
from graphopt.stagereport import reports_stage

BACKEND = "torch"  # key of an op's own lowering in ``OpDef.lowerings`` (default: its reference)

# sympy functions with a direct Python spelling; anything else goes through ``eval_size_expr``.
_SIZE_FUNCTIONS: dict[type, Callable] = {
    torch_sympy.FloorDiv: operator.floordiv,
    torch_sympy.PythonMod: operator.mod,
    torch_sympy.Mod: operator.mod,
    sympy.Mod: operator.mod,
    torch_sympy.Max: max,
    torch_sympy.Min: min,
    sympy.Max: max,
    sympy.Min: min,
}


class TorchModule(torch.nn.Module):
    """A lowered graph: the generated ``graph_module`` (code and weights) and the I/O structure.

    Attributes:
        graph_module: the ``torch.fx.GraphModule`` taking and returning flat tensors.
        input_spec, output_spec: the traced model's pytree specs (None: flat tuple).
        input_names: the graph's inputs, for error messages.
        node_descriptions: fx node name -> IR node (``%name = op (from file:line)``), so that a
            failure at run time names the IR node it happened in.
        ir_text: the lowered graph's IR text (constants by type only), what
            :func:`save_module` writes next to the module's current weights; None for modules
            pickled by an older graphopt.
        constant_paths: IR constant name -> attribute path of its weight in ``graph_module``.
    """

    def __init__(
        self,
        graph_module: torch.fx.GraphModule,
        input_spec: Any,
        output_spec: Any,
        input_names: Sequence[str],
        node_descriptions: dict[str, str],
        ir_text: str | None = None,
        constant_paths: dict[str, str] | None = None,
    ):
        super().__init__()
        self.graph_module = graph_module
        self.input_spec = input_spec
        self.output_spec = output_spec
        self.input_names = tuple(input_names)
        self.node_descriptions = dict(node_descriptions)
        self.ir_text = ir_text
        self.constant_paths = dict(constant_paths or {})

    @property
    def code(self) -> str:
        """The generated Python source of the flat forward."""
        return self.graph_module.code

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        flat = self._flatten_inputs(args, kwargs)
        try:
            # ``.forward``, not ``__call__``: fx's call wrapper strips the traceback that
            # ``_failing_node`` maps back to an IR node (and prints the code to stderr).
            outputs = self.graph_module.forward(*flat)
        except GraphoptError:
            raise
        except Exception as exc:
            where = self._failing_node(exc)
            if where is None:
                raise
            shapes = ", ".join(str(tuple(t.shape)) for t in flat)
            raise GraphoptError(
                f"{where} failed in the generated torch module on inputs ({shapes}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if self.output_spec is not None:
            return pytree.tree_unflatten(list(outputs), self.output_spec)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    # Pickle the specs as text where pytree can: unpickling TreeSpec objects warns (torch 2.13).
    def __getstate__(self) -> dict:
        state = super().__getstate__()
        for key in ("input_spec", "output_spec"):
            state[key] = _SpecText.encode(state[key])
        return state

    def __setstate__(self, state: dict) -> None:
        for key in ("input_spec", "output_spec"):
            if isinstance(state.get(key), _SpecText):
                state[key] = pytree.treespec_loads(state[key].text)
        super().__setstate__(state)

    def _flatten_inputs(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        """Tensor leaves of ``(args, kwargs)`` in graph-input order (numpy arrays converted)."""
        leaves = pytree.tree_leaves((tuple(args), reorder_kwargs(kwargs, self.input_spec)))
        tensors = [
            torch.from_numpy(np.require(x, requirements="C")) if isinstance(x, np.ndarray) else x
            for x in leaves
            if isinstance(x, (torch.Tensor, np.ndarray))
        ]
        if len(tensors) != len(self.input_names):
            raise InputMismatchError(
                f"the module takes {len(self.input_names)} tensor input(s) "
                f"({', '.join(self.input_names)}), got {len(tensors)}"
            )
        return tensors

    def _failing_node(self, exc: BaseException) -> str | None:
        """The IR node whose generated line raised ``exc``, from the traceback."""
        forward = getattr(self.graph_module.forward, "__func__", None)
        code = getattr(forward, "__code__", None)
        for frame, lineno in reversed(list(traceback.walk_tb(exc.__traceback__))):
            if frame.f_code is code:
                line = linecache.getline(code.co_filename, lineno)
                match = re.match(r"\s*(\w+)\s*=", line)
                return self.node_descriptions.get(match.group(1)) if match else None
        return None


class GeneratedModule(torch.fx.GraphModule):
    """The fx module of a lowered graph; it pickles its fx graph node by node.

    ``GraphModule`` pickles its code and symbolically re-traces it on load, which would run the
    op references on proxies (they may branch on ``x.dim()``) and rename the nodes. Here the
    nodes are stored as plain records (kind, target, arguments, name) and rebuilt as they were,
    so the reloaded code is the same text and errors still map to IR nodes.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        records = []
        for node in self.graph.nodes:
            to_ref = functools.partial(torch.fx.node.map_arg, fn=lambda n: _NodeRef(n.name))
            records.append((node.op, node.target, to_ref(node.args), to_ref(node.kwargs),
                            node.name))
        weights = dict(self.named_parameters(remove_duplicate=False))
        weights.update(self.named_buffers(remove_duplicate=False))
        return (_rebuild_generated_module,
                (records, weights, type(self).__name__, self.training))


class _NodeRef:
    """A reference to an fx node by name inside a pickled ``GeneratedModule``."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __getstate__(self):
        return self.name

    def __setstate__(self, name: str) -> None:
        self.name = name


def _rebuild_generated_module(
    records: list[tuple], weights: dict[str, torch.Tensor], class_name: str, training: bool
) -> GeneratedModule:
    graph = torch.fx.Graph()
    env: dict[str, torch.fx.Node] = {}
    for op, target, args, kwargs, name in records:
        resolve = functools.partial(
            torch.fx.node.map_aggregate, fn=lambda a: env[a.name] if isinstance(a, _NodeRef) else a
        )
        node = graph.create_node(op, target, resolve(args), resolve(kwargs), name=name)
        env[name] = node
    module = GeneratedModule(weights, graph, class_name=class_name)
    module.train(training)
    return module


class _SpecText:
    """A pytree spec pickled as ``treespec_dumps`` text."""

    def __init__(self, text: str):
        self.text = text

    @staticmethod
    def encode(spec: Any) -> Any:
        if spec is None:
            return None
        try:
            return _SpecText(pytree.treespec_dumps(spec))
        except Exception:  # a container type pytree cannot serialize: pickle the object
            return spec


@reports_stage("to_torch")
def to_torch(graph: Graph, *, share_mapped_weights: bool = False) -> TorchModule:
    """Lower ``graph`` to a ``torch.nn.Module`` with generated code (see the module docstring).

    Args:
        graph: the graph to lower; it is not modified, and the module shares nothing with it.
        share_mapped_weights: constants that are copy-on-write maps of a file (a graph from
            ``load_graph``) become the module's weights without a copy; training the module
            then changes those constants of ``graph`` too (never the file). What
            ``load_module`` does, as its graph is its own.
        report: also return a :class:`~graphopt.stagereport.StageReport` (time, peak RSS).

    Returns:
        A ``TorchModule``: call it like the traced model; ``print(module.code)`` shows the code.

    Raises:
        GraphoptError: an op has no torch implementation that generated code can import (naming
            the op and the node), or an attribute uses a size symbol no graph input defines.
    """
    lowering = _Lowering(graph, share_mapped_weights)
    graph_module = lowering.run()
    paths = {name: path for name, path in lowering.paths.items() if path in lowering.weights}
    return TorchModule(
        graph_module,
        graph.input_spec,
        graph.output_spec,
        [f"%{v.name}: {v.type}" for v in graph.inputs],
        lowering.descriptions,
        ir_text=module_ir_text(graph, set(paths)),
        constant_paths=paths,
    )


def eval_size_expr(expr: str, **sizes: int) -> int:
    """Evaluate a size expression the generated code cannot spell in Python operators.

    Called by generated code, e.g. ``eval_size_expr('floor(s0/3)', s0=s0)``; the result is an int,
    as the reference interpreter substitutes it. The text is read by graphopt's size-expression
    grammar (``graphopt.ir.symexpr``), never by ``sympify``/``eval``: generated code may come
    from a pickled module.
    """
    parsed = _parse_size_expr(expr)
    return int(parsed.subs({s: sizes[s.name] for s in parsed.free_symbols}))


def _parse_size_expr(expr: str) -> sympy.Expr:
    try:
        return parse_size_expr(expr)
    except ParseError as exc:
        raise GraphoptError(f"eval_size_expr: {exc}") from exc


class _Lowering:
    """Builds the fx graph of one IR graph, node by node, in the IR's order."""

    def __init__(self, graph: Graph, share_mapped_weights: bool = False):
        self.graph = graph
        self.share_mapped_weights = share_mapped_weights
        self.fx = torch.fx.Graph()
        self.env: dict[int, torch.fx.Node] = {}  # id(Value) -> fx node holding it
        self.weights: dict[str, torch.Tensor] = {}  # attribute path -> Parameter or buffer
        self.paths = attribute_paths(list(graph.constants))
        self.sizes: dict[sympy.Expr, torch.fx.Node] = {}  # size expression -> fx node computing it
        self.descriptions: dict[str, str] = {}

    def run(self) -> torch.fx.GraphModule:
        taken: set[str] = set()
        for value in self.graph.inputs:
            self.env[id(value)] = self.fx.placeholder(_argument_name(value.name, taken))
        for node in self.graph.nodes:
            self.lower(node)
        outputs = tuple(self.operand(v) for v in self.graph.outputs)
        self.fx.output(outputs)
        self.fx.lint()
        class_name = re.sub(r"\W", "_", self.graph.name) or "Graph"
        return GeneratedModule(self.weights, self.fx, class_name=class_name)

    def lower(self, node: Node) -> None:
        fn = torch_function(node)
        args = tuple(None if v is None else self.operand(v) for v in node.inputs)
        kwargs = {k: self.attr(v) if has_symbols(v) else v for k, v in node.attrs.items()}
        if len(node.outputs) == 1:
            call = self.fx.create_node("call_function", fn, args, kwargs, name=node.name)
            self.env[id(node.outputs[0])] = call
        else:  # the call returns a tuple; each used output is a getitem of it
            call = self.fx.create_node(
                "call_function", fn, args, kwargs, name=f"{node.name}_outputs"
            )
            for i, out in enumerate(node.outputs):
                if out.uses or out.is_graph_output:
                    item = self.fx.create_node(
                        "call_function", operator.getitem, (call, i), name=out.name
                    )
                    self.env[id(out)] = item
        self.descriptions[call.name] = node.describe()

    def operand(self, value: Value) -> torch.fx.Node:
        node = self.env.get(id(value))
        if node is None:
            if not value.is_constant:
                raise GraphoptError(f"%{value.name} is used before it is defined")
            # Constants are fetched at their first use, which keeps the code readable.
            path = self.paths[value.name]
            self.weights[path] = _weight(value, self.share_mapped_weights)
            node = self.fx.create_node("get_attr", path, name=value.name)
            self.env[id(value)] = node
        return node

    # ------------------------------------------------------------------------------ size symbols
    def attr(self, value: Any) -> Any:
        """An attribute with size symbols -> the same structure with fx nodes computing them."""
        if isinstance(value, tuple):
            return tuple(self.attr(v) for v in value)
        if isinstance(value, sympy.Expr):
            return self.size(value)
        return value

    def size(self, expr: sympy.Expr) -> torch.fx.Node | int:
        if expr.is_Integer:
            return int(expr)
        if expr not in self.sizes:
            self.sizes[expr] = self._size_node(expr)
        return self.sizes[expr]

    def _size_node(self, expr: sympy.Expr) -> torch.fx.Node:
        call = functools.partial(self.fx.create_node, "call_function")
        if expr.is_Symbol:
            if expr not in self.graph.symbol_sources:
                raise GraphoptError(f"size symbol {expr} is not a dim of any graph input")
            index, axis = self.graph.symbol_sources[expr]
            x = self.env[id(self.graph.inputs[index])]
            return self.fx.create_node("call_method", "size", (x, axis), name=str(expr))
        if isinstance(expr, sympy.Add):
            return functools.reduce(
                lambda a, b: call(operator.add, (a, b)), [self.size(t) for t in expr.args]
            )
        if isinstance(expr, sympy.Mul):
            coeff, rest = expr.as_coeff_Mul()
            if coeff == 1:
                return functools.reduce(
                    lambda a, b: call(operator.mul, (a, b)), [self.size(f) for f in expr.args]
                )
            if coeff.is_Rational:  # p/q * rest; the graph promises it is an integer
                node = self.size(rest)
                if coeff.p != 1:
                    node = call(operator.mul, (node, int(coeff.p)))
                if coeff.q != 1:
                    node = call(operator.floordiv, (node, int(coeff.q)))
                return node
        if isinstance(expr, sympy.Pow) and expr.exp.is_Integer and expr.exp > 0:
            return call(operator.pow, (self.size(expr.base), int(expr.exp)))
        fn = _SIZE_FUNCTIONS.get(type(expr))
        if fn is not None:
            return call(fn, tuple(self.size(a) for a in expr.args))
        if isinstance(expr, (sympy.floor, sympy.ceiling)):
            # floor(n/d) and ceiling(n/d) for an integer d > 0, as IR text reads ``a // d``:
            # Python's // on ints is exactly floor, and ceil(n/d) = (n + d - 1) // d.
            num, den = sympy.fraction(sympy.together(expr.args[0]))
            if den.is_Integer and den > 0:
                node = self.size(num)
                if isinstance(expr, sympy.ceiling) and den != 1:
                    node = call(operator.add, (node, int(den) - 1))
                return call(operator.floordiv, (node, int(den)))
        text = str(expr)
        try:  # the generated code re-reads the text with the grammar: it must say the same
            same = _parse_size_expr(text) == expr
        except GraphoptError:
            same = False
        if not same:
            raise GraphoptError(f"to_torch cannot compute the size expression {expr} "
                                f"({type(expr).__name__}) in generated code")
        symbols = sorted(expr.free_symbols, key=lambda s: s.name)
        return call(eval_size_expr, (text,), {s.name: self.size(s) for s in symbols})


def torch_function(node: Node) -> Callable:
    """The function generated code calls for ``node``: its op's torch lowering or reference."""
    opdef = node.opdef
    fn = opdef.lowerings.get(BACKEND, opdef.reference)
    if fn is None or not _importable(fn):
        raise GraphoptError(
            f"to_torch cannot lower {node.describe()}: op '{node.op}' has no torch "
            f"implementation that generated code can import (got {fn!r}; it must be a "
            f"module-level function). Give the op one with "
            f"register_lowering('{BACKEND}', '{node.op}')."
        )
    return fn


def _importable(fn: Callable) -> bool:
    """True if ``fn`` is the global ``__name__`` of its ``__module__`` (what pickling needs).

    Python functions must also have ``__qualname__ == __name__`` (no closures or methods);
    torch's C functions (``torch.relu``) have a class-qualified name but import as ``torch.*``.
    """
    module_name = getattr(fn, "__module__", None)
    name = getattr(fn, "__name__", None)
    if not module_name or not name:
        return False
    if not module_name.startswith("torch") and getattr(fn, "__qualname__", None) != name:
        return False
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    return getattr(module, name, None) is fn


def _writable_mapped_view(data: np.ndarray) -> np.ndarray | None:
    """A writable view of a copy-on-write file map (IR constants are read-only views; the
    map below them is private to this process, so writing it is safe); None otherwise."""
    if not (is_file_mapped(data) and data.flags.c_contiguous):
        return None
    view = data.view()
    try:
        view.flags.writeable = True
    except ValueError:  # a read-only map (not one of graphopt.filemap's)
        return None
    return view


# Operand slots that hold statistics, not weights: gradients must not flow into them (torch's
# batch_norm rejects running statistics that require grad), so they become buffers.
STATISTICS_OPERANDS = {("batch_norm", 1), ("batch_norm", 2)}


def _is_trainable(value: Value) -> bool:
    if not value.dtype.is_floating:
        return False
    return not any((node.op, slot) in STATISTICS_OPERANDS for node, slot in value.uses)


def _weight(value: Value, share_mapped: bool = False) -> torch.Tensor:
    data = _writable_mapped_view(value.data) if share_mapped else None
    if data is None:
        data = value.data.copy()  # owned, writable storage
    tensor = numpy_to_torch(data, value.dtype)
    if _is_trainable(value):
        return torch.nn.Parameter(tensor, requires_grad=True)
    return tensor
