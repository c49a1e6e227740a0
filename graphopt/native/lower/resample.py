"""ONNX Resize (``onnx_resize``) -> one "resample_axis" step per resized axis
(csrc/rt_resample.cpp), then the extrapolation mask ("where") and, for integer tensors, rounding.
torch's bicubic ``resize`` uses the same steps (``bicubic_taps``, called from pool.py).

Resizing is separable: the reference (graphopt/ops/onnx_resize.py) builds one [out, in]
interpolation matrix per axis from the ONNX formulas; the plan reuses that very function and
keeps each row's non-zero taps (index, weight), so every mode, coordinate transformation,
cubic coefficient, exclude_outside and antialias setting means the same thing natively.
Floating tensors resample in their own dtype (taps accumulate in double), others in float64.
"""

from __future__ import annotations

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.native import refs as R
from graphopt.native.codes import DTYPE_CODES, UNARY_CODES
from graphopt.native.lower._common import dtype_code
from graphopt.native.refs import numel
from graphopt.ops.onnx_resize import resize_matrix
from graphopt.ops.registry import register_lowering

_MATRIX_ATTRS = ("mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
                 "exclude_outside", "antialias")


def _taps(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dense [out, in] matrix as (index, weight) [out, taps] tables of its non-zeros."""
    nonzero = weights != 0.0
    taps = max(1, int(nonzero.sum(axis=1).max(initial=0)))
    index = np.zeros((weights.shape[0], taps), dtype=np.int64)
    table = np.zeros((weights.shape[0], taps), dtype=np.float64)
    for row in range(weights.shape[0]):
        cols = np.flatnonzero(nonzero[row])
        index[row, : len(cols)] = cols
        table[row, : len(cols)] = weights[row, cols]
    return index, table


def _stages(ctx, shape, sizes, scales):
    """(axis, index, weight) tap tables of the resized axes, and the mask of outputs inside
    the tf_crop_and_resize box (None when every output is)."""
    a = ctx.attrs
    rank, ctm = len(shape), a["coordinate_transformation_mode"]
    matrix_attrs = {k: a[k] for k in _MATRIX_ATTRS}
    stages, keep = [], None
    for axis in range(rank):
        in_len, out_len = shape[axis], sizes[axis]
        if in_len == out_len and scales[axis] == 1.0 and ctm != "tf_crop_and_resize":
            continue
        if in_len == 0:
            ctx.unsupported("onnx_resize of an empty axis")
        roi = None if a["roi"] is None else (a["roi"][axis], a["roi"][rank + axis])
        try:
            weights, outside = resize_matrix(in_len, out_len, scales[axis], matrix_attrs, roi)
        except ValueError as exc:
            ctx.invalid(str(exc))
        stages.append((axis, *_taps(weights)))
        if outside.any():
            inside = (~outside).reshape([out_len if d == axis else 1 for d in range(rank)])
            keep = inside if keep is None else keep & inside
    return stages, keep


def resample_axes(ctx, cur, out, shape: list, sizes, stages, compute: DType):
    """One "resample_axis" step per (axis, index, weight) stage; ``shape`` is updated to the
    resized shape. The last stage writes ``out`` when given (else a temporary)."""
    for k, (axis, index, table) in enumerate(stages):
        in_len = shape[axis]
        shape[axis] = sizes[axis]
        last = k == len(stages) - 1
        nxt = out if last and out is not None else ctx.temp(tuple(shape), compute,
                                                              f"axis{axis}")
        ctx.emit("resample_axis", [nxt, cur, ctx.builder.const_ref(index, DType.int64),
                                   ctx.builder.const_ref(table, DType.float64)],
                 [dtype_code(ctx, compute), numel(shape[:axis]), in_len,
                  numel(shape[axis + 1:]), sizes[axis], index.shape[1]])
        cur = nxt
    return cur


def bicubic_taps(in_len: int, out_len: int, ratio: float, align_corners: bool):
    """torch's bicubic interpolation along one axis (upsample_bicubic2d: A = -0.75, source
    index ratio * (dst + 0.5) - 0.5 unclamped, or ratio * dst with align_corners; the four
    taps floor(src) - 1 .. + 2 clamped to the axis) as an (index, weight) tap table."""
    a = -0.75

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.zeros((out_len, in_len), dtype=np.float64)
    for dst in range(out_len):
        src = ratio * dst if align_corners else ratio * (dst + 0.5) - 0.5
        base = int(np.floor(src))
        t = src - base
        for k, w in enumerate((far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t))):
            weights[dst, min(max(base - 1 + k, 0), in_len - 1)] += w
    return _taps(weights)


@register_lowering("native", "onnx_resize")
def lower_onnx_resize(ctx) -> None:
    a = ctx.attrs
    in_dtype, out_dtype = ctx.in_dtype(0), ctx.out_dtype(0)
    if in_dtype not in DTYPE_CODES or in_dtype == DType.bool:
        ctx.unsupported(f"onnx_resize of {in_dtype}")
    compute = in_dtype if in_dtype in (DType.float32, DType.float64) else DType.float64
    ctm = a["coordinate_transformation_mode"]
    if ctm == "tf_crop_and_resize" and a["roi"] is None:
        ctx.invalid("tf_crop_and_resize without a roi")
    shape = list(ctx.in_shape(0))
    sizes, scales = list(a["sizes"]), list(a["scales"])
    out = ctx.output(0)
    if out.numel == 0:
        return
    stages, keep = _stages(ctx, shape, sizes, scales)
    direct = keep is None and out_dtype == compute  # the last stage can write the output
    cur = resample_axes(ctx, ctx.cast(0, compute), out if direct else None, shape, sizes,
                        stages, compute)
    if direct and stages:
        return
    if keep is not None:
        cond = ctx.builder.const_ref(np.ascontiguousarray(keep), DType.bool).expanded(shape)
        fill = ctx.builder.const_ref(np.array(a["extrapolation_value"], dtype=compute.numpy),
                                     compute).expanded(shape)
        masked = out if out_dtype == compute else ctx.temp(tuple(shape), compute, "extrapolated")
        dims, (sc, sa, sb) = R.collapse_dims(tuple(shape), cond.strides, cur.strides,
                                             fill.strides)
        ctx.emit("where", [masked, cond, cur, fill],
                 [compute.itemsize, len(dims), *dims, *sc, *sa, *sb])
        cur = masked
    if out_dtype != compute:  # integers: round half to even, then convert
        rounded = ctx.temp(tuple(shape), compute, "rounded")
        ctx.emit("unary", [rounded, cur], [UNARY_CODES["round"], dtype_code(ctx, compute),
                                           rounded.numel], [])
        ctx.emit("cast", [out, rounded], [DTYPE_CODES[compute], DTYPE_CODES[out_dtype],
                                          out.numel])
    elif keep is None:  # nothing resized: the output is the input
        ctx.copy(out, cur)
