"""Zero padding absorbed into ONNX Conv's asymmetric ``pads``.

The IR's conv pads symmetrically (torch's convention), so a model that pads asymmetrically
(TensorFlow-style 'same' padding, as in transformers' MobileNetV2) keeps a separate ``pad``
node. ONNX Conv takes begin/end pads, so when every user of a zero ``pad`` is a conv reading
it as its input, the lowering drops the Pad and widens each conv's pads instead: one node and
one full activation copy fewer, and onnxruntime's NCHWc layout pass is not broken up by Pads.
The integer ``qconv`` pads its u8 codes with the input zero point (real zero): a u8 ``pad``
whose value is that zero point is absorbed the same way (QLinearConv pads with it too).
"""

from __future__ import annotations

from graphopt.ir.graph import Node
from graphopt.ops.registry import OUT_IN_SPATIAL, get_op
from graphopt.rewrite import Var, match_at, op


def is_conv(node: Node) -> bool:
    """A (fused, quantized) convolution: its weight has the ``[out, in/groups, *k]`` layout."""
    spec = get_op(node.op).weights
    return spec is not None and spec.layout == OUT_IN_SPATIAL


def _spatial_pads(pad: Node) -> tuple[list[int], list[int]] | None:
    """(begin, end) pads per spatial dim of a zero ``pad`` that touches spatial dims only."""
    x = pad.inputs[0]
    if pad.attrs["mode"] != "constant" or x.type.rank < 3:
        return None
    pads = [int(p) for p in pad.attrs["pads"]]
    n = x.type.rank - 2
    if any(p < 0 for p in pads) or any(pads[2 * n:]):
        return None  # cropping, or padding of the batch/channel dims
    pads += [0] * (2 * n - len(pads))
    begin = [pads[2 * (n - 1 - i)] for i in range(n)]  # torch order: last dim first
    end = [pads[2 * (n - 1 - i) + 1] for i in range(n)]
    return begin, end


def _pads_real_zero(conv: Node, pad: Node) -> bool:
    """The pad value is what ``conv`` pads with itself: 0, or for ``qconv`` (u8 codes) its
    input zero point, the code of real zero."""
    value = pad.attrs["value"]
    if "x_zp" in conv.opdef.inputs:  # integer input codes: padded with their zero point
        zp = conv.inputs[conv.opdef.inputs.index("x_zp")]
        return (zp is not None and zp.kind == "const" and zp.data.size == 1
                and float(zp.data.reshape(-1)[0]) == value)
    return value == 0.0


def absorbable_pad(pad: Node) -> bool:
    """True when every user of ``pad`` is a conv that can take its padding over."""
    out = pad.outputs[0]
    if out.is_graph_output or not out.uses or _spatial_pads(pad) is None:
        return False
    return all(is_conv(node) and slot == 0 and _pads_real_zero(node, pad)
               for node, slot in out.uses)


def conv_input_pads(conv: Node, symmetric: list[int]) -> list[int]:
    """ONNX ``pads`` (all begins, then all ends) for ``conv``, including an absorbed pad."""
    producer = conv.inputs[0].producer
    begin, end = list(symmetric), list(symmetric)
    if match_at(op.pad(Var("x")), producer) and absorbable_pad(producer):
        extra_begin, extra_end = _spatial_pads(producer)
        begin = [a + b for a, b in zip(begin, extra_begin)]
        end = [a + b for a, b in zip(end, extra_end)]
    return begin + end
