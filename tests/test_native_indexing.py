"""Native indexing kernels ("take", "gather"): embedding, index_select, advanced indexing with
one index tensor or several constant ones, torch.gather, and their error paths."""

from __future__ import annotations

import pytest
import torch
from native_util import Const, check_op, op_graph, randn

import graphopt


def test_embedding_and_index_ops():
    w = randn(11, 6)
    check_op("embedding", [Const(w), torch.tensor([[0, 10, 3], [3, 3, 1]])])
    check_op("embedding", [Const(w), torch.tensor([2, 4], dtype=torch.int32)])
    check_op("index_select", [randn(4, 5, 3), torch.tensor([4, 0, 0, 2])], {"axis": 1})
    check_op("index", [randn(3, 6, 2), Const(torch.tensor([[5, -1], [0, 2]]))], {"axes": (1,)})
    idx = torch.tensor([[0, 2, 1], [1, 1, 0]])
    check_op("gather", [randn(2, 3), idx], {"axis": 1})
    check_op("gather", [randn(4, 3), idx], {"axis": 0})



def test_index_with_several_constant_index_tensors():
    # HF's attention-mask expansion: mask[[[[0]]], arange] on axes (0, 1) -> [1, 1, 1, S]
    mask = torch.tensor([[1, 1, 0, 1, 0]]).bool()
    check_op("index", [mask, Const(torch.zeros(1, 1, 1, 1, dtype=torch.long)),
                       Const(torch.arange(5).view(1, 1, 1, 5))], {"axes": (0, 1)})
    # broadcasting indices, negative entries, axes in the middle, int32
    i0 = torch.tensor([[2], [-1], [0]])
    i1 = torch.tensor([[0, 3, -2, 1]], dtype=torch.int32)
    check_op("index", [randn(2, 3, 4, 5), Const(i0), Const(i1)], {"axes": (1, 2)})
    check_op("index", [randn(3, 4, 2, 2), Const(torch.tensor([0, 2])), Const(torch.tensor([1, 1])),
                       Const(torch.tensor([0, 1]))], {"axes": (0, 1, 2)})


def test_index_with_several_index_tensors_unsupported_cases():
    from graphopt.native import NativeUnsupportedError

    x = randn(3, 4, 5)
    for inputs, axes, reason in [
        ([x, torch.tensor([0, 2]), Const(torch.tensor([1, 3]))], (0, 1), "non-constant"),
        ([x, Const(torch.tensor([0, 2])), Const(torch.tensor([1, 3]))], (0, 2), "non-adjacent"),
    ]:
        g, _ = op_graph("index", inputs, {"axes": axes})
        with pytest.raises(NativeUnsupportedError, match=reason):
            graphopt.compile(g, backend="native", fallback="error")
    g, _ = op_graph("index", [x, Const(torch.tensor([0, 2])), Const(torch.tensor([1, 4]))],
                    {"axes": (0, 1)})
    with pytest.raises(IndexError, match="index 4 is out of bounds for axis 1 of size 4"):
        graphopt.compile(g, backend="native")

def test_embedding_out_of_range_raises():
    g, feeds = op_graph("embedding", [Const(randn(5, 2)), torch.tensor([1, 5])])
    fn = graphopt.compile(g, backend="native")
    with pytest.raises(IndexError, match="out of bounds"):
        fn(*feeds)
