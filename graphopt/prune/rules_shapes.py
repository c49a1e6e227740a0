"""Coupling rules of data-movement and reduction ops: reshape, permute, squeeze / unsqueeze,
expand, slice / select, concat / split, pad, reorderings, reductions, softmax (see
``atoms.py`` for what a rule does)."""

from __future__ import annotations

from graphopt.ir.graph import Node, Value
from graphopt.prune.atoms import AtomBuilder, coupling, same_leading, short


def _reshape_groups(a: list[int], c: list[int]) -> list[tuple[list[int], list[int]]] | None:
    """Pair up runs of dims with equal products (sizes without 1s); None if impossible."""
    groups, i, j = [], 0, 0
    while i < len(a) and j < len(c):
        ga, gc, pa, pc = [i], [j], a[i], c[j]
        i, j = i + 1, j + 1
        while pa != pc:
            if pa < pc:
                if i == len(a):
                    return None
                pa *= a[i]
                ga.append(i)
                i += 1
            else:
                if j == len(c):
                    return None
                pc *= c[j]
                gc.append(j)
                j += 1
        groups.append((ga, gc))
    return groups if i == len(a) and j == len(c) else None


def _reshape_attrs(node: Node, new_shape) -> dict:
    target = new_shape(node.output)
    shape = tuple(s if (isinstance(s, int) and s == -1) else target[i]
                  for i, s in enumerate(node.attrs["shape"]))
    return {"shape": shape}


def _reshape_segments(x: Value, out: Value) -> list[tuple[list[int], list[int]]] | None:
    """Axis runs of ``x`` and ``out`` between equal symbolic dims (``s0`` stays ``s0``)."""
    xs = [i for i, d in enumerate(x.type.shape) if not isinstance(d, int)]
    os_ = [i for i, d in enumerate(out.type.shape) if not isinstance(d, int)]
    if len(xs) != len(os_) or any(x.type.shape[i] != out.type.shape[j] for i, j in zip(xs, os_)):
        return None
    bounds_x, bounds_o = [-1] + xs + [x.type.rank], [-1] + os_ + [out.type.rank]
    return [(list(range(bounds_x[k] + 1, bounds_x[k + 1])),
             list(range(bounds_o[k] + 1, bounds_o[k + 1]))) for k in range(len(bounds_x) - 1)]


@coupling("reshape", rewrite=_reshape_attrs)
def _reshape(node: Node, b: AtomBuilder) -> None:
    x, out = node.inputs[0], node.output
    reason = f"inner dim of {short(node)}"
    segments = _reshape_segments(x, out)
    if segments is None or 0 in x.type.shape:
        b.freeze(x, None, f"{short(node)} mixes symbolic dims")
        b.freeze(out, None, f"{short(node)} mixes symbolic dims")
        return
    for seg_x, seg_o in segments:
        xa = [i for i in seg_x if x.type.shape[i] != 1]
        oa = [i for i in seg_o if out.type.shape[i] != 1]
        groups = _reshape_groups([x.type.shape[i] for i in xa], [out.type.shape[i] for i in oa])
        if groups is None:  # cannot happen for a valid reshape; stay safe
            for i in seg_x:
                b.freeze(x, i, reason)
            for i in seg_o:
                b.freeze(out, i, reason)
            continue
        for gx, go in groups:
            ax, ao = xa[gx[0]], oa[go[0]]
            if len(gx) == 1 and len(go) == 1:
                b.same(x, ax, out, ao)
                continue
            b.blocks(x, ax, out, ao, reason)  # outermost dims: row-major blocks
            for i in gx[1:]:
                b.freeze(x, xa[i], reason)
            for i in go[1:]:
                b.freeze(out, oa[i], reason)


@coupling("permute")
def _permute(node: Node, b: AtomBuilder) -> None:
    for i, p in enumerate(node.attrs["perm"]):
        b.same(node.inputs[0], p, node.output, i)


@coupling("squeeze")
def _squeeze(node: Node, b: AtomBuilder) -> None:
    x = node.inputs[0]
    axes = {a % x.type.rank for a in node.attrs["axes"]} if x.type.rank else set()
    kept = [i for i in range(x.type.rank) if not (i in axes and x.type.shape[i] == 1)]
    for j, i in enumerate(kept):
        b.same(x, i, node.output, j)


@coupling("unsqueeze")
def _unsqueeze(node: Node, b: AtomBuilder) -> None:
    x, out = node.inputs[0], node.output
    axis = node.attrs["axis"] % out.type.rank
    for i in range(x.type.rank):
        b.same(x, i, out, i if i < axis else i + 1)


def _expand_attrs(node: Node, new_shape) -> dict:
    target = new_shape(node.output)
    shape = tuple(s if (isinstance(s, int) and s == -1) else target[i]
                  for i, s in enumerate(node.attrs["shape"]))
    return {"shape": shape}


@coupling("expand", rewrite=_expand_attrs)
def _expand(node: Node, b: AtomBuilder) -> None:
    b.broadcast(node.output, node.inputs)


@coupling("slice")
def _slice(node: Node, b: AtomBuilder) -> None:
    x, out = node.inputs[0], node.output
    axis = node.attrs["axis"] % x.type.rank
    size = x.type.shape[axis]
    full = (node.attrs["start"] == 0 and node.attrs["step"] == 1
            and isinstance(size, int) and node.attrs["end"] >= size)
    for i in range(x.type.rank):
        if i != axis or full:
            b.same(x, i, out, i)
    if not full:
        b.freeze(x, axis, f"sliced by {short(node)}")
        b.freeze(out, axis, f"sliced by {short(node)}")


@coupling("select")
def _select(node: Node, b: AtomBuilder) -> None:
    x = node.inputs[0]
    axis = node.attrs["axis"] % x.type.rank
    for j, i in enumerate(i for i in range(x.type.rank) if i != axis):
        b.same(x, i, node.output, j)
    b.freeze(x, axis, f"indexed by {short(node)}")


@coupling("concat")
def _concat(node: Node, b: AtomBuilder) -> None:
    out = node.output
    axis = node.attrs["axis"] % out.type.rank
    offset = 0
    for x in node.inputs:
        for i in range(x.type.rank):
            if i != axis:
                b.same(x, i, out, i)
        n = x.type.shape[axis]
        if isinstance(n, int) and isinstance(offset, int):
            b.ranges(x, axis, 0, out, axis, offset, n)
            offset += n
        else:
            b.freeze(x, axis, "symbolic concat")
            b.freeze(out, axis, "symbolic concat")
            offset = None


def _split_attrs(node: Node, new_shape) -> dict:
    axis = node.attrs["axis"] % node.inputs[0].type.rank
    return {"sizes": tuple(new_shape(o)[axis] for o in node.outputs)}


@coupling("split", rewrite=_split_attrs)
def _split(node: Node, b: AtomBuilder) -> None:
    x = node.inputs[0]
    axis = node.attrs["axis"] % x.type.rank
    offset = 0
    for out, n in zip(node.outputs, node.attrs["sizes"]):
        for i in range(x.type.rank):
            if i != axis:
                b.same(x, i, out, i)
        if isinstance(n, int) and isinstance(offset, int):
            b.ranges(out, axis, 0, x, axis, offset, n)
            offset += n
        else:
            b.freeze(x, axis, "symbolic split")
            b.freeze(out, axis, "symbolic split")
            offset = None


@coupling("pad")
def _pad(node: Node, b: AtomBuilder) -> None:
    x, out = node.inputs[0], node.output
    pads = node.attrs["pads"]
    padded = {x.type.rank - 1 - i for i in range(len(pads) // 2)
              if pads[2 * i] != 0 or pads[2 * i + 1] != 0}
    for i in range(x.type.rank):
        if i not in padded:
            b.same(x, i, out, i)


@coupling("flip", "roll")
def _reorder(node: Node, b: AtomBuilder) -> None:
    rank = node.inputs[0].type.rank
    _reorder_axes(node, b, {a % rank for a in node.attrs["axes"]})


@coupling("cumsum")
def _cumsum(node: Node, b: AtomBuilder) -> None:
    _reorder_axes(node, b, {node.attrs["axis"] % node.inputs[0].type.rank})


@coupling("triu", "tril")
def _triangle(node: Node, b: AtomBuilder) -> None:
    rank = node.inputs[0].type.rank
    _reorder_axes(node, b, {rank - 2, rank - 1})


def _reorder_axes(node: Node, b: AtomBuilder, axes: set[int]) -> None:
    """Axes in ``axes`` are reordered (frozen on both sides); the others map one to one."""
    x, out = node.inputs[0], node.output
    for i in range(x.type.rank):
        if i in axes:
            b.freeze(x, i, f"reordered by {short(node)}")
            b.freeze(out, i, f"reordered by {short(node)}")
        else:
            b.same(x, i, out, i)


@coupling("sum", "mean", "prod", "amax", "amin", "all", "any", "logsumexp", "var", "std",
          "argmax", "argmin")
def _reduce(node: Node, b: AtomBuilder) -> None:
    x, out = node.inputs[0], node.output
    rank = x.type.rank
    if "axes" in node.attrs:
        axes = {a % rank for a in node.attrs["axes"]} if node.attrs["axes"] else set(range(rank))
    else:
        axis = node.attrs["axis"]
        axes = set(range(rank)) if axis is None else {axis % rank}
    j = 0
    for i in range(rank):
        if i in axes:
            b.freeze(x, i, f"reduced by {short(node)}")
            j += 1 if node.attrs["keepdim"] else 0
        else:
            b.same(x, i, out, j)
            j += 1


@coupling("softmax", "log_softmax")
def _softmax(node: Node, b: AtomBuilder) -> None:
    same_leading(b, node.inputs[0], node.output, node.output.type.rank)

