"""Converters of the ONNX data-movement, indexing and creation ops."""

from __future__ import annotations

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.ir.dtypes import DType
from graphopt.ir.types import normalize_dim
from graphopt.onnx._common import tensor_to_array
from graphopt.onnx.importer import ImportContext, OnnxNode, onnx_converter
from graphopt.ops._infer import broadcast_shapes, prod


def _axes_operand(ctx: ImportContext, node: OnnxNode, i: int, attr: str, opset_as_input: int):
    if node.opset >= opset_as_input:
        return [int(a) for a in ctx.const(node, i, attr)] if node.has_input(i) else None
    return node.attr(attr, None)


@onnx_converter("Reshape")
def _reshape(ctx, node):
    x = ctx.value(node, 0)
    target = ctx.dims(node, 1, "shape")
    allowzero = node.attr("allowzero", 0)
    shape = [x.shape[i] if (isinstance(d, int) and d == 0 and not allowzero) else d
             for i, d in enumerate(target)]
    return ctx.emit("reshape", [x], {"shape": tuple(shape)})


@onnx_converter("Flatten")
def _flatten(ctx, node):
    x = ctx.value(node, 0)
    axis = node.attr("axis", 1)
    axis = axis + x.type.rank if axis < 0 else axis
    return ctx.emit("reshape", [x], {"shape": (prod(x.shape[:axis]), prod(x.shape[axis:]))})


@onnx_converter("Transpose")
def _transpose(ctx, node):
    x = ctx.value(node, 0)
    perm = node.attr("perm", list(reversed(range(x.type.rank))))
    return ctx.emit("permute", [x], {"perm": tuple(perm)})


@onnx_converter("Squeeze")
def _squeeze(ctx, node):
    x = ctx.value(node, 0)
    axes = _axes_operand(ctx, node, 1, "axes", 13)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = tuple(sorted(a % max(x.type.rank, 1) for a in axes))
    for a in axes:
        if x.shape[a] != 1:
            raise GraphoptError(f"Squeeze of axis {a} of {x.type}, which is not 1")
    return ctx.emit("squeeze", [x], {"axes": axes}) if axes else x


@onnx_converter("Unsqueeze")
def _unsqueeze(ctx, node):
    x = ctx.value(node, 0)
    axes = _axes_operand(ctx, node, 1, "axes", 13)
    out_rank = x.type.rank + len(axes)
    y = x
    for a in sorted(a % out_rank for a in axes):
        y = ctx.emit("unsqueeze", [y], {"axis": a})
    return y


@onnx_converter("Concat")
def _concat(ctx, node):
    values = ctx.values(node)
    axis = node.attr("axis") % max(values[0].type.rank, 1)
    return ctx.emit("concat", values, {"axis": axis})


@onnx_converter("Split")
def _split(ctx, node):
    x = ctx.value(node, 0)
    axis = node.attr("axis", 0) % max(x.type.rank, 1)
    size = x.shape[axis]
    n = len(node.outputs)
    if node.opset >= 13 and node.has_input(1):
        sizes = ctx.dims(node, 1, "split")
    elif node.opset < 13 and node.has_attr("split"):
        sizes = node.attr("split")
    else:
        if not isinstance(size, int):
            raise GraphoptError(f"splitting symbolic dim {size} into {n} parts")
        n = node.attr("num_outputs", n)
        chunk = -(-size // n)
        sizes = [min(chunk, size - i * chunk) for i in range(n)]
    out = ctx.emit("split", [x], {"axis": axis, "sizes": tuple(sizes)})
    return list(out) if isinstance(out, tuple) else [out]


def _slice_bounds_of(ctx: ImportContext, node: OnnxNode):
    if node.opset < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes = node.attr("axes", list(range(len(starts))))
        return starts, ends, axes, [1] * len(starts)
    starts, ends = ctx.dims(node, 1, "starts"), ctx.dims(node, 2, "ends")
    axes = [int(a) for a in ctx.const(node, 3, "axes")] if node.has_input(3) else \
        list(range(len(starts)))
    steps = [int(s) for s in ctx.const(node, 4, "steps")] if node.has_input(4) else \
        [1] * len(starts)
    return starts, ends, axes, steps


@onnx_converter("Slice")
def _slice(ctx, node):
    x = ctx.value(node, 0)
    starts, ends, axes, steps = _slice_bounds_of(ctx, node)
    rank = x.type.rank
    flips, plain = [], []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis % rank
        if step == 0:
            raise GraphoptError("Slice step 0")
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


@onnx_converter("Gather")
def _gather(ctx, node):
    x, index = ctx.value(node, 0), ctx.value(node, 1)
    axis = node.attr("axis", 0) % max(x.type.rank, 1)
    if axis == 0 and x.type.rank == 2 and x.kind == "const" and index.type.rank >= 1:
        known = ctx.maybe_const(node, 1)
        if known is None or (known >= 0).all():
            return ctx.emit("embedding", [x, index])
    return ctx.emit("index", [x, index], {"axes": (axis,)})


@onnx_converter("GatherElements")
def _gather_elements(ctx, node):
    x, index = ctx.value(node, 0), ctx.value(node, 1)
    axis = node.attr("axis", 0) % max(x.type.rank, 1)
    return ctx.emit("gather_elements", [x, index], {"axis": axis})


@onnx_converter("GatherND")
def _gather_nd(ctx, node):
    return ctx.emit("gather_nd", [ctx.value(node, 0), ctx.value(node, 1)],
                    {"batch_dims": node.attr("batch_dims", 0)})


@onnx_converter("ScatterElements", "Scatter")
def _scatter_elements(ctx, node):
    x = ctx.value(node, 0)
    axis = node.attr("axis", 0) % max(x.type.rank, 1)
    return ctx.emit("scatter_elements", [x, ctx.value(node, 1), ctx.value(node, 2)],
                    {"axis": axis, "reduction": node.attr("reduction", "none")})


@onnx_converter("ScatterND")
def _scatter_nd(ctx, node):
    return ctx.emit("scatter_nd", [ctx.value(node, 0), ctx.value(node, 1), ctx.value(node, 2)],
                    {"reduction": node.attr("reduction", "none")})


@onnx_converter("Expand")
def _expand(ctx, node):
    x = ctx.value(node, 0)
    shape = ctx.dims(node, 1, "shape")
    out = broadcast_shapes(tuple(x.shape), tuple(shape))
    return ctx.emit("expand", [x], {"shape": out})


@onnx_converter("Tile")
def _tile(ctx, node):
    x = ctx.value(node, 0)
    return ctx.emit("tile", [x], {"repeats": tuple(ctx.dims(node, 1, "repeats"))})


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate",
              "wrap": "circular"}


@onnx_converter("Pad")
def _pad(ctx, node):
    x = ctx.value(node, 0)
    rank = x.type.rank
    mode = node.attr("mode", "constant")
    if mode not in _PAD_MODES:
        raise GraphoptError(f"Pad mode '{mode}'")
    if node.opset < 11:
        pads, value = node.attr("pads"), node.attr("value", 0.0)
        axes = list(range(rank))
    else:
        pads = [int(p) for p in ctx.const(node, 1, "pads")]
        value = 0.0
        if node.has_input(2):
            value = ctx.const(node, 2, "constant_value").reshape(-1)[0].item()
        axes = [int(a) % rank for a in ctx.const(node, 3, "axes")] if node.has_input(3) \
            else list(range(rank))
    n = len(axes)
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


def _value_attr(node: OnnxNode, default_dtype: DType):
    t = node.attr("value", None)
    if t is None:
        return 0.0, default_dtype
    array, dtype = tensor_to_array(t)
    return array.reshape(-1)[0].item(), dtype


@onnx_converter("ConstantOfShape")
def _constant_of_shape(ctx, node):
    shape = tuple(ctx.dims(node, 0, "shape"))
    value, dtype = _value_attr(node, DType.float32)
    return ctx.emit("full", [], {"shape": shape, "value": value, "dtype": dtype})


@onnx_converter("Range")
def _range(ctx, node):
    start = ctx.const(node, 0, "start").reshape(()).item()
    delta = ctx.const(node, 2, "delta").reshape(()).item()
    limit = ctx.dims(node, 1, "limit")[0] if ctx.maybe_const(node, 1) is None else \
        ctx.const(node, 1).reshape(()).item()
    dtype = ctx.value(node, 0).dtype
    if isinstance(limit, float) and not dtype.is_floating:
        limit = int(limit)
    return ctx.emit("arange", [], {"start": start, "end": limit, "step": delta, "dtype": dtype})


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
    k = int(ctx.const(node, 1, "k").reshape(())) if node.has_input(1) else 0
    op = "triu" if node.attr("upper", 1) else "tril"
    return ctx.emit(op, [ctx.value(node, 0)], {"diagonal": k})


@onnx_converter("EyeLike")
def _eye_like(ctx, node):
    x = ctx.value(node, 0)
    from graphopt.onnx.import_elementwise import ir_dtype

    dtype = ir_dtype(node.attr("dtype"), "EyeLike dtype") if node.has_attr("dtype") else x.dtype
    if not x.type.is_static:
        raise GraphoptError(f"EyeLike of symbolic shape {x.type}")
    rows, cols = x.shape
    return ctx.constant(np.eye(rows, cols, node.attr("k", 0), dtype=dtype.numpy), dtype, "eye")


@onnx_converter("OneHot")
def _one_hot(ctx, node):
    indices, values = ctx.value(node, 0), ctx.value(node, 2)
    depth = int(ctx.const(node, 1, "depth").reshape(-1)[0])
    out_rank = indices.type.rank + 1
    axis = node.attr("axis", -1) % out_rank
    idx = ctx.cast(indices, DType.int64)
    negative = ctx.emit("lt", [idx, ctx.scalar(0, DType.int64)])
    idx = ctx.emit("where", [negative, ctx.emit("add", [idx, ctx.scalar(depth, DType.int64)]),
                             idx])
    idx = ctx.emit("unsqueeze", [idx], {"axis": axis})
    shape = [1] * out_rank
    shape[axis] = depth
    classes = ctx.constant(np.arange(depth, dtype=np.int64).reshape(shape), DType.int64, "cls")
    hot = ctx.emit("eq", [idx, classes])
    off = ctx.emit("select", [values], {"axis": 0, "index": 0})
    on = ctx.emit("select", [values], {"axis": 0, "index": 1})
    return ctx.emit("where", [hot, on, off])


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
    b = node.attr("blocksize")
    mode = node.attr("mode", "DCR")
    if mode == "CRD":
        return ctx.emit("pixel_shuffle", [x], {"factor": b})
    return _block_shuffle(ctx, x, b, mode)


@onnx_converter("SpaceToDepth")
def _space_to_depth(ctx, node):
    x = ctx.value(node, 0)
    b = node.attr("blocksize")
    n, c, h, w = x.shape
    hb, wb = normalize_dim(h // b), normalize_dim(w // b)
    y = ctx.emit("reshape", [x], {"shape": (n, c, hb, b, wb, b)})
    perm = (0, 1, 3, 5, 2, 4) if node.attr("mode", "DCR") == "CRD" else (0, 3, 5, 1, 2, 4)
    y = ctx.emit("permute", [y], {"perm": perm})
    return ctx.emit("reshape", [y], {"shape": (n, c * b * b, hb, wb)})


@onnx_converter("Constant")
def _constant(ctx, node):
    if node.has_attr("value"):
        array, dtype = tensor_to_array(node.attr("value"))
        return ctx.constant(array, dtype, node.outputs[0])
    for key, dtype in (("value_float", DType.float32), ("value_int", DType.int64)):
        if node.has_attr(key):
            return ctx.constant(np.array(node.attr(key), dtype=dtype.numpy), dtype,
                                node.outputs[0])
    for key, dtype in (("value_floats", DType.float32), ("value_ints", DType.int64)):
        if node.has_attr(key):
            return ctx.constant(np.array(node.attr(key), dtype=dtype.numpy), dtype,
                                node.outputs[0])
    raise GraphoptError("Constant without a numeric value (sparse and string constants are not "
                        "supported)")

