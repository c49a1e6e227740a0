"""One valid call of every registered op: the seeds that tests/test_native_schema_ops.py grows
into per-op cases from each op's schema (optional operands dropped, axes made negative,
broadcast, size-1 / empty / non-contiguous inputs).

Elementwise ops without required attributes are derived from their traits (``derived``); every
other op has an entry in ``SAMPLES``. A new op without either fails
``test_every_op_has_a_sample``: add its call here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from native_util import Const, randn

from graphopt import _C
from graphopt.ir.dtypes import DType
from graphopt.ops.registry import REQUIRED, OpDef
from graphopt.quant.weight_only import quantize_blocks


@dataclass
class Sample:
    args: list
    attrs: dict = field(default_factory=dict)
    rtol: float = 1e-4
    atol: float = 1e-5


class Bf16Const:
    """A bfloat16 constant (numpy has no bfloat16: stored as its bits)."""

    def __init__(self, data: torch.Tensor):
        self.bits = data.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def codes(*shape, seed=0, dtype=torch.uint8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    lo, hi = (0, 256) if dtype == torch.uint8 else (-128, 128)
    return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int32).to(dtype)


def ints(*shape, lo=-20, hi=20, seed=0, dtype=torch.int64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64).to(dtype)


def bools(*shape, seed=0) -> torch.Tensor:
    return ints(*shape, lo=0, hi=2, seed=seed).bool()


def scalar(v, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(v, dtype=dtype)


def _positive(*shape, seed=0):
    return randn(*shape, seed=seed).abs() + 0.1


# Input domains of the unary elementwise ops whose reference is undefined elsewhere.
_UNARY_INPUT = {
    "log": _positive, "sqrt": _positive, "rsqrt": _positive,
    "log1p": lambda *s: randn(*s).abs() - 0.5,
    "acos": lambda *s: torch.rand(*s, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9,
    "asin": lambda *s: torch.rand(*s, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9,
    "atanh": lambda *s: torch.rand(*s, generator=torch.Generator().manual_seed(2)) * 1.8 - 0.9,
    "acosh": lambda *s: _positive(*s) + 1.0,
    "bitwise_not": lambda *s: ints(*s), "logical_not": lambda *s: bools(*s),
}
_INT_BINARY = {"bitwise_and", "bitwise_or", "bitwise_xor"}
_BOOL_BINARY = {"logical_and", "logical_or", "logical_xor"}


def derived(op: OpDef) -> Sample | None:
    """The sample of an elementwise op with no required attribute, from its traits."""
    if "elementwise" not in op.traits or any(
            spec.default is REQUIRED for spec in op.attrs.values()):
        return None
    if op.inputs == ("x",):
        make = _UNARY_INPUT.get(op.name, lambda *s: randn(*s) * 2.0)
        return Sample([make(2, 3, 4)])
    if op.inputs == ("a", "b") and "broadcast" in op.traits:
        if op.name in _INT_BINARY:
            return Sample([ints(2, 3, 4), ints(3, 1, seed=1)])
        if op.name in _BOOL_BINARY:
            return Sample([bools(2, 3, 4), bools(3, 1, seed=1)])
        a, b = randn(2, 3, 4), randn(3, 1, seed=1)
        if op.name == "pow":
            return Sample([a.abs() + 0.5, b])
        if op.name in ("fmod", "remainder", "div", "atan2"):
            return Sample([a, b.abs() + 0.5])
        return Sample([a, b])
    return None


def _qlinear_args(static: bool):
    if static:
        return [codes(3, 12), scalar(0.02), scalar(131, torch.uint8),
                Const(codes(5, 12, seed=2, dtype=torch.int8)), Const(randn(5).abs() * 0.01 + 2e-3),
                Const(randn(5, seed=3)), None, None]
    return [randn(3, 12), Const(codes(5, 12, seed=2, dtype=torch.int8)),
            Const(randn(5).abs() * 0.01 + 2e-3), Const(randn(5, seed=3)), randn(3, 5, seed=4)]


def _rnn():
    return [randn(4, 2, 3), Const(randn(1, 20, 3, seed=1) * 0.5),
            Const(randn(1, 20, 5, seed=2) * 0.5), randn(1, 40, seed=3) * 0.1, None,
            randn(1, 2, 5, seed=4), randn(1, 2, 5, seed=5), randn(1, 15, seed=6) * 0.1]


def _weight_only():
    w_codes, w_scales = quantize_blocks(randn(6, 40, seed=1).numpy(), 4, 32)
    return [randn(3, 40), Const(torch.from_numpy(w_codes)), Const(torch.from_numpy(w_scales)),
            Const(randn(6, seed=2)), randn(3, 6, seed=3)]


_CONV = {"stride": (2, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 2}
_REDUCE = {"axes": (1,), "keepdim": False}
_ACT = {"activation": "relu", "activation_params": ()}

SAMPLES: dict[str, Sample] = {
    # -------------------------------------------------------------------- elementwise + attrs
    "cast": Sample([randn(2, 3) * 5], {"dtype": DType.int32}),
    "bitcast": Sample([randn(2, 3)], {"dtype": DType.int32}),
    "clamp": Sample([randn(2, 3, 4)], {"min": -0.5, "max": 0.7}),
    "bitshift": Sample([ints(2, 3, lo=0, hi=100), ints(3, lo=0, hi=5, seed=1)],
                       {"direction": "LEFT"}),
    "where": Sample([bools(2, 3, 4), randn(3, 4), randn(2, 1, 4, seed=1)]),
    "prelu": Sample([randn(2, 3, 4, 5), Const(randn(3, 1, 1).abs())]),
    "isinf": Sample([torch.tensor([1.0, float("inf"), -float("inf"), float("nan"), 0.0])]),
    # ---------------------------------------------------------------------------- reductions
    **{op: Sample([randn(2, 3, 4)], _REDUCE) for op in ("sum", "mean", "amax", "amin", "prod",
                                                         "logsumexp")},
    "all": Sample([bools(2, 3, 4)], _REDUCE),
    "any": Sample([bools(2, 3, 4)], _REDUCE),
    "std": Sample([randn(2, 3, 4)], {**_REDUCE, "correction": 1.0}),
    "var": Sample([randn(2, 3, 4)], {**_REDUCE, "correction": 0.0}),
    "argmax": Sample([randn(2, 3, 4)], {"axis": 1, "keepdim": False}),
    "argmin": Sample([randn(2, 3, 4)], {"axis": 2, "keepdim": True}),
    "softmax": Sample([randn(2, 3, 4)], {"axis": 1}),
    "log_softmax": Sample([randn(2, 3, 4)], {"axis": 2}),
    "hardmax": Sample([randn(2, 3, 4)], {"axis": 1}),
    "cumsum": Sample([randn(2, 3, 4)], {"axis": 1, "dtype": None}),
    "cumprod": Sample([randn(2, 3, 4)], {"axis": 2}),
    "topk": Sample([randn(2, 3, 6)], {"k": 3, "axis": 2, "largest": True, "sorted": True}),
    # -------------------------------------------------------------------------------- shape
    "concat": Sample([randn(2, 3), randn(2, 1, seed=1), randn(2, 4, seed=2)], {"axis": 1}),
    "expand": Sample([randn(3, 1)], {"shape": (2, 3, 4)}),
    "flip": Sample([randn(2, 3, 4)], {"axes": (0, 2)}),
    "pad": Sample([randn(2, 3, 4)], {"pads": (1, 2), "mode": "constant", "value": 0.5}),
    "permute": Sample([randn(2, 3, 4)], {"perm": (2, 0, 1)}),
    "reshape": Sample([randn(2, 3, 4)], {"shape": (6, 4)}),
    "roll": Sample([randn(2, 3, 4)], {"shifts": (1, -2), "axes": (1, 2)}),
    "select": Sample([randn(2, 3, 4)], {"axis": 1, "index": 2}),
    "slice": Sample([randn(2, 5, 4)], {"axis": 1, "start": 1, "end": 5, "step": 2}),
    "split": Sample([randn(2, 5, 4)], {"axis": 1, "sizes": (2, 3)}),
    "squeeze": Sample([randn(2, 1, 4)], {"axes": (1,)}),
    "unsqueeze": Sample([randn(2, 3)], {"axis": 1}),
    "tile": Sample([randn(2, 3)], {"repeats": (2, 1, 3)}),
    "tril": Sample([randn(2, 4, 5)], {"diagonal": 1}),
    "triu": Sample([randn(2, 4, 5)], {"diagonal": -1}),
    "shape": Sample([randn(2, 3, 4)], {"start": 1, "end": None}),
    "arange": Sample([], {"start": 2, "end": 11, "step": 3, "dtype": DType.int64}),
    "full": Sample([], {"shape": (2, 3), "value": 1.5, "dtype": DType.float32}),
    "pixel_shuffle": Sample([randn(1, 8, 3, 4)], {"factor": 2}),
    # ----------------------------------------------------------------------------- indexing
    "gather": Sample([randn(4, 3), ints(2, 3, lo=0, hi=4)], {"axis": 0}),
    "gather_elements": Sample([randn(3, 4), ints(3, 2, lo=-4, hi=4)], {"axis": 1}),
    "gather_nd": Sample([randn(3, 4, 2), ints(5, 2, lo=0, hi=3)], {"batch_dims": 0}),
    "index": Sample([randn(3, 6, 2), Const(torch.tensor([[5, -1], [0, 2]]))], {"axes": (1,)}),
    "index_select": Sample([randn(4, 5, 3), torch.tensor([4, 0, 0, 2])], {"axis": 1}),
    "embedding": Sample([Const(randn(11, 4)), torch.tensor([[0, 10, 3], [3, 3, 1]])],
                        {"padding_idx": -1}),
    # Run-time indices (the lookup step); constant ones decode at plan time.
    "codebook_decode": Sample([ints(4, 6, lo=0, hi=9, dtype=torch.uint8), randn(8, seed=1)]),
    "scatter_elements": Sample([randn(3, 4), ints(3, 2, lo=0, hi=4), randn(3, 2, seed=1)],
                               {"axis": 1, "reduction": "add"}),
    "scatter_nd": Sample([randn(4, 3), torch.tensor([[1], [3]]), randn(2, 3, seed=1)],
                         {"reduction": "none"}),
    # -------------------------------------------------------------------------- linear/conv
    "linear": Sample([randn(2, 3, 8), Const(randn(5, 8, seed=1)), Const(randn(5, seed=2))]),
    "fused_linear": Sample([randn(3, 8), Const(randn(5, 8, seed=1)), Const(randn(5, seed=2)),
                            randn(3, 5, seed=3)], _ACT),
    "matmul": Sample([randn(2, 3, 8), randn(8, 5, seed=1)]),
    "fused_matmul": Sample([randn(2, 3, 8), randn(2, 5, 8, seed=1), Const(randn(5, seed=2)),
                            randn(2, 3, 5, seed=3)],
                           {"trans_a": False, "trans_b": True, "alpha": 0.5, **_ACT}),
    "einsum": Sample([randn(2, 3, 4), randn(2, 4, 5, seed=1)], {"equation": "bij,bjk->bik"}),
    "conv": Sample([randn(2, 4, 7, 6), Const(randn(6, 2, 3, 3, seed=1)), Const(randn(6, seed=2))],
                   _CONV),
    "fused_conv": Sample([randn(2, 4, 7, 6), Const(randn(6, 2, 3, 3, seed=1)),
                          Const(randn(6, seed=2)), randn(2, 6, 4, 6, seed=3)], {**_CONV, **_ACT}),
    "conv_transpose": Sample([randn(2, 4, 5, 6), Const(randn(4, 3, 3, 2, seed=1)),
                              Const(randn(6, seed=2))],
                             {**_CONV, "output_padding": (1, 0)}),
    "linear_bf16": Sample([randn(3, 8), Bf16Const(randn(5, 8, seed=1)), Const(randn(5, seed=2)),
                           None], {"activation": "none", "activation_params": ()},
                          rtol=2e-2, atol=2e-2),
    "linear_weight_only": Sample(_weight_only(), {"bits": 4, "block_size": 32, "k": 40,
                                                  "activation": "none",
                                                  "activation_params": ()},
                                 rtol=1e-3, atol=1e-4),
    "det": Sample([randn(4, 3, 3)]),
    # ---------------------------------------------------------------------------- quantized
    "quantize_linear": Sample([randn(2, 3, 4) * 3, scalar(0.05), scalar(10, torch.uint8)],
                              {"axis": None, "dtype": "u8"}),
    "dequantize_linear": Sample([codes(2, 3, 4), Const(randn(3).abs() * 0.1 + 0.01),
                                 Const(codes(3, seed=1))], {"axis": 1}),
    "requantize_linear": Sample([codes(4, 9), scalar(0.05), scalar(7, torch.uint8), scalar(0.07),
                                 scalar(-3, torch.int8)], {"dtype": "i8"}),
    "dynamic_quantize_linear": Sample([randn(3, 7) * 4]),
    "qlinear": Sample(_qlinear_args(True), {"activation": "none", "activation_params": ()},
                      rtol=1e-5, atol=1e-5),
    "qlinear_dynamic": Sample(_qlinear_args(False), {"activation": "none",
                                                     "activation_params": (),
                                                     "per_token": False}),
    "qconv": Sample([codes(2, 4, 7, 6), scalar(0.03), scalar(120, torch.uint8),
                     Const(codes(6, 2, 3, 3, seed=4, dtype=torch.int8)),
                     Const(randn(6).abs() * 0.01 + 2e-3), Const(randn(6, seed=5)), None, None],
                    {**_CONV, **_ACT}, rtol=1e-5, atol=1e-5),
    "qconv_dynamic": Sample([randn(2, 4, 7, 6), Const(codes(6, 2, 3, 3, seed=4,
                                                             dtype=torch.int8)),
                             Const(randn(6).abs() * 1e-3), Const(randn(6, seed=2) * 0.1),
                             None], {**_CONV, **_ACT}),
    # -------------------------------------------------------------------------------- nn
    "attention": Sample([randn(2, 3, 5, 8), randn(2, 3, 6, 8, seed=1), randn(2, 3, 6, 8, seed=2),
                         bools(5, 6, seed=3) | torch.eye(5, 6, dtype=torch.bool)],
                        {"scale": None, "is_causal": False, "enable_gqa": False}),
    # Native runs attention_bf16 exactly as its reference on AMX tiles; without AMX it computes
    # in f32, as the op documents: then it differs by the reference's bf16 rounding (~2^-8).
    "attention_bf16": Sample([randn(2, 3, 5, 8), randn(2, 3, 6, 8, seed=1),
                              randn(2, 3, 6, 8, seed=2),
                              bools(5, 6, seed=3) | torch.eye(5, 6, dtype=torch.bool)],
                             {"scale": None, "is_causal": False, "enable_gqa": False},
                             **({} if _C.cpu_features()["use_amx"]
                                else {"rtol": 1e-2, "atol": 1e-2})),
    "batch_norm": Sample([randn(2, 3, 4, 5), Const(randn(3, seed=1)),
                          Const(randn(3, seed=2).abs() + 0.5), Const(randn(3, seed=3)),
                          Const(randn(3, seed=4))], {"eps": 1e-5}),
    "layer_norm": Sample([randn(2, 3, 8), Const(randn(8, seed=1)), Const(randn(8, seed=2))],
                         {"normalized_shape": (8,), "eps": 1e-5}),
    "group_norm": Sample([randn(2, 6, 4, 3), Const(randn(6, seed=1)), Const(randn(6, seed=2))],
                         {"groups": 3, "eps": 1e-5}),
    "rms_norm": Sample([randn(2, 3, 8), Const(randn(8, seed=1))], {"axis": -1, "eps": 1e-6}),
    "lrn": Sample([randn(2, 5, 3, 4)], {"size": 3, "alpha": 1e-2, "beta": 0.75, "bias": 1.5}),
    "max_pool": Sample([randn(2, 3, 7, 6)], {"kernel": (3, 2), "stride": (2, 2),
                                             "padding": (1, 0), "ceil_mode": True,
                                             "dilation": (1, 1)}),
    "avg_pool": Sample([randn(2, 3, 7, 6)], {"kernel": (3, 2), "stride": (2, 1),
                                             "padding": (1, 1), "ceil_mode": False,
                                             "count_include_pad": False,
                                             "divisor_override": None}),
    "adaptive_avg_pool": Sample([randn(2, 3, 7, 6)], {"output_size": (3, 2)}),
    "adaptive_max_pool": Sample([randn(2, 3, 7, 6)], {"output_size": (2, 4)}),
    "resize": Sample([randn(2, 3, 4, 5)], {"size": (7, 9), "mode": "bilinear",
                                           "align_corners": False, "scales": None}),
    "onnx_resize": Sample([randn(1, 2, 4, 5)], {"sizes": (1, 2, 7, 3), "scales": (1.0, 1.0, 1.75,
                                                                                  0.6),
                                                "mode": "linear"}),
    "grid_sample": Sample([randn(2, 3, 5, 6), torch.rand(2, 4, 3, 2) * 2.4 - 1.2],
                          {"mode": "bilinear", "padding_mode": "zeros", "align_corners": False}),
    "affine_grid": Sample([randn(2, 2, 3)], {"size": (2, 1, 4, 5), "align_corners": False}),
    "nll_loss": Sample([randn(4, 5), torch.tensor([0, 4, 2, 1]), Const(randn(5).abs())],
                       {"reduction": "mean", "ignore_index": None}),
    "onnx_rnn": Sample(_rnn(), {"cell": "LSTM", "hidden_size": 5, "direction": "forward",
                                "layout": 0}),
    "elu": Sample([randn(2, 3, 4)], {"alpha": 0.7, "scale": 1.1, "input_scale": 0.9}),
    "gelu": Sample([randn(2, 3, 4)], {"approximate": "tanh"}),
    "leaky_relu": Sample([randn(2, 3, 4)], {"negative_slope": 0.2}),
    "softplus": Sample([randn(2, 3, 4) * 10], {"beta": 2.0, "threshold": 5.0}),
    "shrink": Sample([randn(2, 3, 4)], {"bias": 0.25, "lambd": 0.5}),
    "thresholded_relu": Sample([randn(2, 3, 4)], {"alpha": 0.3}),
    "div": Sample([randn(2, 3, 4) * 5, randn(3, 1, seed=1).abs() + 0.5],
                  {"rounding_mode": "floor"}),
}


def sample_of(op: OpDef) -> Sample | None:
    return SAMPLES.get(op.name) or derived(op)
