"""ONNX RNN / GRU / LSTM (``onnx_rnn``) -> one "onnx_rnn" step (csrc/rt_rnn.cpp).

The activations (names with their alpha / beta, resolved by the op's own
``activation_specs``) become kernel codes and a small constant parameter table.
"""

from __future__ import annotations

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.native.lower._common import require_float32
from graphopt.ops.onnx_rnn import activation_specs
from graphopt.ops.registry import register_lowering

_CELLS = {"RNN": 0, "GRU": 1, "LSTM": 2}
_ACTIVATIONS = {"Relu": 0, "Tanh": 1, "Sigmoid": 2, "Affine": 3, "LeakyRelu": 4,
                "ThresholdedRelu": 5, "ScaledTanh": 6, "HardSigmoid": 7, "Elu": 8,
                "Softsign": 9, "Softplus": 10}


@register_lowering("native", "onnx_rnn")
def lower_onnx_rnn(ctx) -> None:
    require_float32(ctx, 0, 1, 2, 3, 5, 6, 7)
    a = ctx.attrs
    cell = _CELLS.get(a["cell"])
    if cell is None:
        ctx.invalid(f"cell {a['cell']!r} is not RNN, GRU or LSTM")
    directions = 2 if a["direction"] == "bidirectional" else 1
    try:
        specs = activation_specs(a["cell"], directions, a["activations"],
                                 a["activation_alpha"], a["activation_beta"])
    except IndexError:
        ctx.invalid("fewer activations than the cell needs")
    codes, params = [], []
    for name, alpha, beta in (spec for per in specs for spec in per):
        if name not in _ACTIVATIONS:
            ctx.invalid(f"RNN activation {name!r}")
        codes.append(_ACTIVATIONS[name])
        params += [0.0 if alpha is None else alpha, 0.0 if beta is None else beta]
    x = ctx.contiguous(0)
    layout = a["layout"]
    seq, batch = (x.shape[0], x.shape[1]) if layout == 0 else (x.shape[1], x.shape[0])
    hidden = a["hidden_size"]
    gates = {0: 1, 1: 3, 2: 4}[cell]
    if ctx.in_shape(1) != (directions, gates * hidden, x.shape[2]) or \
            ctx.in_shape(2) != (directions, gates * hidden, hidden):
        ctx.invalid(f"weights {ctx.in_shape(1)} / {ctx.in_shape(2)} do not match the cell")
    lens = None
    if ctx.has(4):
        if ctx.in_dtype(4) not in (DType.int32, DType.int64):
            ctx.unsupported(f"sequence_lens of dtype {ctx.in_dtype(4)}")
        lens = ctx.cast(4, DType.int64)
    outs = [ctx.output(i) for i in range(len(ctx.node.outputs))]
    y_c = outs[2] if cell == 2 else None
    table = ctx.builder.const_ref(np.array(params, dtype=np.float64), DType.float64)
    clip = a["clip"]
    ctx.emit("onnx_rnn",
             [outs[0], outs[1], y_c, x, ctx.contiguous(1), ctx.contiguous(2),
              ctx.contiguous(3), lens, ctx.contiguous(5), ctx.contiguous(6), ctx.contiguous(7),
              table],
             [cell, seq, batch, x.shape[2], hidden, directions, int(a["direction"] == "reverse"),
              layout, int(clip is not None), int(a["input_forget"]),
              int(a["linear_before_reset"]), len(codes), *codes],
             [0.0 if clip is None else clip])
