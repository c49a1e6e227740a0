"""Asymmetric zero padding before convs is absorbed into ONNX Conv pads (and only then)."""

from __future__ import annotations

import collections

import torch
import torch.nn as nn
import torch.nn.functional as F

import graphopt


class PaddedConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.dw = nn.Conv2d(4, 4, 3, groups=4)

    def forward(self, x):
        y = torch.relu(self.conv(F.pad(x, (0, 1, 0, 1))))  # TF-style 'same' padding
        kept = F.pad(y, (1, 1, 1, 1), value=1.0)  # non-zero value: must stay a Pad
        return self.dw(F.pad(y, (1, 2, 0, 1))), kept


def _ops(model):
    return collections.Counter(n.op_type for n in model.graph.node)


def test_zero_pads_fold_into_conv_and_outputs_match():
    model = PaddedConvs().eval()
    x = torch.randn(1, 3, 11, 11)
    for pipeline in (None, "default"):
        graph = graphopt.trace(model, (x,))
        if pipeline:
            graph = graphopt.optimize(graph, pipeline)
        assert graph.op_histogram()["pad"] == 3
        onnx_model = graphopt.to_onnx(graph)
        assert _ops(onnx_model)["Pad"] == 1  # only the value=1.0 pad remains
        compiled = graphopt.compile(graph, backend="onnxruntime")
        for got, want in zip(compiled(x), model(x)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
