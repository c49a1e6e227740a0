"""Integer conv / linear ops of static (and dynamic-conv) quantization, and requantization.

``fold-qdq`` (passes/fold_qdq.py) turns ``DQ -> conv/linear(+activation) -> Q`` into these ops;
the native backend implements kernels for exactly these semantics::

    qlinear(x_q u8 [..., K], x_scale f32[], x_zp u8[], w_q i8 [N, K], w_scale f32 [N],
            bias f32 [N]?, y_scale f32[]?, y_zp u8[]?){activation, activation_params}
    qconv(x_q u8 [B, C, H, W], x_scale, x_zp, w_q i8 [M, C/groups, kh, kw], w_scale f32 [M],
          bias f32 [M]?, y_scale?, y_zp?){stride, padding, dilation, groups, activation, ...}

      acc[n] = sum_k (x_q[k] - x_zp) * w_q[n, k]              exact (int32 in a kernel)
      y_f[n] = activation(float(acc[n]) * (x_scale * w_scale[n]) + bias[n])       (f32)
      y      = saturate_u8(round_half_even(y_f / y_scale) + y_zp)   with y_scale, else y_f

``qconv`` pads with ``x_zp`` (that is, with real zero), like the float conv pads with 0.
``x_scale * w_scale[n]`` is one f32 product, computed before it scales ``acc``.

* ``requantize_linear(q, in_scale, in_zp, out_scale, out_zp){dtype}``: per-tensor
  ``quantize_linear(dequantize_linear(q, in_scale, in_zp), out_scale, out_zp)`` in one op.
* ``qconv_dynamic(x f32, w_q, w_scale, bias?, residual?){conv attrs, activation}``: the conv
  counterpart of ``qlinear_dynamic`` (graphopt/ops/quant.py): ``x`` is quantized per tensor to
  u8 at run time (``DynamicQuantizeLinear`` semantics), then the exact integer conv, scale,
  bias, residual, activation.

The references compute the integer products exactly (float64 GEMM over ``unfold``), so they
equal an int32 kernel bit for bit up to the final f32 scaling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from graphopt.errors import TypeInferenceError
from graphopt.ir.dtypes import DType
from graphopt.ir.types import TensorType
from graphopt.ops.fused import EPILOGUE_ATTRS, _check_epilogue, _epilogue, apply_activation
from graphopt.ops.nn import CONV_ATTRS, _conv_infer, _spatial
from graphopt.ops.quant import _RANGES, _pad, dynamic_qparams, quantize_tensor
from graphopt.ops.registry import (
    EPILOGUE,
    LAYOUT_SENSITIVE,
    OUT_IN,
    OUT_IN_SPATIAL,
    PURE,
    AttrSpec,
    WeightSpec,
    register_op,
)

_TRAITS = frozenset({PURE})


def _is_scalar(t: TensorType | None, dtype: DType) -> bool:
    return t is not None and t.dtype is dtype and t.rank == 0


def _check_common(op: str, x, xs, xz, w, ws, bias, ys, yz) -> None:
    if x.dtype is not DType.uint8:
        raise TypeInferenceError(f"{op} input x_q must be u8, got {x}")
    if not _is_scalar(xs, DType.float32) or not _is_scalar(xz, DType.uint8):
        raise TypeInferenceError(f"{op} x_scale / x_zp must be f32[] / u8[], got {xs}, {xz}")
    if w.dtype is not DType.int8:
        raise TypeInferenceError(f"{op} weight w_q must be i8, got {w}")
    n = w.shape[0]
    if ws.dtype is not DType.float32 or ws.rank != 1 or ws.shape[0] != n:
        raise TypeInferenceError(f"{op} w_scale must be f32[{n}] (per output channel), got {ws}")
    if bias is not None and (bias.dtype is not DType.float32 or bias.rank != 1
                             or bias.shape[0] != n):
        raise TypeInferenceError(f"{op} bias must be f32[{n}], got {bias}")
    if ys is None and yz is not None:
        raise TypeInferenceError(f"{op} has y_zp but no y_scale")
    if ys is not None and not _is_scalar(ys, DType.float32):
        raise TypeInferenceError(f"{op} y_scale must be f32[], got {ys}")
    if yz is not None and not _is_scalar(yz, DType.uint8):
        raise TypeInferenceError(f"{op} y_zp must be u8[], got {yz}")


def _result(out: TensorType, ys, attrs) -> TensorType:
    """f32 result (epilogue checked on it), u8 when the op requantizes its output."""
    _check_epilogue(out.with_dtype(DType.float32), None, attrs)
    return out.with_dtype(DType.uint8 if ys is not None else DType.float32)


def _requantize_output(y_f, y_scale, y_zp):
    if y_scale is None:
        return y_f
    zp = y_zp if y_zp is not None else torch.zeros((), dtype=torch.uint8)
    return quantize_tensor(y_f, y_scale, zp, 0, 255).to(torch.uint8)


def _scale_bias(acc: torch.Tensor, x_scale, w_scale, bias, channel_axis: int) -> torch.Tensor:
    """``float(acc) * (x_scale * w_scale) + bias`` with per-channel terms on ``channel_axis``."""
    shape = [1] * acc.dim()
    shape[channel_axis] = -1
    combined = (x_scale.to(torch.float32) * w_scale.to(torch.float32)).reshape(shape)
    y = acc.to(torch.float32) * combined
    if bias is not None:
        y = y + bias.to(torch.float32).reshape(shape)
    return y


# --------------------------------------------------------------------------- exact integer math
def int_linear(x_int: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """``x_int @ w_q.T`` exactly (float64; |x_int| <= 255, so exact for any realistic K)."""
    return torch.matmul(x_int.to(torch.float64), w_q.to(torch.float64).T)


def int_conv2d(x_int: torch.Tensor, w_q: torch.Tensor, stride, padding, dilation,
               groups: int) -> torch.Tensor:
    """Exact 2-D cross-correlation of integer tensors (zero padding), as float64.

    ``unfold`` only moves the (small integer) values, and the float64 GEMM is exact, unlike a
    float conv kernel that may use Winograd or FFT transforms.
    """
    b, c, h, w = x_int.shape
    m, cg, kh, kw = w_q.shape
    out_h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    cols = F.unfold(x_int.to(torch.float32), (kh, kw), dilation=dilation, padding=padding,
                    stride=stride).to(torch.float64)  # [B, C*kh*kw, L]
    cols = cols.reshape(b, groups, cg * kh * kw, out_h * out_w)
    weight = w_q.to(torch.float64).reshape(groups, m // groups, cg * kh * kw)
    acc = torch.matmul(weight.unsqueeze(0), cols)  # [B, groups, M/groups, L]
    return acc.reshape(b, m, out_h, out_w)


def _conv_params(attrs_like: dict) -> tuple:
    return tuple(tuple(_spatial(attrs_like[k], 2)) for k in ("stride", "padding", "dilation"))


# -------------------------------------------------------------------------------------- qlinear
def _qlinear_infer(types, attrs):
    x, xs, xz, w, ws, bias, ys, yz = _pad(types, 8)
    if w.rank != 2:
        raise TypeInferenceError(f"qlinear weight must be i8 [N, K], got {w}")
    _check_common("qlinear", x, xs, xz, w, ws, bias, ys, yz)
    if x.rank < 1 or x.shape[-1] != w.shape[1]:
        raise TypeInferenceError(f"qlinear input {x} must be u8 [..., {w.shape[1]}]")
    return _result(x.with_shape(x.shape[:-1] + (w.shape[0],)), ys, attrs)


@register_op(
    "qlinear",
    inputs=("x_q", "x_scale", "x_zp", "w_q", "w_scale", "bias?", "y_scale?", "y_zp?"),
    attrs=EPILOGUE_ATTRS,
    traits=_TRAITS | {EPILOGUE},
    weights=WeightSpec(slot=3, layout=OUT_IN, bias=5),
    infer=_qlinear_infer,
)
def qlinear(x_q, x_scale, x_zp, w_q, w_scale, bias=None, y_scale=None, y_zp=None,
            activation="none", activation_params=()):
    """u8 x i8 linear with exact accumulation, f32 scale + bias + activation, optional u8
    requantization of the result (see the module docstring)."""
    acc = int_linear(x_q.to(torch.float64) - x_zp.to(torch.float64), w_q)
    y = apply_activation(_scale_bias(acc, x_scale, w_scale, bias, -1), activation,
                         activation_params)
    return _requantize_output(y, y_scale, y_zp)


# ---------------------------------------------------------------------------------------- qconv
QCONV_ATTRS = {**CONV_ATTRS, **EPILOGUE_ATTRS}


def _qconv_infer(types, attrs):
    x, xs, xz, w, ws, bias, ys, yz = _pad(types, 8)
    if x.rank != 4 or w.rank != 4:
        raise TypeInferenceError(f"qconv is 2-D (NCHW): input {x}, weight {w}")
    _check_common("qconv", x, xs, xz, w, ws, bias, ys, yz)
    out = _conv_infer([x, w, None], attrs)
    return _result(out, ys, attrs)


@register_op(
    "qconv",
    inputs=("x_q", "x_scale", "x_zp", "w_q", "w_scale", "bias?", "y_scale?", "y_zp?"),
    attrs=QCONV_ATTRS,
    traits=_TRAITS | {EPILOGUE, LAYOUT_SENSITIVE},
    weights=WeightSpec(slot=3, layout=OUT_IN_SPATIAL, bias=5),
    infer=_qconv_infer,
)
def qconv(x_q, x_scale, x_zp, w_q, w_scale, bias=None, y_scale=None, y_zp=None, stride=(1,),
          padding=(0,), dilation=(1,), groups=1, activation="none", activation_params=()):
    """u8 x i8 NCHW conv2d (padding value x_zp), exact accumulation, f32 scale + bias +
    activation, optional u8 requantization (see the module docstring)."""
    stride, padding, dilation = _conv_params(
        {"stride": stride, "padding": padding, "dilation": dilation})
    x_int = x_q.to(torch.float32) - x_zp.to(torch.float32)  # zero padding == x_zp padding
    acc = int_conv2d(x_int, w_q, stride, padding, dilation, groups)
    y = apply_activation(_scale_bias(acc, x_scale, w_scale, bias, 1), activation,
                         activation_params)
    return _requantize_output(y, y_scale, y_zp)


# ---------------------------------------------------------------------------- qconv_dynamic
def _qconv_dynamic_infer(types, attrs):
    x, w, ws, bias, residual = _pad(types, 5)
    if x.dtype is not DType.float32 or x.rank != 4 or w.dtype is not DType.int8 or w.rank != 4:
        raise TypeInferenceError(f"qconv_dynamic needs f32 NCHW input and i8 weight: {x}, {w}")
    if ws.dtype is not DType.float32 or ws.rank != 1 or ws.shape[0] != w.shape[0]:
        raise TypeInferenceError(f"qconv_dynamic w_scale must be f32[{w.shape[0]}], got {ws}")
    if bias is not None and (bias.rank != 1 or bias.shape[0] != w.shape[0]):
        raise TypeInferenceError(f"qconv_dynamic bias must be [{w.shape[0]}], got {bias}")
    out = _conv_infer([x, w, None], attrs)
    return _check_epilogue(out, residual, attrs)


@register_op(
    "qconv_dynamic",
    inputs=("x", "w_q", "w_scale", "bias?", "residual?"),
    attrs=QCONV_ATTRS,
    traits=_TRAITS | {EPILOGUE, LAYOUT_SENSITIVE},
    weights=WeightSpec(slot=1, layout=OUT_IN_SPATIAL, bias=3, residual=4),
    infer=_qconv_dynamic_infer,
)
def qconv_dynamic(x, w_q, w_scale, bias=None, residual=None, stride=(1,), padding=(0,),
                  dilation=(1,), groups=1, activation="none", activation_params=()):
    """int8 conv2d: u8 per-tensor activations quantized at run time (DynamicQuantizeLinear
    semantics) x i8 per-channel weights, exact accumulation, then scale, bias, residual and
    activation."""
    stride, padding, dilation = _conv_params(
        {"stride": stride, "padding": padding, "dilation": dilation})
    scale, zp = dynamic_qparams(x)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    x_int = quantize_tensor(x, safe, zp, 0, 255) - zp
    acc = int_conv2d(x_int, w_q, stride, padding, dilation, groups)
    y = _scale_bias(acc, scale, w_scale, bias, 1)
    return _epilogue(y, residual, activation, activation_params)


# ------------------------------------------------------------------------ requantize_linear
def _requantize_infer(types, attrs):
    q, s_in, z_in, s_out, z_out = _pad(types, 5)
    dtype = DType.parse(attrs["dtype"])
    if q.dtype not in _RANGES or dtype not in _RANGES:
        raise TypeInferenceError(f"requantize_linear maps u8/i8 to u8/i8, got {q} -> {dtype}")
    for t in (s_in, s_out):
        if t.dtype is not DType.float32 or t.rank != 0:
            raise TypeInferenceError(f"requantize_linear scales must be f32[], got {t}")
    if z_in is not None and z_in.dtype != q.dtype:
        raise TypeInferenceError(f"requantize_linear in_zp {z_in} must be {q.dtype}")
    if z_out is not None and z_out.dtype != dtype:
        raise TypeInferenceError(f"requantize_linear out_zp {z_out} must be {dtype}")
    return TensorType(q.shape, dtype)


@register_op(
    "requantize_linear",
    inputs=("q", "in_scale", "in_zp?", "out_scale", "out_zp?"),
    attrs={"dtype": AttrSpec(str, "u8")},
    traits=_TRAITS,
    infer=_requantize_infer,
)
def requantize_linear(q, in_scale, in_zp, out_scale, out_zp=None, dtype="u8"):
    """quantize_linear(dequantize_linear(q, in_scale, in_zp), out_scale, out_zp), per tensor."""
    z_in = 0.0 if in_zp is None else in_zp.to(torch.float32)
    real = (q.to(torch.float32) - z_in) * in_scale
    dt = DType.parse(dtype)
    z_out = out_zp if out_zp is not None else torch.zeros((), dtype=torch.int32)
    return quantize_tensor(real, out_scale, z_out, *_RANGES[dt]).to(dt.torch)
