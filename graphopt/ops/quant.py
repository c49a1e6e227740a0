"""Quantization ops, with ONNX semantics and torch reference implementations.

Affine quantization maps a real tensor to integers: ``q = saturate(round(x / scale) + zp)``
(round half to even, like ONNX) and back: ``x ~= (q - zp) * scale``. ``axis`` selects
per-channel ``scale``/``zero_point`` (1-D along that axis); None means per-tensor.

* ``quantize_linear(x, scale, zp){axis, dtype}``  -> ONNX QuantizeLinear
* ``dequantize_linear(q, scale, zp){axis}``       -> ONNX DequantizeLinear
* ``dynamic_quantize_linear(x)`` -> (q u8, scale, zp u8), ONNX DynamicQuantizeLinear: the range
  is ``[min(0, x.min()), max(0, x.max())]`` of this very tensor, so zero is exact.
* ``qlinear_dynamic(x, w_q, w_scale, bias?, residual?){activation}``: the int8 linear that
  ``quantize-dynamic`` produces. ``w_q`` is int8 ``[out, in]`` (per-channel symmetric,
  ``w ~= w_q * w_scale[:, None]``); ``x`` is quantized per tensor to u8 at run time as by
  ``dynamic_quantize_linear``; the integer product is exact (int32 in ORT, float64 here)::

      (xq, xs, xzp) = dynamic_quantize_linear(x)
      y = ((xq - xzp) @ w_q.T) * (xs * w_scale) + bias + residual, then the activation

  The reference computes exactly this, so it agrees with the onnxruntime lowering
  (``com.microsoft.DynamicQuantizeMatMul``) up to float rounding of the final scale.
  ``per_token=True`` applies the same rule to every row of ``x`` (each token gets its own
  ``xs`` / ``xzp``, shapes ``[..., 1]``): one outlier token no longer coarsens the grid of all
  the others, at the price of a longer onnxruntime lowering (no contrib op takes row scales).
"""

from __future__ import annotations

import torch

from graphopt.errors import TypeInferenceError
from graphopt.ir.dtypes import DType
from graphopt.ir.types import TensorType
from graphopt.ops.fused import EPILOGUE_ATTRS, _check_epilogue, _epilogue
from graphopt.ops.registry import (
    EPILOGUE,
    OUT_BLOCKS,
    OUT_IN,
    PURE,
    QDQ_TRANSPARENT,
    AttrSpec,
    WeightSpec,
    ops_with,
    register_op,
)

_RANGES = {DType.uint8: (0, 255), DType.int8: (-128, 127)}


def __getattr__(name: str):
    """``QDQ_TRANSPARENT_OPS``: the names of the ops with the QDQ_TRANSPARENT trait (for rule
    tables built per op, passes/fold_qdq.py). Computed on first use: the registry is complete
    only once every op module has been imported."""
    if name == "QDQ_TRANSPARENT_OPS":
        return ops_with(QDQ_TRANSPARENT)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _pad(types, n: int) -> list:
    """Operand types with absent trailing optionals as None."""
    return list(types) + [None] * (n - len(types))


def _per_axis(t: torch.Tensor, axis: int | None, rank: int) -> torch.Tensor:
    """Reshape a per-channel 1-D ``t`` to broadcast along ``axis`` of a rank-``rank`` tensor."""
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * rank
    shape[axis % rank] = -1
    return t.reshape(shape)


def quantize_tensor(x, scale, zero_point, lo: int, hi: int, axis: int | None = None):
    """``clamp(round_half_even(x / scale) + zp, lo, hi)`` as float (exact small integers)."""
    s = _per_axis(scale.to(torch.float32), axis, x.dim())
    z = _per_axis(zero_point.to(torch.float32), axis, x.dim())
    return torch.clamp(torch.round(x.to(torch.float32) / s) + z, lo, hi)


# ---------------------------------------------------------------------------- quantize_linear
def _quantize_infer(types, attrs):
    x, scale, zp = _pad(types, 3)
    dtype = DType.parse(attrs["dtype"])
    if dtype not in _RANGES:
        raise TypeInferenceError(f"quantize_linear dtype must be u8 or i8, got {dtype}")
    if zp is not None and zp.dtype != dtype:
        raise TypeInferenceError(f"quantize_linear zero_point {zp} must be {dtype}")
    return TensorType(x.shape, dtype)


@register_op(
    "quantize_linear",
    inputs=("x", "scale", "zero_point?"),
    attrs={"axis": AttrSpec((int, type(None)), None), "dtype": AttrSpec(str, "u8")},
    traits=frozenset({PURE}),
    infer=_quantize_infer,
)
def quantize_linear(x, scale, zero_point=None, axis=None, dtype="u8"):
    """saturate(round(x / scale) + zero_point) to u8 / i8 (ONNX QuantizeLinear)."""
    dt = DType.parse(dtype)
    zp = zero_point if zero_point is not None else torch.zeros((), dtype=torch.int32)
    return quantize_tensor(x, scale, zp, *_RANGES[dt], axis).to(dt.torch)


# -------------------------------------------------------------------------- dequantize_linear
def _dequantize_infer(types, attrs):
    q, scale, zp = _pad(types, 3)
    if q.dtype not in (DType.uint8, DType.int8, DType.int32):
        raise TypeInferenceError(f"dequantize_linear input must be u8 / i8 / i32, got {q}")
    return TensorType(q.shape, scale.dtype)


@register_op(
    "dequantize_linear",
    inputs=("q", "scale", "zero_point?"),
    attrs={"axis": AttrSpec((int, type(None)), None)},
    traits=frozenset({PURE}),
    infer=_dequantize_infer,
)
def dequantize_linear(q, scale, zero_point=None, axis=None):
    """(q - zero_point) * scale (ONNX DequantizeLinear)."""
    z = 0.0 if zero_point is None else _per_axis(zero_point.to(torch.float32), axis, q.dim())
    return (q.to(torch.float32) - z) * _per_axis(scale, axis, q.dim())


# -------------------------------------------------------------------- dynamic_quantize_linear
def dynamic_qparams(x: torch.Tensor, per_token: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX DynamicQuantizeLinear's (scale f32, zero_point as float) for tensor ``x``; with
    ``per_token`` the same rule for every row of the last axis (shapes ``[..., 1]``)."""
    x = x.to(torch.float32)
    if per_token:
        lo = torch.clamp(x.amin(-1, keepdim=True), max=0.0)
        hi = torch.clamp(x.amax(-1, keepdim=True), min=0.0)
    else:
        lo = torch.clamp(x.min(), max=0.0)
        hi = torch.clamp(x.max(), min=0.0)
    scale = (hi - lo) / 255.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = torch.clamp(torch.round(-lo / safe), 0, 255)
    return scale, zp


def _dyn_infer(types, attrs):
    (x,) = types
    if not x.dtype.is_floating:
        raise TypeInferenceError(f"dynamic_quantize_linear needs a float input, got {x}")
    return [TensorType(x.shape, DType.uint8), TensorType((), DType.float32),
            TensorType((), DType.uint8)]


@register_op(
    "dynamic_quantize_linear",
    inputs=("x",),
    traits=frozenset({PURE}),
    infer=_dyn_infer,
)
def dynamic_quantize_linear(x):
    """(q u8, scale, zero_point u8) of ``x`` over its own range (ONNX DynamicQuantizeLinear)."""
    scale, zp = dynamic_qparams(x)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = quantize_tensor(x, safe, zp, 0, 255)
    return q.to(torch.uint8), scale, zp.to(torch.uint8)


# ---------------------------------------------------------------------------- qlinear_dynamic
def _qlinear_infer(types, attrs):
    x, w, scale, bias, residual = _pad(types, 5)
    if w.dtype is not DType.int8 or w.rank != 2:
        raise TypeInferenceError(f"qlinear_dynamic weight must be i8 [out, in], got {w}")
    if scale.rank != 1 or scale.shape[0] != w.shape[0]:
        raise TypeInferenceError(f"qlinear_dynamic w_scale must be f32 [{w.shape[0]}], got {scale}")
    if x.dtype is not DType.float32 or x.shape[-1] != w.shape[1]:
        raise TypeInferenceError(f"qlinear_dynamic input {x} must be f32 [..., {w.shape[1]}]")
    if bias is not None and (bias.rank != 1 or bias.shape[0] != w.shape[0]):
        raise TypeInferenceError(f"qlinear_dynamic bias must be [{w.shape[0]}], got {bias}")
    out = x.with_shape(x.shape[:-1] + (w.shape[0],))
    return _check_epilogue(out, residual, attrs)


@register_op(
    "qlinear_dynamic",
    inputs=("x", "w_q", "w_scale", "bias?", "residual?"),
    attrs={**EPILOGUE_ATTRS,
           "per_token": AttrSpec(bool, False, "u8 scale / zero point per row of x, not per tensor")},
    traits=frozenset({PURE, EPILOGUE}),
    weights=WeightSpec(slot=1, layout=OUT_IN, bias=3, residual=4),
    infer=_qlinear_infer,
)
def qlinear_dynamic(x, w_q, w_scale, bias=None, residual=None, activation="none",
                    activation_params=(), per_token=False):
    """int8 linear: u8 dynamic activations (per tensor, or per token) x i8 per-channel weights
    (see module)."""
    scale, zp = dynamic_qparams(x, per_token)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    xq = quantize_tensor(x, safe, zp, 0, 255) - zp  # exact integers in [-255, 255]
    acc = torch.matmul(xq.to(torch.float64), w_q.to(torch.float64).T)  # exact, as int32
    y = acc.to(torch.float32) * (scale * w_scale.to(torch.float32))
    if bias is not None:
        y = y + bias
    return _epilogue(y, residual, activation, activation_params)


# ------------------------------------------------------------------------ linear_weight_only
def unpack_blocks(w_packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """``[N, n_blocks, blob]`` u8 -> ``[N, k]`` unsigned integer codes (as float32).
    4-bit codes are two per byte, the low nibble first (MatMulNBits layout)."""
    n = w_packed.shape[0]
    b = w_packed.to(torch.int32)
    if bits == 4:
        b = torch.stack((b & 0xF, b >> 4), dim=-1)
    return b.reshape(n, -1)[:, :k].to(torch.float32)


def _wo_infer(types, attrs):
    x, w, scales, bias, residual = _pad(types, 5)
    if attrs["bits"] not in (4, 8) or w.dtype is not DType.uint8 or w.rank != 3:
        raise TypeInferenceError(f"linear_weight_only needs bits 4/8 and u8 [N, blocks, blob]: {w}")
    if x.dtype is not DType.float32 or x.shape[-1] != attrs["k"]:
        raise TypeInferenceError(f"linear_weight_only input {x} must be f32 [..., {attrs['k']}]")
    if attrs.get("act_bits", 0) not in (0, 8):
        raise TypeInferenceError(f"linear_weight_only act_bits must be 0 (float activations) "
                                 f"or 8 (int8 per block), got {attrs['act_bits']}")
    out = x.with_shape(x.shape[:-1] + (w.shape[0],))
    return _check_epilogue(out, residual, attrs)


@register_op(
    "linear_weight_only",
    inputs=("x", "w_q", "scales", "bias?", "residual?"),
    attrs={"bits": 4, "block_size": 32, "k": AttrSpec(int), "act_bits": 0, **EPILOGUE_ATTRS},
    traits=frozenset({PURE, EPILOGUE}),
    weights=WeightSpec(slot=1, layout=OUT_BLOCKS, bias=3, residual=4),
    infer=_wo_infer,
)
def linear_weight_only(x, w_q, scales, bias=None, residual=None, bits=4, block_size=32, k=0,
                       act_bits=0, activation="none", activation_params=()):
    """Weight-only quantized linear: ``w[n, j] = (code - 2**(bits-1)) * scales[n, j // block]``
    (block-wise symmetric, implicit zero point), then a float linear + epilogue. ``w_q`` holds
    the codes packed as onnxruntime's MatMulNBits wants them.

    ``act_bits=8`` (onnxruntime's accuracy_level 4): x is quantized per weight block too
    (symmetric int8, scale = amax / 127, round half to even), each block's dot product is exact
    in integers, and ``y = sum_blocks dot * x_scale * w_scale``: faster on int8 dot-product
    hardware, slightly less accurate."""
    codes = unpack_blocks(w_q, bits, k) - 2 ** (bits - 1)
    if act_bits == 8:
        y = _int8_activation_linear(x, codes, scales, block_size, k)
        y = y + bias if bias is not None else y
    else:
        w = codes * scales.repeat_interleave(block_size, dim=1)[:, :k]
        y = torch.nn.functional.linear(x, w, bias)
    return _epilogue(y, residual, activation, activation_params)


def _int8_activation_linear(x, codes, scales, block_size: int, k: int):
    """The act_bits=8 product of ``linear_weight_only`` (see its doc), without bias/epilogue."""
    n, blocks = scales.shape
    pad = blocks * block_size - k
    xb = torch.nn.functional.pad(x, (0, pad)).reshape(*x.shape[:-1], blocks, block_size)
    x_scale = xb.abs().amax(dim=-1) / 127
    safe = torch.where(x_scale > 0, x_scale, torch.ones_like(x_scale)).unsqueeze(-1)
    xq = torch.where(x_scale.unsqueeze(-1) > 0, torch.round(xb / safe).clamp(-127, 127), 0.0)
    wb = torch.nn.functional.pad(codes, (0, pad)).reshape(n, blocks, block_size)
    # float64 products and sums of integers below 2**53: the integer dot products, exactly
    dots = torch.einsum("...bk,nbk->...nb", xq.to(torch.float64), wb.to(torch.float64))
    return (dots.to(torch.float32) * (x_scale.unsqueeze(-2) * scales)).sum(dim=-1)


# ----------------------------------------------------------------------------- linear_bf16
def _bf16_infer(types, attrs):
    x, w, bias, residual = _pad(types, 4)
    if w.dtype is not DType.bfloat16 or w.rank != 2:
        raise TypeInferenceError(f"linear_bf16 weight must be bf16 [out, in], got {w}")
    if x.dtype is not DType.float32 or x.shape[-1] != w.shape[1]:
        raise TypeInferenceError(f"linear_bf16 input {x} must be f32 [..., {w.shape[1]}]")
    if bias is not None and (bias.dtype is not DType.float32 or bias.rank != 1
                             or bias.shape[0] != w.shape[0]):
        raise TypeInferenceError(f"linear_bf16 bias must be f32 [{w.shape[0]}], got {bias}")
    out = x.with_shape(x.shape[:-1] + (w.shape[0],))
    return _check_epilogue(out, residual, attrs)


@register_op(
    "linear_bf16",
    inputs=("x", "weight", "bias?", "residual?"),
    attrs=EPILOGUE_ATTRS,
    traits=frozenset({PURE, EPILOGUE}),
    weights=WeightSpec(slot=1, layout=OUT_IN, bias=2, residual=3),
    infer=_bf16_infer,
)
def linear_bf16(x, weight, bias=None, residual=None, activation="none", activation_params=()):
    """bf16 compute linear (``graphopt.quantize(graph, "bf16-compute")``): x rounded to bf16
    (nearest even), times the bf16 weight ``[out, in]``, products summed in f32; bias, residual
    and activation in f32 as ``fused_linear``. bf16 x bf16 products are exact in f32, so this
    is what AMX's TDPBF16PS computes up to the order of the f32 additions."""
    x16 = x.to(torch.bfloat16).to(torch.float32)
    y = torch.nn.functional.linear(x16, weight.to(torch.float32), bias)
    return _epilogue(y, residual, activation, activation_params)
