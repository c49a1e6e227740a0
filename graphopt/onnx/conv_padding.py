"""Zero padding absorbed into ONNX Conv's asymmetric ``pads``.

The IR's conv pads symmetrically (torch's convention), so a model that pads asymmetrically
(TensorFlow-style 'same' padding, as in transformers' MobileNetV2) keeps a separate ``pad``
node. ONNX Conv takes begin/end pads, so when every user of a zero ``pad`` is a conv reading
it as its input, the lowering drops the Pad and widens each conv's pads instead: one node and
one full activation copy fewer, and onnxruntime's NCHWc layout pass is not broken up by Pads.
"""

from __future__ import annotations

from graphopt.ir.graph import Node

CONV_OPS = ("conv", "fused_conv")


def _spatial_pads(pad: Node) -> tuple[list[int], list[int]] | None:
    """(begin, end) pads per spatial dim of a zero ``pad`` that touches spatial dims only."""
    x = pad.inputs[0]
    if pad.attrs["mode"] != "constant" or pad.attrs["value"] != 0.0 or x.type.rank < 3:
        return None
    pads = [int(p) for p in pad.attrs["pads"]]
    n = x.type.rank - 2
    if any(p < 0 for p in pads) or any(pads[2 * n:]):
        return None  # cropping, or padding of the batch/channel dims
    pads += [0] * (2 * n - len(pads))
    begin = [pads[2 * (n - 1 - i)] for i in range(n)]  # torch order: last dim first
    end = [pads[2 * (n - 1 - i) + 1] for i in range(n)]
    return begin, end


def absorbable_pad(pad: Node) -> bool:
    """True when every user of ``pad`` is a conv that can take its padding over."""
    out = pad.outputs[0]
    if out.is_graph_output or not out.uses or _spatial_pads(pad) is None:
        return False
    return all(node.op in CONV_OPS and slot == 0 for node, slot in out.uses)


def conv_input_pads(conv: Node, symmetric: list[int]) -> list[int]:
    """ONNX ``pads`` (all begins, then all ends) for ``conv``, including an absorbed pad."""
    producer = conv.inputs[0].producer
    begin, end = list(symmetric), list(symmetric)
    if producer is not None and producer.op == "pad" and absorbable_pad(producer):
        extra_begin, extra_end = _spatial_pads(producer)
        begin = [a + b for a, b in zip(begin, extra_begin)]
        end = [a + b for a, b in zip(end, extra_end)]
    return begin + end
