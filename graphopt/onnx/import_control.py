"""Converters of ONNX control flow: Scan, unrolled at import time, and If.

The IR has no loops, but a Scan's trip count is the length of its scan inputs along their scan
axes, which static shapes fix. The body is imported once per iteration (importer.run_subgraph):
state inputs are bound to the previous iteration's state outputs, each scan input to its slice
for the iteration (``select``, last slice first for a reversed direction), and the per-iteration
scan outputs are stacked along their output axes (``unsqueeze`` + ``concat``, prepended for a
reversed direction). The result is the graph the loop computes, optimizable like any other; a
trip count that would unroll past importer.MAX_UNROLLED_NODES is refused.
"""

from __future__ import annotations

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.onnx.importer import ImportContext, OnnxNode, onnx_converter, run_subgraph


def _ints(node: OnnxNode, name: str, count: int) -> list[int]:
    values = node.attr(name, [0] * count)
    if len(values) != count:
        raise GraphoptError(f"attribute '{name}' has {len(values)} entries for {count} "
                            "scan operands")
    return values


def _directions(node: OnnxNode, name: str, count: int) -> list[int]:
    values = _ints(node, name, count)
    if any(v not in (0, 1) for v in values):
        raise GraphoptError(f"attribute '{name}' {values} may hold 0 (forward) and 1 "
                            "(reverse) only")
    return values


@onnx_converter("Scan")
def _scan(ctx: ImportContext, node: OnnxNode):
    body = node.graph_attr("body")
    m = node.attr("num_scan_inputs")
    first = 1 if node.opset < 9 else 0  # Scan-8: sequence_lens, then batched operands
    if first and node.has_input(0):
        raise GraphoptError("Scan-8 with sequence_lens (ragged batches) is not supported; "
                            "leave it out or convert the model to opset 9 or later")
    operands = [ctx.value(node, i) for i in range(first, len(node.inputs))]
    if not 1 <= m <= len(operands) or any(v is None for v in operands):
        raise GraphoptError(f"num_scan_inputs={m} does not fit its {len(operands)} operands "
                            "(all must be given)")
    n = len(operands) - m
    k = len(body.output) - n
    if len(body.input) != n + m or k < 0 or len(node.outputs) != n + k:
        raise GraphoptError(f"the body takes {len(body.input)} inputs and gives "
                            f"{len(body.output)} outputs; with {n} states and {m} scan inputs "
                            f"it must take {n + m} and give {len(node.outputs)}")
    if not first:
        loop = _Loop(node, body, n, m, k, operands[n:])
        return loop.run(ctx, operands[:n], operands[n:])
    # Scan-8: every operand has a leading batch dim; each batch element is a Scan-9 loop over
    # axis 0 of its slices, and the results are stacked back along the batch dim.
    batches = {v.shape[0] for v in operands if v.type.rank >= 1}
    if len(batches) != 1 or not isinstance(next(iter(batches)), int) or \
            any(v.type.rank < 1 for v in operands):
        raise GraphoptError("Scan-8 operands must share one static batch dim")
    per_batch = []
    for b in range(next(iter(batches))):
        sliced = [ctx.emit("select", [v], {"axis": 0, "index": b}) for v in operands]
        loop = _Loop(node, body, n, m, k, sliced[n:], legacy=True)
        per_batch.append(loop.run(ctx, sliced[:n], sliced[n:]))
    return [_stack(ctx, node, [outs[i] for outs in per_batch], 0, 0)
            for i in range(n + k)]


class _Loop:
    """One unrolled Scan-9 loop: the axes, directions and trip count of its scan operands."""

    def __init__(self, node: OnnxNode, body, n: int, m: int, k: int, scans, legacy=False):
        self.node, self.body, self.n = node, body, n
        if legacy:  # Scan-8 (per batch element): axis 0 everywhere, one "directions" list
            self.in_axes, self.out_axes = [0] * m, [0] * k
            self.in_dirs, self.out_dirs = _directions(node, "directions", m), [0] * k
        else:
            self.in_axes = [node.axis(a, v.type.rank, "scan_input_axes entry")
                            for a, v in zip(_ints(node, "scan_input_axes", m), scans)]
            self.in_dirs = _directions(node, "scan_input_directions", m)
            self.out_dirs = _directions(node, "scan_output_directions", k)
            self.out_axes = _ints(node, "scan_output_axes", k)
        lengths = {v.shape[a] for v, a in zip(scans, self.in_axes)}
        if len(lengths) != 1 or not isinstance(next(iter(lengths)), int):
            raise GraphoptError(f"the scan inputs' lengths {sorted(map(str, lengths))} must "
                                "be one static size (graphopt unrolls the loop at import)")
        self.trip = next(iter(lengths))
        self.k = k

    def run(self, ctx: ImportContext, states: list, scans: list) -> list:
        body, n = self.body, self.n
        collected = [[] for _ in range(self.k)]
        for step in range(self.trip):
            bindings = {info.name: v for info, v in zip(body.input[:n], states)}
            for info, v, axis, reverse in zip(body.input[n:], scans, self.in_axes,
                                               self.in_dirs):
                index = self.trip - 1 - step if reverse else step
                bindings[info.name] = ctx.emit("select", [v], {"axis": axis, "index": index})
            outs = run_subgraph(ctx, body, bindings, self.node.describe())
            states = outs[:n]
            for slot, v in enumerate(outs[n:]):
                collected[slot].append(v)
        return [*states, *(_stack(ctx, self.node, pieces, axis, reverse) for pieces, axis,
                           reverse in zip(collected, self.out_axes, self.out_dirs))]


def _stack(ctx: ImportContext, node: OnnxNode, pieces: list, axis: int, reverse: int):
    if not pieces:
        raise GraphoptError("a Scan of zero iterations has scan outputs of unknown shape; "
                            "give the scan inputs a length >= 1")
    axis = node.axis(axis, pieces[0].type.rank + 1, "scan_output_axes entry")
    if reverse:
        pieces = pieces[::-1]
    grown = [ctx.emit("unsqueeze", [p], {"axis": axis}) for p in pieces]
    return grown[0] if len(grown) == 1 else ctx.emit("concat", grown, {"axis": axis})


@onnx_converter("If")
def _if(ctx: ImportContext, node: OnnxNode):
    """A condition known at import (shapes, constants: most If nodes of exported functions)
    imports the taken branch only. A run-time condition imports both branches and selects
    with ``where``: sound because ONNX branches have no side effects, and only when both give
    the same types; note that the untaken branch is computed too (and raises if it fails)."""
    cond = ctx.value(node, 0)
    if cond is None or cond.type.numel != 1:
        raise GraphoptError(f"the condition must hold one element, got {cond and cond.type}")
    branches = (node.graph_attr("then_branch"), node.graph_attr("else_branch"))
    for branch in branches:
        if len(branch.output) != len(node.outputs):
            raise GraphoptError(f"a branch gives {len(branch.output)} outputs for the node's "
                                f"{len(node.outputs)}")
    known = ctx.known_value(cond)
    if known is not None:
        taken = branches[0] if bool(np.asarray(known).reshape(-1)[0]) else branches[1]
        return run_subgraph(ctx, taken, {}, node.describe())
    then_out, else_out = (run_subgraph(ctx, b, {}, node.describe()) for b in branches)
    flag = cond if cond.type.rank == 0 else ctx.emit("reshape", [cond], {"shape": ()})
    results = []
    for slot, (a, b) in enumerate(zip(then_out, else_out)):
        if a.type != b.type:
            raise GraphoptError(f"output {slot} is {a.type} in then_branch and {b.type} in "
                                "else_branch; with a condition known only at run time both "
                                "branches must give the same types (freeze the inputs the "
                                "condition depends on with constant_inputs=)")
        results.append(ctx.emit("where", [flag, a, b]))
    return results
