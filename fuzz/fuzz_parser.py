"""Fuzz harness: the IR text parser (``graphopt.parse``), then print and parse again.

Whatever the bytes, parsing must end in a graph or a ``GraphoptError`` (a ``ParseError`` with
line and column), quickly, with nothing evaluated. A graph that parses must also verify, print,
and parse back to the same text: a failure there is a finding too (an ``AssertionError``).
"""

from __future__ import annotations

from graphopt.errors import GraphoptError, InternalError
from graphopt.ir.parser import parse_graph

SEED_DIR = "fuzz/corpus/parser"
MAX_INPUT = 1 << 16


def test_one_input(data: bytes) -> None:
    if len(data) > MAX_INPUT:
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # graphopt.parse takes str; decoding is the caller's business
    try:
        graph = parse_graph(text)
        graph.verify()
    except InternalError:
        raise  # an exception no check anticipated: a finding
    except GraphoptError:
        return
    printed = str(graph)
    again = parse_graph(printed, {name: v.data for name, v in graph.constants.items()})
    assert str(again) == printed, "print(parse(text)) does not parse back to the same text"


def seeds() -> list[bytes]:
    """Printed graphs with inline constants: small zoo models traced, optimized and quantized,
    plus hand-written graphs using symbolic dims, quantized types and nested attributes."""
    import torch

    import graphopt
    from graphopt import zoo
    from graphopt.ir import printer

    texts = [_HAND_WRITTEN]
    models = [zoo.get("mlp", width=4, depth=2), zoo.get("tensorops", seq=3, batch=1)]
    saved = printer.INLINE_LIMIT
    printer.INLINE_LIMIT = 1 << 12  # every constant of these small models inline
    try:
        for model, args in models:
            graph = graphopt.trace(model.eval(), args)
            texts.append(str(graph))
            texts.append(str(graphopt.optimize(graph)))
        model, args = zoo.get("mlp", width=4, depth=2, batch=3)
        dyn = graphopt.trace(model.eval(), args, dynamic_shapes=({0: torch.export.Dim("batch")},))
        texts.append(str(dyn))
        int8 = graphopt.quantize(graphopt.trace(*zoo.get("mlp", width=8, depth=2)), "dynamic")
        texts.append(str(int8))
    finally:
        printer.INLINE_LIMIT = saved
    return [t.encode() for t in texts if len(t) < MAX_INPUT]


_HAND_WRITTEN = """graph main(%x: f32[2, s0], %ids: i64[s0]) {
  const %w: f32[2, 2] = [[1.0, -0.0], [nan, inf]]
  const %q: i8[2]{scale=[0.5], zp=[3], bits=8} = [1, -2]
  const %b: bf16[2] = [1.0, 2.0]
  %r: i64[s0] = arange() {dtype=i64, end=sym(s0), start=0, step=1}
  %y: i64[s0] = add(%ids, %r)
  %m: f32[2, s0] = relu(%x)
  %t: f32[s0, 2] = permute(%m) {perm=[1, 0]}
  return %y, %t, %w, %q, %b
}"""
