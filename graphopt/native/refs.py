"""Buffers and tensor views of a native plan.

A :class:`Buffer` is a run of bytes: an arena slot, a constant, a graph input or an output of
the call. A :class:`TensorRef` is a strided view into a buffer (byte offset, shape, strides in
elements, dtype), which is what kernels receive. View ops (reshape, permute, slice, select,
split, expand, squeeze, unsqueeze) only build new TensorRefs over the same buffer: no copy is
planned unless a consumer needs contiguous data and the view is not.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from graphopt.ir.dtypes import DType

SPACE_ARENA, SPACE_CONST, SPACE_INPUT, SPACE_OUTPUT = 0, 1, 2, 3
SPACE_NAMES = {SPACE_ARENA: "arena", SPACE_CONST: "const", SPACE_INPUT: "input",
               SPACE_OUTPUT: "output"}


@dataclass(eq=False)
class Buffer:
    """Bytes that steps read and write.

    Attributes:
        key: unique id within the plan.
        nbytes: size.
        space: SPACE_ARENA / SPACE_CONST / SPACE_INPUT / SPACE_OUTPUT.
        index: constant / input / output index (arena buffers: -1).
        first / last: indices of the first and last step touching the buffer (None: unused).
        pending_end: index of the last *node* that reads a value living in this buffer (graph
            outputs: infinity). A node may overwrite the buffer in place only after that.
        offset: byte offset in the arena, set by the memory plan.
        label: the value it was created for (for plan dumps).
    """

    key: int
    nbytes: int
    space: int = SPACE_ARENA
    index: int = -1
    first: int | None = None
    last: int | None = None
    pending_end: float = -1
    offset: int = 0
    label: str = ""

    def touch(self, step: int) -> None:
        self.first = step if self.first is None else min(self.first, step)
        self.last = step if self.last is None else max(self.last, step)


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(strides))


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True, eq=False)
class TensorRef:
    """A strided view of a buffer.

    Element ``idx`` lives at ``buffer + offset + sum(idx * strides) * itemsize``.
    """

    buffer: Buffer
    offset: int  # bytes
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # elements
    dtype: DType
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def numel(self) -> int:
        return numel(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def is_contiguous(self) -> bool:
        expected = contiguous_strides(self.shape)
        return all(d == 1 or s == e for d, s, e in zip(self.shape, self.strides, expected))

    def with_view(self, offset: int, shape, strides) -> TensorRef:
        return TensorRef(self.buffer, offset, tuple(shape), tuple(strides), self.dtype)

    def reshaped(self, shape) -> TensorRef | None:
        """A view with ``shape`` if this view's strides allow it without a copy, else None."""
        shape = tuple(shape)
        if self.is_contiguous:
            return self.with_view(self.offset, shape, contiguous_strides(shape))
        strides = view_strides(self.shape, self.strides, shape)
        return None if strides is None else self.with_view(self.offset, shape, strides)

    def permuted(self, perm) -> TensorRef:
        return self.with_view(self.offset, [self.shape[p] for p in perm],
                              [self.strides[p] for p in perm])

    def sliced(self, axis: int, start: int, length: int, step: int = 1) -> TensorRef:
        shape, strides = list(self.shape), list(self.strides)
        offset = self.offset + start * strides[axis] * self.itemsize
        shape[axis] = length
        strides[axis] *= step
        return self.with_view(offset, shape, strides)

    def selected(self, axis: int, index: int) -> TensorRef:
        offset = self.offset + index * self.strides[axis] * self.itemsize
        shape = self.shape[:axis] + self.shape[axis + 1:]
        strides = self.strides[:axis] + self.strides[axis + 1:]
        return self.with_view(offset, shape, strides)

    def expanded(self, shape) -> TensorRef:
        """Broadcast view to ``shape`` (size-1 dims and new leading dims get stride 0)."""
        shape = tuple(shape)
        lead = len(shape) - len(self.shape)
        strides = [0] * lead
        for d_in, s, d_out in zip(self.shape, self.strides, shape[lead:]):
            strides.append(s if d_in == d_out else 0)
        return self.with_view(self.offset, shape, strides)

    def matrix(self) -> tuple[int, int, int, int] | None:
        """(rows, cols, row_stride, col_stride) when the leading dims collapse into one row
        dimension with a single stride (what GEMM operands need), else None."""
        if not self.shape:
            return None
        cols, col_stride = self.shape[-1], self.strides[-1]
        lead = [(d, s) for d, s in zip(self.shape[:-1], self.strides[:-1]) if d != 1]
        rows = numel(tuple(d for d, _ in lead))
        if not lead:
            return rows, cols, cols * max(col_stride, 1), col_stride
        # The lead dims must be one arithmetic progression: stride[i] = stride[i+1] * dim[i+1].
        for (_, s0), (d1, s1) in itertools.pairwise(lead):
            if s0 != s1 * d1:
                return None
        return rows, cols, lead[-1][1], col_stride


def view_strides(shape, strides, new_shape) -> tuple[int, ...] | None:
    """Strides viewing (shape, strides) as new_shape without copying, or None (torch's rule:
    each group of old dims merged or split must be contiguous within itself)."""
    old = [(d, s) for d, s in zip(shape, strides) if d != 1]
    new_strides = [0] * len(new_shape)
    oi = 0
    ni = 0
    new_dims = list(new_shape)
    while ni < len(new_dims):
        if new_dims[ni] == 1:
            new_strides[ni] = 1
            ni += 1
            continue
        if oi >= len(old):
            return None
        # Take old dims until their product covers the next new dims' product.
        chunk_old = [old[oi]]
        size_old = old[oi][0]
        oi += 1
        chunk_new = [ni]
        size_new = new_dims[ni]
        ni += 1
        while size_old != size_new:
            if size_old < size_new:
                if oi >= len(old):
                    return None
                chunk_old.append(old[oi])
                size_old *= old[oi][0]
                oi += 1
            else:
                while ni < len(new_dims) and new_dims[ni] == 1:
                    new_strides[ni] = 1
                    ni += 1
                if ni >= len(new_dims):
                    return None
                chunk_new.append(ni)
                size_new *= new_dims[ni]
                ni += 1
        for (_, s0), (d1, s1) in itertools.pairwise(chunk_old):
            if s0 != s1 * d1:
                return None
        stride = chunk_old[-1][1]
        for j in reversed(chunk_new):
            new_strides[j] = stride
            stride *= new_dims[j]
    if oi != len(old):
        return None
    return tuple(new_strides)


def collapse_dims(shape, *stride_lists) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dims and merge adjacent dims that are contiguous with each other in every
    stride list, so loops over the view run as few, long rows as possible."""
    dims = [(d, [s[i] for s in stride_lists]) for i, d in enumerate(shape) if d != 1]
    if not dims:
        return [1], [[0] for _ in stride_lists]
    out_shape = [dims[0][0]]
    out_strides = [[s] for s in dims[0][1]]
    for d, ss in dims[1:]:
        mergeable = all(os[-1] == s * d for os, s in zip(out_strides, ss))
        if mergeable:
            out_shape[-1] *= d
            for os, s in zip(out_strides, ss):
                os[-1] = s
        else:
            out_shape.append(d)
            for os, s in zip(out_strides, ss):
                os.append(s)
    return out_shape, out_strides
