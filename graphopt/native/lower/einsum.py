"""einsum -> views, "copy", "reduce" and batched "gemm" steps ("matmul_wide" in float64).

Each operand becomes a view with one axis per distinct letter (an ellipsis becomes placeholder
letters aligned from the right; a repeated letter, a diagonal, is one axis whose stride is the
sum of the repeated ones; a size-1 axis broadcast against a larger one gets stride 0). Letters
that no later operand and not the output use are summed out ("reduce") as soon as possible;
operands are then contracted left to right: [batch, free_a, contracted] x [batch, contracted,
free_b] is one batched GEMM reading both sides through strides (copied first only when the
letter groups cannot be merged into one stride each). The result is permuted into the output's
letter order by the last copy (or the GEMM writes the output directly when the order agrees).
"""

from __future__ import annotations

from graphopt.ir.dtypes import DType
from graphopt.native.codes import ACTIVATION_CODES, DTYPE_CODES, REDUCE_CODES
from graphopt.native.refs import contiguous_strides, numel
from graphopt.ops.onnx_extra import _parse_einsum
from graphopt.ops.registry import register_lowering


class _Term:
    """An operand view with one axis per letter (``letters`` in axis order)."""

    def __init__(self, ref, letters: str):
        self.ref, self.letters = ref, letters


def _expand_ellipsis(terms, rhs, ranks):
    n_ell = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks) if "..." in t),
                default=0)
    fill = "".join(chr(0x3B1 + i) for i in range(n_ell))  # placeholder letters: α, β, ...
    out_terms = []
    for term, rank in zip(terms, ranks):
        if "..." in term:
            k = rank - len(term.replace("...", ""))
            term = term.replace("...", fill[n_ell - k:])
        out_terms.append(term)
    return out_terms, rhs.replace("...", fill)


def _operand(ctx, i: int, term: str, sizes: dict[str, int]) -> _Term:
    ref = ctx.ref(i)
    if len(term) != len(ref.shape):
        ctx.invalid(f"einsum term '{term}' does not match operand {i} of shape {ref.shape}")
    letters, shape, strides = "", [], []
    for c, d, s in zip(term, ref.shape, ref.strides):
        if c in letters:  # a diagonal: walk both axes at once
            j = letters.index(c)
            strides[j] += s
            continue
        letters += c
        shape.append(sizes[c])
        strides.append(s if d == sizes[c] else 0)  # size 1 broadcast against the others
    return _Term(ref.with_view(ref.offset, shape, strides), letters)


def _materialize(ctx, ref, label: str):
    """A contiguous copy of a view."""
    tmp = ctx.temp(ref.shape, ref.dtype, label)
    if tmp.numel:
        ctx.copy(tmp, ref)
    return tmp


def _permute(term: _Term, order: str):
    return term.ref.permuted([term.letters.index(c) for c in order])


def _merged(ctx, ref, groups: list[int], label: str):
    """``ref`` viewed as len(groups) axes of the given group sizes (copied when its strides
    cannot express that)."""
    bounds, start = [], 0
    for n in groups:
        bounds.append((start, start + n))
        start += n
    shape = tuple(numel(ref.shape[a:b]) for a, b in bounds)
    view = ref.reshaped(shape)
    if view is None:
        view = _materialize(ctx, ref, label).reshaped(shape)
    return view


def _sum_out(ctx, term: _Term, keep: str, label: str) -> _Term:
    """Sum ``term`` over its letters not in ``keep``."""
    drop = "".join(c for c in term.letters if c not in keep)
    if not drop:
        return term
    kept = "".join(c for c in term.letters if c in keep)
    src = _materialize(ctx, _permute(term, kept + drop), f"{label}.moved")
    out = ctx.temp(tuple(src.shape[: len(kept)]), src.dtype, f"{label}.sum")
    ctx.emit("reduce", [out, src], [REDUCE_CODES["sum"], DTYPE_CODES[src.dtype],
                                    numel(out.shape), numel(src.shape[len(kept):]), 1], [0.0])
    return _Term(out, kept)


def _contract(ctx, a: _Term, b: _Term, needed: str, dest=None, label: str = "") -> _Term:
    batch = "".join(c for c in a.letters if c in b.letters and c in needed)
    summed = "".join(c for c in a.letters if c in b.letters and c not in needed)
    free_a = "".join(c for c in a.letters if c not in b.letters)
    free_b = "".join(c for c in b.letters if c not in a.letters)
    av = _merged(ctx, _permute(a, batch + free_a + summed),
                 [len(batch), len(free_a), len(summed)], f"{label}.a")
    bv = _merged(ctx, _permute(b, batch + summed + free_b),
                 [len(batch), len(summed), len(free_b)], f"{label}.b")
    nb, m, k = av.shape
    n = bv.shape[2]
    letters = batch + free_a + free_b
    sizes = {c: d for t in (a, b) for c, d in zip(t.letters, t.ref.shape)}
    shape = tuple(sizes[c] for c in letters)
    dtype = av.dtype
    out = dest if dest is not None else ctx.temp(shape, dtype, f"{label}.prod")
    layout = [1, nb, av.strides[0], bv.strides[0], m, n, k, av.strides[1], av.strides[2],
              bv.strides[1], bv.strides[2]]
    if dtype == DType.float64:  # exact float64 sums (csrc/rt_wide.cpp)
        ctx.emit("matmul_wide", [out, av, bv], [DTYPE_CODES[dtype], *layout])
    else:
        ctx.emit("gemm", [out, av, bv, None, None],
                 [*layout, ACTIVATION_CODES["none"], 0, 0], [1.0, 0.0, 0.0])
    return _Term(out.with_view(out.offset, shape, contiguous_strides(shape)), letters)


@register_lowering("native", "einsum")
def lower_einsum(ctx) -> None:
    dtype = ctx.out_dtype(0)
    if dtype not in (DType.float32, DType.float64) or any(
            ctx.in_dtype(i) != dtype for i in range(ctx.num_inputs)):
        ctx.unsupported("einsum in a dtype other than float32 or float64")
    ranks = [len(ctx.in_shape(i)) for i in range(ctx.num_inputs)]
    terms, rhs = _parse_einsum(ctx.attrs["equation"], ranks)
    terms, rhs = _expand_ellipsis(terms, rhs, ranks)
    sizes: dict[str, int] = {}
    for i, term in enumerate(terms):
        for c, d in zip(term, ctx.in_shape(i)):
            sizes[c] = max(sizes.get(c, 1), d)
    if any(d == 0 for d in sizes.values()):
        ctx.unsupported("einsum with an empty axis")
    out = ctx.output(0)
    operands = [_operand(ctx, i, t, sizes) for i, t in enumerate(terms)]

    def needed_after(j: int) -> str:
        return rhs + "".join(t.letters for t in operands[j + 1:])

    cur = _sum_out(ctx, operands[0], needed_after(0), f"{ctx.name}.0")
    for j in range(1, len(operands)):
        nxt = _sum_out(ctx, operands[j], needed_after(j) + cur.letters, f"{ctx.name}.{j}")
        cur = _sum_out(ctx, cur, needed_after(j) + nxt.letters, f"{ctx.name}.{j}c")
        needed = needed_after(j)
        batch = "".join(c for c in cur.letters if c in nxt.letters and c in needed)
        order = batch + "".join(c for c in cur.letters if c not in nxt.letters) + "".join(
            c for c in nxt.letters if c not in cur.letters)
        direct = j == len(operands) - 1 and order == rhs
        cur = _contract(ctx, cur, nxt, needed, dest=out if direct else None,
                        label=f"{ctx.name}.{j}")
        if direct:
            return
    cur = _sum_out(ctx, cur, rhs, f"{ctx.name}.out")
    ctx.copy(out, _permute(cur, rhs))
