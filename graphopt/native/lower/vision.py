"""Spatial transformers -> "grid_sample" (csrc/rt_grid.cpp) and affine_grid as one batched GEMM
of a plan-time base grid with each theta."""

from __future__ import annotations

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.native.codes import ACTIVATION_CODES
from graphopt.native.lower._common import require_float32
from graphopt.native.refs import numel
from graphopt.ops.registry import register_lowering

_MODES = {"bilinear": 0, "linear": 0, "nearest": 1, "bicubic": 2, "cubic": 2}
_PADDINGS = {"zeros": 0, "border": 1, "reflection": 2}


@register_lowering("native", "grid_sample")
def lower_grid_sample(ctx) -> None:
    require_float32(ctx, 0, 1)
    a = ctx.attrs
    mode, padding = _MODES.get(a["mode"]), _PADDINGS.get(a["padding_mode"])
    if mode is None or padding is None:
        ctx.invalid(f"mode {a['mode']!r} / padding_mode {a['padding_mode']!r} unknown")
    x, grid = ctx.contiguous(0), ctx.contiguous(1)
    spatial = len(x.shape) - 2
    if spatial not in (2, 3) or grid.shape[-1] != spatial:
        ctx.invalid(f"grid {grid.shape} does not sample input {x.shape}")
    if mode == 2 and spatial == 3:
        ctx.invalid("bicubic sampling is 2-D only")
    out = ctx.output(0)
    if out.numel == 0:
        return
    ctx.emit("grid_sample", [out, x, grid],
             [spatial, x.shape[0], x.shape[1], *x.shape[2:], *out.shape[2:], mode, padding,
              int(a["align_corners"])])


def _base_grid(sizes, align_corners: bool) -> np.ndarray:
    """torch's affine_grid base: [*sizes, n + 1] holding (x, y[, z], 1), x along the last dim."""
    axes = []
    for s in sizes:
        steps = np.linspace(-1.0, 1.0, s) if s > 1 else np.zeros(1)
        axes.append(steps if align_corners else steps * (s - 1) / s)
    mesh = np.meshgrid(*axes, indexing="ij")  # one array per spatial dim, in size order
    coords = [m for m in reversed(mesh)] + [np.ones_like(mesh[0])]
    return np.stack(coords, -1).astype(np.float32)


@register_lowering("native", "affine_grid")
def lower_affine_grid(ctx) -> None:
    """out[n, p, :] = base[p] @ theta[n]^T: one batched GEMM, the base grid shared (stride 0)."""
    require_float32(ctx, 0)
    theta = ctx.contiguous(0)
    size = ctx.attrs["size"]
    spatial = len(size) - 2
    if theta.shape[1:] != (spatial, spatial + 1):
        ctx.invalid(f"theta {theta.shape} does not match a {spatial}-d size {size}")
    out = ctx.output(0)
    if out.numel == 0:
        return
    base = ctx.builder.const_ref(_base_grid(size[2:], ctx.attrs["align_corners"]).reshape(
        -1, spatial + 1), DType.float32)
    points, k = numel(tuple(size[2:])), spatial + 1
    # A = base [points, k] (every batch), B[k, j] = theta[n, j, k]; C = out[n] [points, spatial]
    ctx.emit("gemm", [out, base, theta, None, None],
             [1, theta.shape[0], 0, spatial * k, points, spatial, k, k, 1, 1, k,
              ACTIVATION_CODES["none"], 0, 0], [1.0, 0.0, 0.0])
