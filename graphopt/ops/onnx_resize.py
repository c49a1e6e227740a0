"""ONNX Resize as an IR op: every mode and coordinate transformation of the ONNX spec.

The importer maps Resize to the torch-style ``resize`` op when ``F.interpolate`` computes the
same thing; ``onnx_resize`` covers the rest (nearest rounding modes, half_pixel_symmetric,
tf_crop_and_resize, cubic with other coefficients, antialiasing, keep_aspect_ratio_policy).
Resizing is separable, so the reference builds one [out, in] interpolation matrix per axis
following the ONNX formulas and applies them in turn.
"""

from __future__ import annotations

import math

import torch

from graphopt.ops.registry import AttrSpec, register_op

RESIZE_ATTRS = {
    "sizes": AttrSpec(tuple, doc="output dims (all of them)"),
    "scales": AttrSpec(tuple, doc="per-dim scale factors (ONNX's, also when sizes were given)"),
    "mode": "nearest",
    "coordinate_transformation_mode": "half_pixel",
    "nearest_mode": "round_prefer_floor",
    "cubic_coeff_a": -0.75,
    "exclude_outside": False,
    "extrapolation_value": 0.0,
    "antialias": False,
    "roi": AttrSpec((tuple, type(None)), None, "tf_crop_and_resize: (starts..., ends...)"),
    "by_sizes": AttrSpec(bool, False, "whether the ONNX node gave sizes (else scales)"),
    "keep_aspect_ratio_policy": "stretch",
    "requested_sizes": AttrSpec((tuple, type(None)), None,
                                "the sizes input when keep_aspect_ratio_policy is not stretch"),
    "axes": AttrSpec((tuple, type(None)), None, "the axes of requested_sizes"),
}


def _nearest_weights(ratio, mode):
    if ratio == 1.0:  # an exact sample point
        return [0.0, 1.0]
    if mode == "round_prefer_floor":
        return [ratio <= 0.5, ratio > 0.5]
    if mode == "round_prefer_ceil":
        return [ratio < 0.5, ratio >= 0.5]
    if mode == "floor":
        return [1.0, 0.0]
    return [0.0, 1.0]  # ceil


def _cubic_kernel(x, a):
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def resize_matrix(in_len: int, out_len: int, scale: float, attrs, roi=None):
    """The [out, in] interpolation matrix of one axis and its extrapolation mask (ONNX)."""
    import numpy as np

    mode = attrs["mode"]
    ctm = attrs["coordinate_transformation_mode"]
    out_w = scale * in_len
    weights = np.zeros((out_len, in_len), dtype=np.float64)
    outside = np.zeros(out_len, dtype=bool)
    antialias = attrs["antialias"] and mode != "nearest" and scale < 1.0
    a = attrs["cubic_coeff_a"]
    for y in range(out_len):
        if ctm == "align_corners":
            x = 0.0 if out_w == 1 else y * (in_len - 1) / (out_w - 1)
        elif ctm == "asymmetric":
            x = y / scale
        elif ctm == "tf_crop_and_resize":
            lo, hi = roi
            x = ((hi - lo) * (in_len - 1) / 2 if out_w == 1
                 else y * (hi - lo) * (in_len - 1) / (out_w - 1)) + lo * (in_len - 1)
            if x < 0 or x > in_len - 1:
                outside[y] = True
                continue
        elif ctm == "pytorch_half_pixel":
            x = -0.5 if out_w == 1 else (y + 0.5) / scale - 0.5
        elif ctm == "half_pixel":
            x = (y + 0.5) / scale - 0.5
        elif ctm == "half_pixel_symmetric":
            offset = in_len / 2 * (1 - out_len / out_w)
            x = offset + (y + 0.5) / scale - 0.5
        else:
            raise ValueError(f"coordinate_transformation_mode {ctm}")
        base = math.floor(x)
        if x == base:  # an exact sample point: ONNX takes ratio 1 from the index below
            base -= 1
        ratio = x - base
        if mode == "nearest":
            coeffs = _nearest_weights(ratio, attrs["nearest_mode"])
        elif mode == "linear" and not antialias:
            coeffs = [1 - ratio, ratio]
        elif mode == "linear":
            start = math.floor(-1 / scale) + 1
            args = [(i - ratio) * scale for i in range(start, 2 - start)]
            coeffs = [min(max(1 - abs(t), 0.0), 1.0) for t in args]
        elif not antialias:  # cubic
            coeffs = [_cubic_kernel(ratio + 1, a), _cubic_kernel(ratio, a),
                      _cubic_kernel(1 - ratio, a), _cubic_kernel(2 - ratio, a)]
        else:
            start = math.floor(-2 / scale) + 1
            coeffs = [_cubic_kernel(scale * (i - ratio), a) for i in range(start, 2 - start)]
        coeffs = np.array(coeffs, dtype=np.float64)
        if antialias:
            coeffs = coeffs / coeffs.sum()
        n = len(coeffs)
        idx = np.arange(base - n // 2 + 1, base - n // 2 + 1 + n)
        if attrs["exclude_outside"]:
            coeffs = np.where((idx < 0) | (idx >= in_len), 0.0, coeffs)
            coeffs = coeffs / coeffs.sum()
        for c, i in zip(coeffs, np.clip(idx, 0, in_len - 1)):
            weights[y, i] += c
    return weights, outside


@register_op("onnx_resize", inputs=("x",), attrs=RESIZE_ATTRS,
             infer=lambda t, a: t[0].with_shape(a["sizes"]))
def onnx_resize(x, sizes, scales, mode="nearest", coordinate_transformation_mode="half_pixel",
                nearest_mode="round_prefer_floor", cubic_coeff_a=-0.75, exclude_outside=False,
                extrapolation_value=0.0, antialias=False, roi=None, by_sizes=False,
                keep_aspect_ratio_policy="stretch", requested_sizes=None, axes=None):
    """ONNX Resize (every mode and coordinate transformation), applied axis by axis with
    interpolation matrices (resizing is separable)."""
    attrs = dict(mode=mode, coordinate_transformation_mode=coordinate_transformation_mode,
                 nearest_mode=nearest_mode, cubic_coeff_a=cubic_coeff_a,
                 exclude_outside=exclude_outside, antialias=antialias)
    rank = x.dim()
    y = x.double()
    keep = None
    for axis in range(rank):
        in_len, out_len, scale = x.shape[axis], sizes[axis], scales[axis]
        if in_len == out_len and scale == 1.0 and coordinate_transformation_mode != \
                "tf_crop_and_resize":
            continue
        axis_roi = None if roi is None else (roi[axis], roi[rank + axis])
        w, outside = resize_matrix(in_len, out_len, scale, attrs, axis_roi)
        y = torch.movedim(torch.tensordot(y, torch.from_numpy(w), dims=([axis], [1])), -1,
                          axis)
        if outside.any():
            shape = [1] * rank
            shape[axis] = out_len
            inside = torch.from_numpy(~outside).reshape(shape)
            keep = inside if keep is None else keep & inside
    if keep is not None:
        y = torch.where(keep, y, torch.tensor(extrapolation_value, dtype=y.dtype))
    if not x.dtype.is_floating_point:
        y = torch.round(y)
    return y.to(x.dtype)
