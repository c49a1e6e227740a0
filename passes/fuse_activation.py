"""fuse-activation: conv / linear / matmul + residual add + activation -> one fused op.

Before -> after (a ResNet bottleneck's last conv, after fold-batchnorm)::

    graph main(%x: f32[1, 8, 4, 4], %w: f32[8, 8, 1, 1],  graph main(%x: f32[1, 8, 4, 4], ...) {
               %b: f32[8], %skip: f32[1, 8, 4, 4]) {         %y: f32[1, 8, 4, 4] = fused_conv(
      %c: f32[1, 8, 4, 4] = conv(%x, %w, %b)                   %x, %w, %b, %skip)
      %s: f32[1, 8, 4, 4] = add(%c, %skip)                     {activation="relu", ...}
      %y: f32[1, 8, 4, 4] = relu(%s)                         return %y
      return %y                                            }
    }

Rules, for each producer P in conv, linear, matmul (``fused_conv``, ``fused_linear``,
``fused_matmul`` for the fused forms):

* ``P-residual``: ``add(P(...), r)`` where r has exactly P's result type (a skip connection,
  not a broadcast bias) -> ``fused_P(..., residual=r)``; a fused P qualifies while it has no
  residual and no activation yet (the activation would have to come after the add).
* ``P-activation``: ``act(P(...))`` -> ``fused_P(...){activation}`` for act in relu, clamp
  (relu6 = clamp(0, 6), hardtanh), leaky_relu, gelu (both forms), silu, sigmoid, tanh,
  hardswish, hardsigmoid; a fused P qualifies while its activation is "none" (its residual
  stays: the add comes before the activation).

Nodes are visited in graph order, so ``relu(add(conv, skip))`` first becomes
``relu(fused_conv(.., skip))`` and then one ``fused_conv(.., skip){relu}``. Sound because the
fused ops compute ``act(P(...) + residual)`` with the same torch functions in the same order
(graphopt/ops/fused.py); P's result must have no other user (else it would be computed twice -
the rewriter's escape check refuses such matches).
"""

from __future__ import annotations

from graphopt.ir.graph import Node, Value
from graphopt.ops.registry import all_ops, get_op
from graphopt.rewrite import Match, RewritePass, Rule, Var, op
from graphopt.transform.registry import register_pass

# The ops that declare a fused-epilogue form (OpDef.epilogue): relu, clamp, gelu, silu, ...
_ACTIVATION_OPS = tuple(name for name, d in all_ops().items() if d.epilogue is not None)


def epilogue_of(node: Node) -> tuple[str, tuple[float, ...]] | str:
    """(activation, activation_params) of an activation node, or why it has none."""
    epilogue = get_op(node.op).epilogue
    if epilogue is None:
        return f"{node.op} has no fused-epilogue form"
    return epilogue(node.attrs)


def _split(node: Node) -> tuple[list[Value | None], Value | None, dict]:
    """(x, weight, bias), residual and attributes of a producer, plain or fused."""
    ins = list(node.inputs) + [None] * (4 - len(node.inputs))
    spec = get_op(node.op).weights
    if spec.bias is None:  # plain matmul: no bias slot, no epilogue attrs
        return [ins[0], ins[1], None], None, {}
    return ins[:3], ins[3], dict(node.attrs)


class _Epilogue(Rule):
    """Base: an epilogue rule for producer ``kind`` (conv, linear or matmul)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.fused = f"fused_{kind}"
        super().__init__()

    def producer(self, allow_residual: bool):
        """The plain producer or its fused form without an activation (and residual)."""
        x, w = Var("x"), Var("w")
        plain = (
            op.matmul(x, w)
            if self.kind == "matmul"
            else getattr(op, self.kind)(x, w, Var("b", optional=True))
        )
        residual = Var("residual0", optional=True) if allow_residual else None
        fused = getattr(op, self.fused)(x, w, Var("b", optional=True), residual, activation="none")
        return plain.named("producer") | fused.named("producer")

    def check_float(self, match: Match) -> str | None:
        out = match.nodes["producer"].outputs[0]
        if not out.dtype.is_floating:
            return f"%{out.name} is {out.dtype}; fused epilogues are float only"
        return None

    def build(self, match: Match, rw, residual: Value | None, epilogue: tuple | None):
        operands, old_residual, attrs = _split(match.nodes["producer"])
        if epilogue is not None:
            attrs["activation"], attrs["activation_params"] = epilogue
        residual = residual if residual is not None else old_residual
        return getattr(rw.op, self.fused)(*operands, residual, **attrs)


class ActivationEpilogue(_Epilogue):
    """act(P(...)) -> fused_P(...){activation}."""

    def __init__(self, kind: str):
        self.name = f"{kind}-activation"
        super().__init__(kind)

    def pattern(self):
        inner = self.producer(allow_residual=True)
        alternatives = [getattr(op, name)(inner) for name in _ACTIVATION_OPS]
        pattern = alternatives[0]
        for alt in alternatives[1:]:
            pattern = pattern | alt
        return pattern

    def check(self, match):
        epilogue = epilogue_of(match.root)
        if isinstance(epilogue, str):
            return epilogue
        producer = match.nodes["producer"].outputs[0]
        if not match.root.output.type.same_as(producer.type):
            return f"{match.root.op} changes the type {producer.type}"
        return self.check_float(match)

    def rewrite(self, match, rw):
        return self.build(match, rw, None, epilogue_of(match.root))


class ResidualEpilogue(_Epilogue):
    """add(P(...), r) with r of P's result type -> fused_P(..., residual=r)."""

    def __init__(self, kind: str):
        self.name = f"{kind}-residual"
        super().__init__(kind)

    def pattern(self):
        return op.add(self.producer(allow_residual=False), Var("residual"))

    def check(self, match):
        producer = match.nodes["producer"].outputs[0]
        r = match["residual"]
        if r is producer:
            return f"the residual is %{r.name} itself"
        if not (r.type.same_as(producer.type) and match.root.output.type.same_as(producer.type)):
            return (
                f"%{r.name}: {r.type} is not a residual of the result type {producer.type} "
                f"(a broadcast bias is not fused)"
            )
        return self.check_float(match)

    def rewrite(self, match, rw):
        return self.build(match, rw, match["residual"], None)


@register_pass("fuse-activation")
class FuseActivation(RewritePass):
    """conv / linear / matmul + residual add + activation -> fused_conv / fused_linear / ..."""

    RULES = tuple(
        rule(kind)
        for kind in ("conv", "linear", "matmul")
        for rule in (ResidualEpilogue, ActivationEpilogue)
    )
