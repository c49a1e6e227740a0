"""Converters for reductions and softmax."""

from __future__ import annotations

from graphopt.frontend.torch_export import converter
from graphopt.ir.dtypes import DType
from graphopt.ops._infer import norm_axis


def _axes(x, dim):
    if dim is None:
        return ()
    if isinstance(dim, int):
        dim = [dim]
    return tuple(norm_axis(d, x.type.rank) for d in dim)


def _reducer(op):
    def convert(ctx, x, dim=None, keepdim=False, *, dtype=None):
        if dtype is not None and DType.from_torch(dtype) != x.dtype:
            x = ctx.emit("cast", [x], {"dtype": DType.from_torch(dtype)})
        if x.type.rank == 0:
            return x
        return ctx.emit(op, [x], {"axes": _axes(x, dim), "keepdim": keepdim})

    return convert


for _aten, _op in {"sum": "sum", "mean": "mean", "amax": "amax", "amin": "amin",
                   "logsumexp": "logsumexp", "all": "all", "any": "any"}.items():
    for _overload in ("default", "dim_IntList", "dim", "dims", "dim_int"):
        converter(f"aten.{_aten}.{_overload}")(_reducer(_op))


@converter("aten.prod.dim_int", "aten.prod.default")
def _prod(ctx, x, dim=None, keepdim=False, dtype=None):
    return _reducer("prod")(ctx, x, dim, keepdim, dtype=dtype)


@converter("aten.max.default", "aten.min.default")
def _max_all(ctx, x):
    op = "amax" if "max" in str(ctx.fx_node.target) else "amin"
    return ctx.emit(op, [x], {"axes": (), "keepdim": False})


@converter("aten.max.dim", "aten.min.dim")
def _max_dim(ctx, x, dim, keepdim=False):
    is_max = "max" in str(ctx.fx_node.target)
    axis = norm_axis(dim, x.type.rank)
    values = ctx.emit("amax" if is_max else "amin", [x], {"axes": (axis,), "keepdim": keepdim})
    indices = ctx.emit("argmax" if is_max else "argmin", [x], {"axis": axis, "keepdim": keepdim})
    return (values, indices)


@converter("aten.argmax.default", "aten.argmin.default")
def _argmax(ctx, x, dim=None, keepdim=False):
    op = "argmax" if "argmax" in str(ctx.fx_node.target) else "argmin"
    axis = None if dim is None else norm_axis(dim, x.type.rank)
    return ctx.emit(op, [x], {"axis": axis, "keepdim": keepdim})


@converter("aten.var.correction", "aten.std.correction")
def _var(ctx, x, dim=None, *, correction=None, keepdim=False):
    op = "var" if "var" in str(ctx.fx_node.target) else "std"
    correction = 1.0 if correction is None else float(correction)
    return ctx.emit(op, [x], {"axes": _axes(x, dim), "keepdim": keepdim,
                              "correction": correction})


@converter("aten.var_mean.correction")
def _var_mean(ctx, x, dim=None, *, correction=None, keepdim=False):
    correction = 1.0 if correction is None else float(correction)
    axes = _axes(x, dim)
    var = ctx.emit("var", [x], {"axes": axes, "keepdim": keepdim, "correction": correction})
    mean = ctx.emit("mean", [x], {"axes": axes, "keepdim": keepdim})
    return (var, mean)


@converter("aten.linalg_vector_norm.default")
def _vector_norm(ctx, x, ord=2, dim=None, keepdim=False, *, dtype=None):
    axes = _axes(x, dim)
    if ord == 2:
        sq = ctx.emit("mul", [x, x])
        return ctx.emit("sqrt", [ctx.emit("sum", [sq], {"axes": axes, "keepdim": keepdim})])
    if ord == 1:
        return ctx.emit("sum", [ctx.emit("abs", [x])], {"axes": axes, "keepdim": keepdim})
    if ord == float("inf"):
        return ctx.emit("amax", [ctx.emit("abs", [x])], {"axes": axes, "keepdim": keepdim})
    p = ctx.as_value(float(ord), x)
    powered = ctx.emit("pow", [ctx.emit("abs", [x]), p])
    total = ctx.emit("sum", [powered], {"axes": axes, "keepdim": keepdim})
    return ctx.emit("pow", [total, ctx.as_value(1.0 / float(ord), x)])


@converter("aten.softmax.int", "aten._softmax.default", "aten._safe_softmax.default")
def _softmax(ctx, x, dim, dtype_or_half=None):
    if x.type.rank == 0:
        return ctx.emit("softmax", [ctx.emit("unsqueeze", [x], {"axis": 0})], {"axis": 0})
    return ctx.emit("softmax", [x], {"axis": norm_axis(dim, x.type.rank)})


@converter("aten.log_softmax.int", "aten._log_softmax.default")
def _log_softmax(ctx, x, dim, dtype_or_half=None):
    return ctx.emit("log_softmax", [x], {"axis": norm_axis(dim, x.type.rank)})


@converter("aten.var.dim", "aten.std.dim", "aten.var.default", "aten.std.default")
def _var_unbiased(ctx, x, dim=None, unbiased=True, keepdim=False):
    if isinstance(dim, bool):  # var.default(x, unbiased)
        dim, unbiased = None, dim
    return _var(ctx, x, dim, correction=1.0 if unbiased else 0.0, keepdim=keepdim)
