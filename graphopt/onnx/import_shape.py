"""Converters of the ONNX data-movement and shape ops: Reshape, Transpose, Slice, Pad...

Axes, perms, split sizes, slice steps and pads are checked against the operand's rank and
sizes (axes in [-r, r-1] are normalized, anything else is refused rather than wrapped).
"""

from __future__ import annotations

from graphopt.errors import GraphoptError
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Value
from graphopt.ir.types import normalize_dim
from graphopt.onnx.import_nn import expect_rank
from graphopt.onnx.importer import ImportContext, OnnxNode, onnx_converter
from graphopt.ops._infer import broadcast_shapes, prod


def _axes_operand(ctx: ImportContext, node: OnnxNode, i: int, attr: str, opset_as_input: int):
    if node.opset >= opset_as_input:
        return ctx.ints(node, i, attr) if node.has_input(i) else None
    return node.ints(attr, None)


def _sizes(values, what: str) -> list:
    """Dims read from a tensor: ints must be >= 0 (symbolic dims are sizes already)."""
    if any(isinstance(d, int) and d < 0 for d in values):
        raise GraphoptError(f"{what} {values} has negative sizes")
    return list(values)


@onnx_converter("Reshape")
def _reshape(ctx, node):
    x = ctx.value(node, 0)
    target = ctx.dims(node, 1, "shape")
    allowzero = node.attr("allowzero", 0)
    ints = [d for d in target if isinstance(d, int)]
    if any(d < -1 for d in ints) or ints.count(-1) > 1:
        raise GraphoptError(f"shape {target} may hold sizes >= 0 and one -1 only")
    if allowzero and -1 in ints and 0 in ints:
        raise GraphoptError(f"shape {target} with allowzero=1 cannot hold both 0 and -1")
    if not allowzero and any(isinstance(d, int) and d == 0 and i >= x.type.rank
                             for i, d in enumerate(target)):
        raise GraphoptError(f"shape {target} copies (0) a dim past the input's rank "
                            f"{x.type.rank}")
    shape = [x.shape[i] if (isinstance(d, int) and d == 0 and not allowzero) else d
             for i, d in enumerate(target)]
    return ctx.emit("reshape", [x], {"shape": tuple(shape)})


@onnx_converter("Flatten")
def _flatten(ctx, node):
    x = ctx.value(node, 0)
    rank = x.type.rank
    axis = node.attr("axis", 1)
    if not -rank <= axis <= rank:  # Flatten also takes axis == rank
        raise GraphoptError(f"attribute 'axis' {axis} is out of range for a rank-{rank} tensor "
                            f"(ONNX allows [{-rank}, {rank}])")
    axis = axis + rank if axis < 0 else axis
    return ctx.emit("reshape", [x], {"shape": (prod(x.shape[:axis]), prod(x.shape[axis:]))})


@onnx_converter("Transpose")
def _transpose(ctx, node):
    x = ctx.value(node, 0)
    perm = node.ints("perm", list(reversed(range(x.type.rank))))
    if sorted(perm) != list(range(x.type.rank)):
        raise GraphoptError(f"perm {perm} is not a permutation of the {x.type.rank} axes")
    return ctx.emit("permute", [x], {"perm": tuple(perm)})


@onnx_converter("Squeeze")
def _squeeze(ctx, node):
    x = ctx.value(node, 0)
    axes = _axes_operand(ctx, node, 1, "axes", 13)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    if x.type.rank == 0 and axes:
        raise GraphoptError(f"Squeeze axes {axes} of a 0-d tensor")
    axes = tuple(sorted(node.axes(axes, x.type.rank)))
    for a in axes:
        if x.shape[a] != 1:
            raise GraphoptError(f"Squeeze of axis {a} of {x.type}, which is not 1")
    return ctx.emit("squeeze", [x], {"axes": axes}) if axes else x


@onnx_converter("Unsqueeze")
def _unsqueeze(ctx, node):
    x = ctx.value(node, 0)
    axes = _axes_operand(ctx, node, 1, "axes", 13)
    if not axes:
        raise GraphoptError("Unsqueeze needs 'axes'")
    out_rank = x.type.rank + len(axes)
    y = x
    for a in sorted(node.axes(axes, out_rank)):
        y = ctx.emit("unsqueeze", [y], {"axis": a})
    return y


@onnx_converter("Concat")
def _concat(ctx, node):
    values = ctx.values(node)
    rank = values[0].type.rank
    if rank == 0 or any(v.type.rank != rank for v in values):
        raise GraphoptError(f"Concat inputs must have one rank >= 1, got "
                            f"{[str(v.type) for v in values]}")
    axis = node.axis(node.attr("axis"), rank, "attribute 'axis'")
    return ctx.emit("concat", values, {"axis": axis})


@onnx_converter("Split")
def _split(ctx, node):
    x = ctx.value(node, 0)
    if x.type.rank == 0:
        raise GraphoptError("Split of a 0-d tensor")
    axis = node.axis_attr("axis", 0, x.type.rank)
    size = x.shape[axis]
    n = len(node.outputs)
    if node.opset >= 13 and node.has_input(1):
        sizes = _sizes(ctx.dims(node, 1, "split"), "split")
    elif node.opset < 13 and node.has_attr("split"):
        sizes = node.ints("split", None, minimum=0)
    else:
        if not isinstance(size, int):
            raise GraphoptError(f"splitting symbolic dim {size} into {n} parts")
        if node.has_attr("num_outputs") and node.positive_int("num_outputs") != n:
            raise GraphoptError(f"num_outputs {node.attr('num_outputs')} differs from the "
                                f"node's {n} outputs")
        chunk = -(-size // n)
        sizes = [max(0, min(chunk, size - i * chunk)) for i in range(n)]
    if len(sizes) != len(node.outputs):
        raise GraphoptError(f"split sizes {sizes} give {len(sizes)} parts for "
                            f"{len(node.outputs)} outputs")
    total = normalize_dim(sum(sizes))
    if isinstance(total, int) and isinstance(size, int) and total != size:
        raise GraphoptError(f"split sizes {sizes} add up to {total}, not to the size {size} "
                            f"of axis {axis}")
    out = ctx.emit("split", [x], {"axis": axis, "sizes": tuple(sizes)})
    return list(out) if isinstance(out, tuple) else [out]


def _slice_bounds_of(ctx: ImportContext, node: OnnxNode):
    if node.opset < 10:
        starts, ends = node.ints("starts", None), node.ints("ends", None)
        if starts is None or ends is None:
            raise GraphoptError("Slice-1 needs attributes 'starts' and 'ends'")
        axes = node.ints("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = ctx.dims(node, 1, "starts"), ctx.dims(node, 2, "ends")
        axes = ctx.ints(node, 3, "axes") if node.has_input(3) else list(range(len(starts)))
        steps = ctx.ints(node, 4, "steps") if node.has_input(4) else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise GraphoptError(f"starts {starts}, ends {ends}, axes {axes} and steps {steps} must "
                            "have one entry per sliced axis")
    if any(s == 0 for s in steps):
        raise GraphoptError(f"steps {steps} must be non-zero")
    return starts, ends, axes, steps


@onnx_converter("Slice")
def _slice(ctx, node):
    x = ctx.value(node, 0)
    starts, ends, axes, steps = _slice_bounds_of(ctx, node)
    rank = x.type.rank
    if rank == 0:
        raise GraphoptError("Slice of a 0-d tensor")
    axes = node.axes(axes, rank)
    flips, plain = [], []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step > 0:
            plain.append((axis, start, end, step))
            continue
        size = x.shape[axis]
        if not isinstance(size, int) or not isinstance(start, int) or not isinstance(end, int):
            raise GraphoptError(f"negative-step Slice on symbolic dim {size}")
        s, e, st = slice(start, end, step).indices(size)
        if st == -1 and s == size - 1 and e == -1:
            flips.append(axis)  # the whole axis reversed
        else:
            flips.append(axis)
            plain.append((axis, size - 1 - s, size - 1 - e, -st))
    y = x
    if flips:
        y = ctx.emit("flip", [y], {"axes": tuple(sorted(flips))})
    for axis, start, end, step in plain:
        y = ctx.emit("slice", [y], {"axis": axis, "start": start,
                                    "end": min(end, 2**63 - 1) if isinstance(end, int) else end,
                                    "step": step})
    return y


@onnx_converter("Expand")
def _expand(ctx, node):
    x = ctx.value(node, 0)
    shape = _sizes(ctx.dims(node, 1, "shape"), "shape")
    out = broadcast_shapes(tuple(x.shape), tuple(shape))
    return ctx.emit("expand", [x], {"shape": out})


@onnx_converter("Tile")
def _tile(ctx, node):
    x = ctx.value(node, 0)
    repeats = _sizes(ctx.dims(node, 1, "repeats"), "repeats")
    if len(repeats) != x.type.rank:
        raise GraphoptError(f"repeats {repeats} must have one entry per dim of {x.type}")
    return ctx.emit("tile", [x], {"repeats": tuple(repeats)})


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate",
              "wrap": "circular"}


@onnx_converter("Pad")
def _pad(ctx, node):
    x = ctx.value(node, 0)
    rank = x.type.rank
    if rank == 0:
        raise GraphoptError("Pad of a 0-d tensor")
    mode = node.choice("mode", "constant", _PAD_MODES)
    if node.opset < 11:
        pads, value = node.ints("pads", None), node.attr("value", 0.0)
        if pads is None:
            raise GraphoptError("Pad-2 needs attribute 'pads'")
        axes = list(range(rank))
    else:
        pads = ctx.ints(node, 1, "pads")
        value = 0.0
        if node.has_input(2):
            value = ctx.scalar_const(node, 2, "constant_value", "biuf")
        axes = node.axes(ctx.ints(node, 3, "axes"), rank) if node.has_input(3) \
            else list(range(rank))
    n = len(axes)
    if len(pads) != 2 * n:
        raise GraphoptError(f"pads {pads} must have 2 entries per padded axis ({2 * n})")
    for a, lo, hi in zip(axes, pads[:n], pads[n:]):
        size = x.shape[a]
        if isinstance(size, int) and size + lo + hi < 0:
            raise GraphoptError(f"pads {pads} crop axis {a} of {x.type} below size 0")
    begins = dict(zip(axes, pads[:n]))
    ends = dict(zip(axes, pads[n:]))
    # A Pad that pads nothing stays a node: imports map ONNX nodes one to one (cleanup passes
    # remove no-ops), which keeps IR -> ONNX -> IR -> ONNX stable.
    padded = [a for a in range(rank) if begins.get(a, 0) or ends.get(a, 0)] or [rank - 1]
    torch_pads = []
    for axis in range(rank - 1, min(padded) - 1, -1):
        torch_pads += [begins.get(axis, 0), ends.get(axis, 0)]
    attrs = {"pads": tuple(torch_pads), "mode": _PAD_MODES[mode]}
    if mode == "constant":
        attrs["value"] = float(value) if x.dtype.is_floating else value
    return ctx.emit("pad", [x], attrs)


@onnx_converter("Shape")
def _shape(ctx, node):
    x = ctx.value(node, 0)
    rank = x.type.rank
    start = node.attr("start", 0)
    end = node.attr("end", None)
    start = max(0, min(rank, start + rank if start < 0 else start))
    if end is not None:
        end = max(0, min(rank, end + rank if end < 0 else end))
        if end == rank:
            end = None
    return ctx.emit("shape", [x], {"start": start, "end": end})


@onnx_converter("Size")
def _size(ctx, node):
    x = ctx.value(node, 0)
    numel = x.type.numel
    if isinstance(numel, int):
        return ctx.scalar(numel, DType.int64)
    return ctx.emit("prod", [ctx.emit("shape", [x])], {"axes": (0,), "keepdim": False})


@onnx_converter("Trilu")
def _trilu(ctx, node):
    k = ctx.scalar_const(node, 1, "k") if node.has_input(1) else 0
    op = "triu" if node.attr("upper", 1) else "tril"
    return ctx.emit(op, [ctx.value(node, 0)], {"diagonal": k})


def _block_size(node: OnnxNode, x: Value, divides: str) -> int:
    """The ``blocksize`` of Depth/SpaceToDepth, checked against a rank-4 input."""
    expect_rank(x, 4, "the input (N, C, H, W)")
    b = node.positive_int("blocksize")
    n, c, h, w = x.shape
    dims = (c,) if divides == "C" else (h, w)
    divisor = b * b if divides == "C" else b
    if any(isinstance(d, int) and d % divisor for d in dims):
        raise GraphoptError(f"blocksize {b} does not divide {x.type}")
    return b


def _block_shuffle(ctx: ImportContext, x, b: int, mode: str):
    n, c, h, w = x.shape
    if mode == "DCR":
        y = ctx.emit("reshape", [x], {"shape": (n, b, b, normalize_dim(c // (b * b)), h, w)})
        y = ctx.emit("permute", [y], {"perm": (0, 3, 4, 1, 5, 2)})
    else:
        y = ctx.emit("reshape", [x], {"shape": (n, normalize_dim(c // (b * b)), b, b, h, w)})
        y = ctx.emit("permute", [y], {"perm": (0, 1, 4, 2, 5, 3)})
    return ctx.emit("reshape", [y], {"shape": (n, normalize_dim(c // (b * b)), h * b, w * b)})


@onnx_converter("DepthToSpace")
def _depth_to_space(ctx, node):
    x = ctx.value(node, 0)
    b = _block_size(node, x, "C")
    mode = node.choice("mode", "DCR", ("DCR", "CRD"))
    if mode == "CRD":
        return ctx.emit("pixel_shuffle", [x], {"factor": b})
    return _block_shuffle(ctx, x, b, mode)


@onnx_converter("SpaceToDepth")
def _space_to_depth(ctx, node):
    x = ctx.value(node, 0)
    b = _block_size(node, x, "HW")
    n, c, h, w = x.shape
    hb, wb = normalize_dim(h // b), normalize_dim(w // b)
    y = ctx.emit("reshape", [x], {"shape": (n, c, hb, b, wb, b)})
    perm = (0, 1, 3, 5, 2, 4) if node.attr("mode", "DCR") == "CRD" else (0, 3, 5, 1, 2, 4)
    y = ctx.emit("permute", [y], {"perm": perm})
    return ctx.emit("reshape", [y], {"shape": (n, c * b * b, hb, wb)})
