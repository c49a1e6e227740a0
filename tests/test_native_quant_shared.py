"""Per-tensor dynamic int8 linears that read one input (attention's Q, K and V projections)
share one quantization of it on the native runtime, with results equal bit for bit to the
op's reference (graphopt/native/lower/quant.py)."""

from __future__ import annotations

import numpy as np
import pytest
from test_native_qgemm import F32, _dynamic_reference, _operands, _rng

import graphopt
from graphopt.ir.graph import Graph
from graphopt.ir.types import TensorType


@pytest.mark.parametrize("m,k", [(16, 64), (13, 257), (128, 768)])
def test_projections_of_one_input_share_its_quantization(m, k):
    """Q, K and V projections (three per-tensor qlinear_dynamic reading one input) quantize it
    once: one "dynamic_quantize_linear" step and three static "qlinear" steps, each output
    equal, bit for bit, to the op's reference."""
    from graphopt.ir.dtypes import DType

    rng = _rng(m + k)
    x = (rng.standard_normal((m, k)) * 2).astype(F32)
    graph = Graph("qkv")
    xv = graph.add_input("x", TensorType((m, k), DType.float32))
    weights, outputs = [], []
    for i, n in enumerate((48, 48, 32)):
        _, w, w_scale, bias = _operands(m, k, n, seed=10 + i)
        w[w == -128] = -127
        weights.append((w, w_scale, bias))
        node = graph.create_node("qlinear_dynamic", [
            xv, graph.add_constant(w, f"w{i}"), graph.add_constant(w_scale, f"s{i}"),
            graph.add_constant(bias, f"b{i}")])
        outputs.append(node.outputs[0])
    graph.set_outputs(outputs)
    fn = graphopt.compile(graph, backend="native", threads=2, fallback="error")
    got = fn(x)
    kernels = [s.kernel for s in fn.plan.steps]
    assert kernels.count("dynamic_quantize_linear") == 1 and kernels.count("qlinear") == 3
    for out, (w, w_scale, bias) in zip(got, weights):
        np.testing.assert_array_equal(np.asarray(out), _dynamic_reference(x, w, w_scale, bias))
