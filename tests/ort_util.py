"""ONNX models built in tests, run by onnxruntime (the oracle) and by graphopt."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

import graphopt


def matches_onnxruntime(model, feeds: dict, rtol: float = 1e-5, atol: float = 1e-5,
                        reference: bool = False):
    """Imports ``model``, runs it natively (every node, fallback="error") and, with
    ``reference``, through the reference interpreter too; each output must match
    onnxruntime's in dtype and value. Returns the imported graph."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    g = graphopt.from_onnx(model)
    args = [torch.from_numpy(np.asarray(feeds[v.name])) for v in g.inputs]
    runs = [graphopt.compile(g, backend="native", fallback="error")(*args)]
    if reference:
        runs.append(graphopt.run(g, *args))
    for got in runs:
        got = list(got) if isinstance(got, (list, tuple)) else [got]
        for e, o in zip(expected, got, strict=True):
            assert o.numpy().dtype == e.dtype, (o.dtype, e.dtype)
            np.testing.assert_allclose(o.numpy(), e, rtol=rtol, atol=atol)
    return g
