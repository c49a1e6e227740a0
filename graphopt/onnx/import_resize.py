"""Converters of ONNX Resize and Upsample.

Resizes that ``F.interpolate`` computes identically become the IR ``resize`` op (which every
backend knows); every other mode and coordinate transformation becomes ``onnx_resize``.
"""

from __future__ import annotations

import math

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Value
from graphopt.ir.types import normalize_dim
from graphopt.onnx.importer import ImportContext, OnnxNode, onnx_converter


_MODES = ("nearest", "linear", "cubic")
_CTMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
         "asymmetric", "tf_crop_and_resize", "tf_half_pixel_for_nn")
_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
_POLICIES = ("stretch", "not_larger", "not_smaller")


def _check_resize(node: OnnxNode, x: Value, scales, sizes) -> list[int]:
    """Validate a Resize's attributes and its scales/sizes; returns the normalized axes."""
    node.choice("mode", "nearest", _MODES)
    node.choice("coordinate_transformation_mode", "half_pixel", _CTMS)
    node.choice("nearest_mode", "round_prefer_floor", _NEAREST)
    node.choice("keep_aspect_ratio_policy", "stretch", _POLICIES)
    rank = x.type.rank
    if rank == 0:
        raise GraphoptError("Resize of a 0-d tensor")
    axes = node.ints("axes", None) if node.opset >= 18 else None
    axes = list(range(rank)) if axes is None else node.axes(axes, rank)
    given = sizes if sizes is not None else scales
    if len(given) != len(axes):
        raise GraphoptError(f"{'sizes' if sizes is not None else 'scales'} {list(given)} must "
                            f"have one entry per resized axis ({len(axes)})")
    if scales is not None and not all(math.isfinite(s) and s > 0 for s in scales):
        raise GraphoptError(f"scales {list(scales)} must be finite and > 0")
    if sizes is not None and any(isinstance(s, int) and s < 0 for s in sizes):
        raise GraphoptError(f"sizes {list(sizes)} must be >= 0")
    if any(x.shape[a] == 0 for a in axes):
        raise GraphoptError(f"Resize of an empty axis of {x.type}")
    return axes


def _torch_mode(node: OnnxNode, n: int, sizes_out) -> tuple[str, bool | None]:
    """The F.interpolate (mode, align_corners) equal to this Resize's attributes."""
    mode = node.attr("mode", "nearest")
    ctm = node.attr("coordinate_transformation_mode", "half_pixel")
    if node.attr("antialias", 0):
        raise GraphoptError("Resize with antialias")
    if mode == "nearest":
        nearest = node.attr("nearest_mode", "round_prefer_floor")
        if ctm == "asymmetric" and nearest == "floor":
            return "nearest", None
        if ctm == "half_pixel" and nearest == "round_prefer_ceil":
            return "nearest-exact", None
        raise GraphoptError(f"Resize nearest with coordinate_transformation_mode={ctm} and "
                            f"nearest_mode={nearest} (graphopt supports asymmetric+floor and "
                            "half_pixel+round_prefer_ceil)")
    linear = {1: "linear", 2: "bilinear", 3: "trilinear"}
    if ctm == "pytorch_half_pixel" and any(s == 1 for s in sizes_out):
        raise GraphoptError("Resize pytorch_half_pixel to a size of 1")
    if ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        raise GraphoptError(f"Resize {mode} with coordinate_transformation_mode={ctm}")
    align = ctm == "align_corners"
    if mode == "linear":
        if n not in linear:
            raise GraphoptError(f"Resize linear over {n} dims")
        return linear[n], align
    if mode == "cubic":
        if n != 2 or node.attr("cubic_coeff_a", -0.75) != -0.75 or \
                node.attr("exclude_outside", 0):
            raise GraphoptError("Resize cubic other than torch's bicubic (2-D, a=-0.75)")
        return "bicubic", align
    raise GraphoptError(f"Resize mode '{mode}'")


def _resize(ctx: ImportContext, node: OnnxNode, x: Value, scales, sizes) -> Value:
    """Resize as the torch-style IR ``resize`` when F.interpolate computes the same thing,
    else as ``onnx_resize`` (every ONNX mode, by interpolation matrices)."""
    _check_resize(node, x, scales, sizes)
    try:
        return _resize_like_torch(ctx, node, x, scales, sizes)
    except GraphoptError:
        return _resize_onnx(ctx, node, x, scales, sizes)


def _resize_onnx(ctx: ImportContext, node: OnnxNode, x: Value, scales, sizes) -> Value:
    rank = x.type.rank
    if not x.type.is_static:
        raise GraphoptError("Resize outside torch's modes needs static input sizes")
    axes = node.attr("axes", None) if node.opset >= 18 else None
    axes = list(range(rank)) if axes is None else node.axes(axes, rank)
    shape = list(x.shape)
    full_scales, full_sizes = [1.0] * rank, list(shape)
    policy = node.attr("keep_aspect_ratio_policy", "stretch")
    requested = None
    if sizes is not None:
        requested = tuple(int(s) for s in sizes)
        for a, s in zip(axes, requested):
            full_sizes[a] = s
            full_scales[a] = s / shape[a]
        if policy != "stretch":
            if any(shape[a] == 0 for a in axes):
                raise GraphoptError("keep_aspect_ratio_policy on an empty axis")
            pick = min if policy == "not_larger" else max
            scale = pick(full_scales[a] for a in axes)
            for a in axes:
                full_scales[a] = scale
                full_sizes[a] = int(scale * shape[a] + 0.5)
    else:
        for a, s in zip(axes, scales):
            full_scales[a] = float(s)
            full_sizes[a] = int(float(s) * shape[a])
    roi = None
    ctm = node.attr("coordinate_transformation_mode", "half_pixel")
    if ctm == "tf_crop_and_resize":
        given = [float(v) for v in ctx.const(node, 1, "roi").reshape(-1)]
        starts, ends = [0.0] * rank, [1.0] * rank
        n = len(axes)
        if len(given) != 2 * n or not all(math.isfinite(v) for v in given):
            raise GraphoptError(f"roi {given} must hold {2 * n} finite values")
        for i, a in enumerate(axes):
            starts[a], ends[a] = given[i], given[n + i]
        roi = tuple(starts + ends)
    return ctx.emit("onnx_resize", [x], {
        "sizes": tuple(full_sizes), "scales": tuple(full_scales),
        "mode": node.attr("mode", "nearest"), "coordinate_transformation_mode": ctm,
        "nearest_mode": node.attr("nearest_mode", "round_prefer_floor"),
        "cubic_coeff_a": node.attr("cubic_coeff_a", -0.75),
        "exclude_outside": bool(node.attr("exclude_outside", 0)),
        "extrapolation_value": node.attr("extrapolation_value", 0.0),
        "antialias": bool(node.attr("antialias", 0)), "roi": roi,
        "by_sizes": sizes is not None, "keep_aspect_ratio_policy": policy,
        "requested_sizes": requested if policy != "stretch" else None,
        "axes": tuple(axes) if policy != "stretch" else None})


def _resize_like_torch(ctx: ImportContext, node: OnnxNode, x: Value, scales, sizes) -> Value:
    rank = x.type.rank
    if node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise GraphoptError("Resize keep_aspect_ratio_policy other than stretch")
    axes = node.attr("axes", None) if node.opset >= 18 else None
    axes = list(range(rank)) if axes is None else node.axes(axes, rank)
    full_scales = [1.0] * rank
    full_sizes = list(x.shape)
    if sizes is not None:
        for a, s in zip(axes, sizes):
            full_sizes[a] = s
        use_scales = None
    else:
        for a, s in zip(axes, scales):
            full_scales[a] = float(s)
            exact = isinstance(x.shape[a], int) and float(x.shape[a] * float(s)).is_integer()
            if not exact and node.attr("coordinate_transformation_mode", "") == "align_corners":
                # ONNX then divides by the fractional length in*scale - 1; torch by out - 1
                raise GraphoptError("Resize align_corners with scales that give a fractional "
                                    "output length")
            full_sizes[a] = normalize_dim(math.floor(x.shape[a] * float(s))) \
                if isinstance(x.shape[a], int) else normalize_dim(x.shape[a] * float(s))
        use_scales = full_scales
    resized = [a for a in range(rank) if full_sizes[a] != x.shape[a]
               or (use_scales is not None and use_scales[a] != 1.0)]
    if not resized:
        raise GraphoptError("a Resize that changes nothing")  # stays a node (onnx_resize)
    first = min(resized)
    if first < 1:
        raise GraphoptError("Resize of the batch dim")
    lead = max(first, 2) if rank >= 3 else first
    n = rank - lead
    mode, align = _torch_mode(node, n, full_sizes[lead:])
    y = x
    reshaped = lead != 2
    if reshaped:  # F.interpolate wants (N, C, *spatial)
        head = x.shape[:lead]
        batch = 1
        for d in head[:-1]:
            batch = batch * d
        view = ((1,) * (2 - len(head)) + tuple(head)) if len(head) < 2 else \
            (normalize_dim(batch), head[-1])
        y = ctx.emit("reshape", [y], {"shape": view + tuple(x.shape[lead:])})
    attrs = {"size": tuple(full_sizes[lead:]), "mode": mode, "align_corners": align,
             "scales": tuple(use_scales[lead:]) if use_scales is not None else None}
    y = ctx.emit("resize", [y], attrs)
    if reshaped:
        y = ctx.emit("reshape", [y], {"shape": tuple(x.shape[:lead]) + tuple(full_sizes[lead:])})
    return y


@onnx_converter("Resize")
def _resize_op(ctx, node):
    x = ctx.value(node, 0)
    if node.opset < 11:
        scales = [float(s) for s in ctx.const(node, 1, "scales").reshape(-1)]
        return _resize(ctx, node, x, scales, None)
    if node.has_input(3):
        return _resize(ctx, node, x, None, ctx.dims(node, 3, "sizes"))
    scales = ctx.const(node, 2, "scales") if node.has_input(2) else None
    if scales is None or scales.size == 0:
        raise GraphoptError("Resize needs scales or sizes")
    return _resize(ctx, node, x, [float(s) for s in scales.reshape(-1)], None)


@onnx_converter("Upsample")
def _upsample(ctx, node):
    x = ctx.value(node, 0)
    scales = node.attr("scales", []) if node.opset < 9 else \
        [float(s) for s in ctx.const(node, 1, "scales").reshape(-1)]
    if len(scales) != x.type.rank or not all(math.isfinite(s) and s >= 1 for s in scales):
        raise GraphoptError(f"scales {scales} must give one finite factor >= 1 per dim of "
                            f"{x.type}")
    if node.attr("mode", "nearest") != "nearest":
        raise GraphoptError("Upsample linear uses asymmetric coordinates, which torch lacks")
    return _upsample_nearest(ctx, x, scales)


def _upsample_nearest(ctx: ImportContext, x: Value, scales) -> Value:
    rank = x.type.rank
    if scales[0] != 1 or scales[1] != 1 or rank < 3:
        raise GraphoptError("Upsample of the batch or channel dims")
    sizes = []
    for d, s in zip(x.shape, scales):
        if isinstance(d, int):
            sizes.append(math.floor(d * s))
        elif s == 1 or float(s).is_integer():
            sizes.append(normalize_dim(d * int(s)))
        else:
            raise GraphoptError(f"Upsample of the symbolic size {d} by the fractional scale {s}")
    return ctx.emit("resize", [x], {"size": tuple(sizes[2:]), "mode": "nearest",
                                    "scales": tuple(float(s) for s in scales[2:])})
