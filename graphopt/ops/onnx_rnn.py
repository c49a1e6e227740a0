"""ONNX's recurrent layers (RNN, GRU, LSTM) as one IR op with ONNX semantics.

``onnx_rnn`` keeps the ONNX weight layout ([directions, gates*hidden, in]), gate order (LSTM
iofc, GRU zrh), activations, clip, sequence lengths and both layouts, so that importing and
lowering back are one node each. The reference implementation is a plain loop over time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from graphopt.errors import TypeInferenceError
from graphopt.ir.types import TensorType
from graphopt.ops.registry import RNN_GATES, AttrSpec, WeightSpec, register_op

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DEFAULT_ACTIVATIONS = {"RNN": ("Tanh",), "GRU": ("Sigmoid", "Tanh"),
                       "LSTM": ("Sigmoid", "Tanh", "Tanh")}
# activation name -> (number of alpha/beta parameters it takes, default alpha, default beta)
ACTIVATION_PARAMS = {"Affine": (2, 1.0, 0.0), "LeakyRelu": (1, 0.01, None),
                     "ThresholdedRelu": (1, 1.0, None), "ScaledTanh": (2, 1.0, 1.0),
                     "HardSigmoid": (2, 0.2, 0.5), "Elu": (1, 1.0, None)}


def _activation(name: str, alpha, beta):
    fns = {
        "Relu": torch.relu, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid,
        "Softsign": F.softsign, "Softplus": F.softplus,
        "Affine": lambda x: alpha * x + beta,
        "LeakyRelu": lambda x: F.leaky_relu(x, alpha),
        "ThresholdedRelu": lambda x: torch.where(x > alpha, x, torch.zeros_like(x)),
        "ScaledTanh": lambda x: alpha * torch.tanh(beta * x),
        "HardSigmoid": lambda x: torch.clamp(alpha * x + beta, 0, 1),
        "Elu": lambda x: F.elu(x, alpha),
    }
    if name not in fns:
        raise ValueError(f"RNN activation '{name}'")
    return fns[name]


def activation_specs(cell: str, directions: int, names, alphas, betas):
    """Per direction, the cell's activations as (name, alpha, beta) (ONNX consumes alpha/beta
    in order; an activation without a parameter has None there)."""
    names = tuple(names) or DEFAULT_ACTIVATIONS[cell] * directions
    alphas, betas = list(alphas), list(betas)
    specs = []
    for name in names:
        count, default_alpha, default_beta = ACTIVATION_PARAMS.get(name, (0, None, None))
        alpha = alphas.pop(0) if count >= 1 and alphas else default_alpha
        beta = betas.pop(0) if count >= 2 and betas else default_beta
        specs.append((name, alpha, beta))
    per = len(specs) // directions
    return [specs[d * per:(d + 1) * per] for d in range(directions)]


def activation_functions(cell: str, directions: int, names, alphas, betas):
    """Per direction, the cell's activation callables."""
    return [[_activation(*spec) for spec in per_direction]
            for per_direction in activation_specs(cell, directions, names, alphas, betas)]


def _rnn_infer(types, attrs):
    x = types[0]
    h = attrs["hidden_size"]
    directions = 2 if attrs["direction"] == "bidirectional" else 1
    if x.rank != 3:
        raise TypeInferenceError(f"{attrs['cell']} input must be 3-D, got {x}")
    if attrs["layout"] == 0:
        seq, batch = x.shape[0], x.shape[1]
        y = (seq, directions, batch, h)
        state = (directions, batch, h)
    else:
        batch, seq = x.shape[0], x.shape[1]
        y = (batch, seq, directions, h)
        state = (batch, directions, h)
    outs = [TensorType(y, x.dtype), TensorType(state, x.dtype)]
    if attrs["cell"] == "LSTM":
        outs.append(TensorType(state, x.dtype))
    return outs


@register_op(
    "onnx_rnn",
    inputs=("x", "w", "r", "b?", "sequence_lens?", "initial_h?", "initial_c?", "p?"),
    attrs={"cell": AttrSpec(str, doc="RNN, GRU or LSTM"), "hidden_size": AttrSpec(int),
           "direction": "forward", "activations": (), "activation_alpha": (),
           "activation_beta": (), "clip": AttrSpec((float, type(None)), None),
           "input_forget": False, "linear_before_reset": False, "layout": 0},
    weights=WeightSpec(slot=1, layout=RNN_GATES, bias=3),  # R (slot 2) has the same layout
    infer=_rnn_infer,
)
def onnx_rnn(x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None, *,
             cell, hidden_size, direction="forward", activations=(), activation_alpha=(),
             activation_beta=(), clip=None, input_forget=False, linear_before_reset=False,
             layout=0):
    """ONNX RNN/GRU/LSTM: outputs Y, Y_h (and Y_c for LSTM)."""
    h = hidden_size
    if layout == 1:  # (batch, seq, ...) -> (seq, batch, ...)
        x = x.transpose(0, 1)
        initial_h = None if initial_h is None else initial_h.transpose(0, 1)
        initial_c = None if initial_c is None else initial_c.transpose(0, 1)
    seq, batch = x.shape[0], x.shape[1]
    directions = 2 if direction == "bidirectional" else 1
    fns = activation_functions(cell, directions, activations, activation_alpha, activation_beta)
    lengths = (torch.full((batch,), seq, dtype=torch.long) if sequence_lens is None
               else sequence_lens.long())
    ys, hs, cs = [], [], []
    for d in range(directions):
        reverse = direction == "reverse" or d == 1
        g = GATES[cell] * h
        bias = torch.zeros(2 * g, dtype=x.dtype) if b is None else b[d]
        h_t = torch.zeros(batch, h, dtype=x.dtype) if initial_h is None else initial_h[d]
        c_t = torch.zeros(batch, h, dtype=x.dtype) if initial_c is None else initial_c[d]
        peep = torch.zeros(3 * h, dtype=x.dtype) if p is None else p[d]
        out = torch.zeros(seq, batch, h, dtype=x.dtype)
        for step in range(seq):
            # reverse runs over each sequence's own valid steps backwards
            t = (lengths - 1 - step) if reverse else torch.full((batch,), step)
            active = (step < lengths)
            t = t.clamp(min=0)
            x_t = x[t, torch.arange(batch)]
            gx = x_t @ w[d].T + bias[:g]
            gh = h_t @ r[d].T + bias[g:]
            new_h, new_c = _cell(cell, gx, gh, h_t, c_t, r[d], bias[g:], peep, fns[d], h,
                                 clip, input_forget, linear_before_reset)
            keep = active.unsqueeze(1)
            h_t = torch.where(keep, new_h, h_t)
            c_t = torch.where(keep, new_c, c_t)
            out[t, torch.arange(batch)] = torch.where(keep, new_h, out[t, torch.arange(batch)])
        ys.append(out)
        hs.append(h_t)
        cs.append(c_t)
    y = torch.stack(ys, 1)  # (seq, dirs, batch, h)
    y_h, y_c = torch.stack(hs), torch.stack(cs)
    if layout == 1:
        y, y_h, y_c = y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)
    return (y, y_h, y_c) if cell == "LSTM" else (y, y_h)


def _cell(cell, gx, gh, h_t, c_t, r, rb, peep, fns, h, clip, input_forget, lbr):
    def clipped(v):
        return v if clip is None else v.clamp(-clip, clip)

    if cell == "RNN":
        return fns[0](clipped(gx + gh)), c_t
    if cell == "GRU":
        f, g = fns
        z = f(clipped(gx[:, :h] + gh[:, :h]))
        rr = f(clipped(gx[:, h:2 * h] + gh[:, h:2 * h]))
        if lbr:
            hh = g(clipped(gx[:, 2 * h:] + rr * gh[:, 2 * h:]))
        else:  # reset applied before the recurrent matmul
            hh = g(clipped(gx[:, 2 * h:] + (rr * h_t) @ r[2 * h:].T + rb[2 * h:]))
        return (1 - z) * hh + z * h_t, c_t
    f, g, hf = fns
    pre = gx + gh  # gates i, o, f, c
    i = f(clipped(pre[:, :h] + peep[:h] * c_t))
    fg = 1 - i if input_forget else f(clipped(pre[:, 2 * h:3 * h] + peep[2 * h:] * c_t))
    c_new = fg * c_t + i * g(clipped(pre[:, 3 * h:]))
    o = f(clipped(pre[:, h:2 * h] + peep[h:2 * h] * c_new))
    return o * hf(c_new), c_new
