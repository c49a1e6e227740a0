"""The typed graph IR: values, nodes, graphs, types, printer/parser and verifier."""

from graphopt.ir.attrs import Attrs
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.types import Dim, QuantInfo, TensorType

__all__ = ["Attrs", "DType", "Dim", "Graph", "Node", "QuantInfo", "TensorType", "Value"]
