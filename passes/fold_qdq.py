"""fold-qdq: quantize/dequantize (QDQ) form -> integer ops; redundant Q/DQ pairs removed.

Static quantization (``graphopt.quantize(graph, "static", ...)``) first writes the QDQ form: a
float conv / linear whose input and weight are ``dequantize_linear`` of integer tensors and whose
output is ``quantize_linear``'d. This pass turns each such unit into one integer op.

Before -> after (a fused conv + ReLU between two quantized tensors)::

    %xd: f32[1, 8, 6, 6] = dequantize_linear(%xq, %xs, %xz)
    %wd: f32[16, 8, 3, 3] = dequantize_linear(%w_q, %w_scale, None) {axis=0}
    %y: f32[1, 16, 6, 6] = fused_conv(%xd, %wd, %b, None) {activation="relu", ...}
    %yq: u8[1, 16, 6, 6] = quantize_linear(%y, %ys, %yz) {dtype="u8"}
  ->
    %yq: u8[1, 16, 6, 6] = qconv(%xq, %xs, %xz, %w_q, %w_scale, %b, %ys, %yz)
                           {activation="relu", ...}

Rules:

* ``qdq-conv`` / ``qdq-linear``: ``Q(conv|fused_conv|linear|fused_linear(DQ(x), DQ(w), b))``
  -> ``qconv`` / ``qlinear`` with a u8 result. The activation stays inside the integer op.
* ``dq-conv`` / ``dq-linear``: the same without the final Q (the result is consumed as float,
  e.g. logits) -> ``qconv`` / ``qlinear`` with an f32 result.
* ``qdq-pair``: ``Q(DQ(q, s, z), s, z)`` -> ``q`` (equal parameters and dtype).
* ``qdq-requantize``: ``Q(DQ(q, s1, z1), s2, z2)`` with different parameters ->
  ``requantize_linear(q, s1, z1, s2, z2)``.
* ``qdq-through-OP`` for OP in reshape, permute, squeeze, unsqueeze, max_pool, pad:
  ``Q(OP(DQ(q, s, z)), s, z)`` -> ``OP(q)``: the op runs on the u8 codes (a zero ``pad``
  pads with the code of real zero, ``z``).

Why it is sound: the integer ops are defined (graphopt/ops/quant_int.py) as exactly the
dequantize -> float op -> quantize chain, with the integer dot products computed exactly
instead of in float (the float chain rounds its f32 sums; the integer op does not, which is
the point). ``Q(DQ(q)) == q`` for equal parameters because ``(q - z) * s / s`` is within an
ulp of the integer ``q - z`` and rounds back to it. Reshape/permute/squeeze/unsqueeze move
values without arithmetic (a zero pad adds real zeros, whose code is the zero point), and
max_pool commutes with the non-decreasing maps Q and DQ
(padding cells are never the maximum of a window). Only per-tensor u8 activations and
per-output-channel symmetric i8 weights (zero point 0, axis 0) fold; a unit with a residual
operand does not (the integer ops have none; the static quantizer unfuses residuals first), nor
one whose float result has other users (it would be computed twice).
"""

from __future__ import annotations

import numpy as np

from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Value
from graphopt.ops.quant import QDQ_TRANSPARENT_OPS
from graphopt.rewrite import Const, Match, RewritePass, Rule, Var, match_at, op
from graphopt.transform.registry import register_pass

TRANSPARENT_OPS = QDQ_TRANSPARENT_OPS  # the ops Q/DQ moves through (graphopt/ops/quant.py)


def _dq_activation(prefix: str = "x"):
    return op.dequantize_linear(Var(f"{prefix}q"), Const(f"{prefix}s"),
                                Var(f"{prefix}z", optional=True), axis=None)


def _dq_weight():
    return op.dequantize_linear(Const("wq"), Const("ws"), Var("wz", optional=True), axis=0)


def _unit(kind: str):
    """conv / linear or its fused form (no residual), over DQ'd input and weight."""
    x, w, b = _dq_activation(), _dq_weight(), Var("b", optional=True)
    plain = getattr(op, kind)(x, w, b).named("unit")
    fused = getattr(op, f"fused_{kind}")(x, w, b, None).named("unit")
    return plain | fused


def _same(a: Value | None, b: Value | None, dtype: DType) -> bool:
    """Equal constant quantization parameters (an absent zero point is 0 of ``dtype``)."""
    da = np.zeros((), dtype.numpy) if a is None else a.data
    db = np.zeros((), dtype.numpy) if b is None else b.data
    return da is not None and db is not None and da.shape == db.shape and np.array_equal(da, db)


def _check_scalar_const(v: Value | None, dtype: DType, what: str) -> str | None:
    if v is None:
        return None
    if v.kind != "const" or v.dtype is not dtype or v.type.rank != 0:
        return f"{what} %{v.name} must be a {dtype} scalar constant, got {v.type}"
    return None


class _FoldUnit(Rule):
    """Base of the conv / linear folds; ``quantized`` says whether a Q follows."""

    allow_shared = True  # a DQ'd input shared by several units stays for the others

    def __init__(self, kind: str, quantized: bool):
        self.kind = kind
        self.target = "qconv" if kind == "conv" else "qlinear"
        self.quantized = quantized
        self.name = f"{'qdq' if quantized else 'dq'}-{kind}"
        super().__init__()

    def pattern(self):
        unit = _unit(self.kind)
        if not self.quantized:
            return unit
        return op.quantize_linear(unit, Const("ys"), Var("yz", optional=True), axis=None,
                                  dtype="u8")

    def check(self, match: Match) -> str | None:
        unit = match.nodes["unit"]
        xq, wq, ws, b = match["xq"], match["wq"], match["ws"], match["b"]
        if xq.dtype is not DType.uint8:
            return f"activation %{xq.name} is {xq.dtype}; qconv/qlinear take u8 activations"
        for v, dtype, what in ((match["xs"], DType.float32, "x_scale"),
                               (match["xz"], DType.uint8, "x_zp")):
            reason = _check_scalar_const(v, dtype, what)
            if reason:
                return reason
        if wq.dtype is not DType.int8:
            return f"weight %{wq.name} is {wq.dtype}, not i8"
        if ws.dtype is not DType.float32 or ws.type.rank != 1 or ws.shape[0] != wq.shape[0]:
            return f"w_scale %{ws.name} must be f32[{wq.shape[0]}] (per output channel)"
        if match["wz"] is not None and np.any(match.const("wz")):
            return f"weight zero point %{match['wz'].name} is not 0 (weights are symmetric)"
        if b is not None and (b.dtype is not DType.float32 or b.type.rank != 1):
            return f"bias %{b.name} must be f32 1-D, got {b.type}"
        if self.kind == "conv" and unit.inputs[0].type.rank != 4:
            return f"{unit.describe()} is not a 2-D conv (qconv is NCHW)"
        out = unit.outputs[0]
        if self.quantized:
            if len(out.uses) != 1 or out.is_graph_output:
                return f"%{out.name} has other users besides the quantize_linear"
            return _check_scalar_const(match["ys"], DType.float32, "y_scale") or \
                _check_scalar_const(match["yz"], DType.uint8, "y_zp")
        users = out.users
        quantized_by = op.quantize_linear(Var("y"), Var("s"), Var("z", optional=True))
        if len(users) == 1 and not out.is_graph_output and match_at(quantized_by, users[0]):
            return f"%{out.name} is quantized by {users[0].describe()}: qdq-{self.kind} folds it"
        return None

    def rewrite(self, match: Match, rw):
        unit = match.nodes["unit"]
        attrs = {k: v for k, v in unit.attrs.items() if k in ("stride", "padding", "dilation",
                                                              "groups", "activation",
                                                              "activation_params")}
        xz = match["xz"] if match["xz"] is not None else rw.constant(
            np.zeros((), np.uint8), "x_zp")
        ys = match["ys"] if self.quantized else None
        yz = match["yz"] if self.quantized else None
        if self.quantized and yz is None:
            yz = rw.constant(np.zeros((), np.uint8), "y_zp")
        return getattr(rw.op, self.target)(
            match["xq"], match["xs"], xz, match["wq"], match["ws"], match["b"], ys, yz,
            name=f"{unit.outputs[0].name}_int", **attrs)


class _QdqPair(Rule):
    """Q(DQ(q, s1, z1), s2, z2), per tensor."""

    allow_shared = True  # a DQ with other users stays; nothing is computed twice

    def pattern(self):
        dq = op.dequantize_linear(Var("q"), Const("s1"), Var("z1", optional=True), axis=None)
        return op.quantize_linear(dq, Const("s2"), Var("z2", optional=True), axis=None)

    def params(self, match: Match):
        q = match["q"]
        out = DType.parse(match.root.attrs["dtype"])
        same = (out == q.dtype and _same(match["s1"], match["s2"], DType.float32)
                and _same(match["z1"], match["z2"], q.dtype))
        return q, out, same

    def check(self, match):
        q = match["q"]
        if q.dtype not in (DType.uint8, DType.int8):
            return f"%{q.name} is {q.dtype}, not u8/i8"
        for name in ("z1", "z2"):
            v = match[name]
            if v is not None and (v.kind != "const" or v.type.rank != 0):
                return f"zero point %{v.name} is not a scalar constant"
        if match["s1"].type.rank != 0 or match["s2"].type.rank != 0:
            return "per-channel scales"
        return None


class QdqPair(_QdqPair):
    """Q(DQ(q, s, z), s, z) -> q."""

    name = "qdq-pair"

    def check(self, match):
        reason = super().check(match)
        if reason is None and not self.params(match)[2]:
            return "the Q and DQ parameters differ (qdq-requantize handles it)"
        return reason

    def rewrite(self, match, rw):
        return match["q"]


class QdqRequantize(_QdqPair):
    """Q(DQ(q, s1, z1), s2, z2) -> requantize_linear(q, s1, z1, s2, z2)."""

    name = "qdq-requantize"

    def check(self, match):
        reason = super().check(match)
        if reason is None and self.params(match)[2]:
            return "equal parameters (qdq-pair removes the pair)"
        return reason

    def rewrite(self, match, rw):
        return rw.op.requantize_linear(match["q"], match["s1"], match["z1"], match["s2"],
                                       match["z2"], dtype=match.root.attrs["dtype"])


class QdqThrough(Rule):
    """Q(OP(DQ(q, s, z)), s, z) -> OP(q) for a data-movement op or max_pool."""

    allow_shared = True

    def __init__(self, op_name: str):
        self.op_name = op_name
        self.name = f"qdq-through-{op_name.replace('_', '-')}"
        super().__init__()

    def pattern(self):
        dq = op.dequantize_linear(Var("q"), Const("s1"), Var("z1", optional=True), axis=None)
        inner = op(self.op_name, dq).named("inner")
        return op.quantize_linear(inner, Const("s2"), Var("z2", optional=True), axis=None)

    def check(self, match):
        q, inner = match["q"], match.nodes["inner"]
        if q.dtype not in (DType.uint8, DType.int8):
            return f"%{q.name} is {q.dtype}, not u8/i8"
        out = inner.outputs[0]
        if len(out.uses) != 1 or out.is_graph_output:
            return f"%{out.name} has other users besides the quantize_linear"
        same = (DType.parse(match.root.attrs["dtype"]) == q.dtype
                and _same(match["s1"], match["s2"], DType.float32)
                and _same(match["z1"], match["z2"], q.dtype))
        if not same:
            return "the DQ and Q around it have different parameters"
        if float(match.const("s1")) <= 0:
            return "non-positive scale: Q and DQ would not be monotone"
        # an op with a fill ``value`` (pad) writes new cells: on the codes that is the zero point
        if "value" in inner.attrs and (inner.attrs.get("mode") != "constant"
                                       or inner.attrs["value"] != 0.0):
            return "only a zero constant pad maps to the codes (padding with the zero point)"
        return None

    def rewrite(self, match, rw):
        inner = match.nodes["inner"]
        attrs = dict(inner.attrs)
        if "value" in attrs:  # fill with the code of real zero
            zp = match["z1"]
            attrs["value"] = 0.0 if zp is None else float(zp.data)
        return getattr(rw.op, self.op_name)(match["q"], name=f"{inner.outputs[0].name}_u8",
                                            **attrs)


RULES = (
    _FoldUnit("conv", True),
    _FoldUnit("linear", True),
    _FoldUnit("conv", False),
    _FoldUnit("linear", False),
    QdqPair(),
    QdqRequantize(),
    *(QdqThrough(name) for name in TRANSPARENT_OPS),
)


@register_pass("fold-qdq")
class FoldQdq(RewritePass):
    """QDQ-form conv/linear -> qconv/qlinear; Q(DQ) pairs removed or requantized."""

    RULES = RULES
