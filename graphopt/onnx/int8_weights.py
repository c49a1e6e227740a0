"""How the ONNX lowering stores int8 weights: ``to_onnx(..., int8_weights="s8" | "u8")``.

graphopt's integer ops keep weights as signed int8 codes with zero point 0. onnxruntime picks its
integer kernel by the operand types: u8 activations x s8 weights run the U8S8 kernels, which on
x86 CPUs without VNNI add *pairs* of u8 x s8 products in int16 with saturation (``vpmaddubsw``):
a pair above 32767 is clipped, so the result is not the quantized model's
(``graphopt.backends.onnxruntime_backend.int8_saturates``). u8 x u8 operands run the U8U8
kernels, which widen both sides to int16 before multiplying (``vpmaddwd``): exact on every CPU,
at about half U8S8's VNNI throughput.

``"u8"`` therefore stores each int8 weight ``w`` as the u8 code ``w + 128`` with zero point 128:
``(w + 128) - 128 == w`` for every int8 ``w``, so each lowered op computes exactly what it did
with s8 weights. ``"s8"`` (the default of ``to_onnx``) keeps the fast U8S8 form; the onnxruntime
backend picks ``"u8"`` on CPUs where U8S8 saturates. Weights that are dequantized to float
before a float Conv (``qconv`` with a float result, ``qconv_dynamic``) are exact either way and
stay s8.
"""

from __future__ import annotations

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.dtypes import DType

INT8_WEIGHT_ENCODINGS = ("s8", "u8")
_U8_OFFSET = 128


def check_encoding(encoding: str) -> str:
    """``encoding`` if it is one of ``INT8_WEIGHT_ENCODINGS``, else a GraphoptError."""
    if encoding not in INT8_WEIGHT_ENCODINGS:
        raise GraphoptError(f"int8_weights={encoding!r}: give one of {INT8_WEIGHT_ENCODINGS} "
                            "('u8' is exact in onnxruntime on CPUs without VNNI, 's8' faster "
                            "with VNNI)")
    return encoding


def weight(ctx, codes: np.ndarray, hint: str) -> str:
    """The initializer holding int8 weight ``codes`` in the lowering's encoding."""
    codes = np.asarray(codes)
    if codes.dtype != np.int8:
        raise ctx.fail(f"weight {hint} is {codes.dtype}, an int8 weight was expected")
    if ctx.int8_weights == "u8":
        shifted = (codes.astype(np.int16) + _U8_OFFSET).astype(np.uint8)
        return ctx.const(shifted, DType.uint8, f"{hint}_u8")
    return ctx.const(codes, DType.int8, hint)


def weight_operand(ctx, node, i: int, channels: int) -> tuple[str, str]:
    """Operand ``i`` of ``node`` (int8 weight codes, ``channels`` output channels first) and
    its per-channel zero point, in the lowering's encoding. A weight that is not a constant
    cannot be re-encoded and stays s8 (zero point 0)."""
    value = node.inputs[i]
    if ctx.int8_weights == "u8" and value.kind == "const":
        return weight(ctx, value.data, value.name), zero_point(ctx, (channels,))
    return ctx.input(node, i), zero_point(ctx, (channels,), encoding="s8")


def zero_point(ctx, shape: tuple[int, ...], hint: str = "w_zp",
               encoding: str | None = None) -> str:
    """The weight zero point of ``encoding`` (default: the lowering's): 0 as int8 for "s8",
    128 as u8 for "u8"; of ``shape``."""
    if (encoding or ctx.int8_weights) == "u8":
        return ctx.const(np.full(shape, _U8_OFFSET, np.uint8), DType.uint8, f"{hint}_u8")
    return ctx.const(np.zeros(shape, np.int8), DType.int8, hint)


def shifted_zero_point(ctx, zp: np.ndarray | None, shape: tuple[int, ...], hint: str) -> str:
    """A u8 zero point ``zp + 128`` for an int8 tensor re-encoded as u8 (``zp`` None: 0)."""
    base = np.zeros(shape, np.int16)
    if zp is not None:
        base = base + np.broadcast_to(np.asarray(zp).astype(np.int16), shape)
    return ctx.const((base + _U8_OFFSET).astype(np.uint8), DType.uint8, f"{hint}_u8")


def matmul_integer(ctx, a: str, a_zp: str, w_t: str, n_out: int) -> str:
    """``MatMulInteger(a, w_t)`` (``w_t``: [K, N] from :func:`weight`) with the weight zero
    point of the lowering's encoding (omitted for s8, whose zero point is 0)."""
    if ctx.int8_weights == "s8":
        return ctx.op("MatMulInteger", [a, w_t] + ([a_zp] if a_zp else []))
    return ctx.op("MatMulInteger", [a, w_t, a_zp, zero_point(ctx, (n_out,))])
