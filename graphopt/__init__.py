"""graphopt: a compiler-style graph optimization toolkit for PyTorch models.

Typical use::

    import graphopt
    graph = graphopt.trace(model, (x,))
    print(graph)                     # the typed IR as text
    out = graphopt.run(graph, x)     # reference interpreter, same structure as model(x)
    module = graphopt.to_torch(graph)
"""

from graphopt.errors import (
    GraphoptError,
    InputMismatchError,
    ParseError,
    TypeInferenceError,
    UnsupportedOpError,
    VerificationError,
)
from graphopt.frontend import trace
from graphopt.interpreter import run
from graphopt.ir import DType, Graph, Node, TensorType, Value

__version__ = "0.1.0"


def parse(text: str, constants=None) -> Graph:
    """Parse IR text (the form ``print(graph)`` writes) into a Graph."""
    from graphopt.ir.parser import parse_graph

    return parse_graph(text, constants)


def to_torch(graph: Graph):
    """Lower ``graph`` to a regular ``torch.nn.Module`` (weights as parameters/buffers)."""
    from graphopt.backends.torch_module import to_torch as _to_torch

    return _to_torch(graph)


__all__ = [
    "DType", "Graph", "GraphoptError", "InputMismatchError", "Node", "ParseError", "TensorType",
    "TypeInferenceError", "UnsupportedOpError", "Value", "VerificationError", "parse", "run",
    "to_torch", "trace",
]
