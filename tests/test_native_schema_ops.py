"""Per-op native tests generated from each op's schema (issue #21).

Every registered op starts from one valid call (tests/op_samples.py) and grows cases from what
its schema declares:

* ``base``: the call itself; it must run natively end to end (fallback="error");
* ``no_<operand>``: each optional operand (``name?``) left out;
* ``<attr>=<choice>``: every other value of each enumerated attribute (``AttrSpec.choices``);
* ``negative_axes``: ``axis`` / ``axes`` / ``dim`` attributes counted from the end;
* ``size1`` / ``empty``: the first tensor operand with its last dim cut to 1, its first to 0;
* ``noncontiguous``: every run-time tensor fed as a strided (transposed-back) view;
* ``float64``: floating operands and constants in float64.

A generated case whose graph the IR refuses, or whose reference implementation raises, is not a
valid call and is skipped (counted); for a valid one the native module must either agree with
the reference (NaNs in the same places) or refuse the node by name at compile time
(NativeUnsupportedError). Anything else (a wrong value, a crash, another exception) fails.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from native_util import Const, assert_same
from op_samples import Bf16Const, Sample, sample_of

import graphopt
from graphopt.errors import GraphoptError
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph
from graphopt.ir.types import TensorType
from graphopt.native import NativeUnsupportedError
from graphopt.ops.registry import all_ops

AXIS_ATTRS = ("axis", "axes", "dim")


def _builtin_ops() -> dict:
    """graphopt's own ops (other tests register throw-away ops such as "test.add")."""
    return {name: d for name, d in all_ops().items()
            if getattr(d.reference, "__module__", "").startswith("graphopt.")}


OPS = sorted(_builtin_ops())


def build(op: str, sample: Sample):
    """(graph, feeds) computing ``op`` on the sample (tensors become inputs)."""
    g = Graph(op)
    values, feeds = [], []
    for i, a in enumerate(sample.args):
        if a is None:
            values.append(None)
        elif isinstance(a, Bf16Const):
            values.append(g.add_constant(a.bits, f"c{i}", dtype=DType.bfloat16))
        elif isinstance(a, Const):
            values.append(g.add_constant(a.data.contiguous().numpy(), f"c{i}"))
        else:
            values.append(g.add_input(f"x{i}", TensorType(tuple(a.shape),
                                                          DType.from_torch(a.dtype))))
            feeds.append(a)
    node = g.create_node(op, values, sample.attrs)
    g.set_outputs(node.outputs)
    return g, feeds


def _tensor_slots(sample: Sample) -> list[int]:
    return [i for i, a in enumerate(sample.args) if isinstance(a, torch.Tensor)]


def _with_arg(sample: Sample, slot: int, value) -> Sample:
    args = list(sample.args)
    args[slot] = value
    return dataclasses.replace(sample, args=args)


def _negative(value, rank: int):
    if isinstance(value, bool) or rank == 0:
        return None
    if isinstance(value, int):
        return value - rank if value >= 0 else None
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        return tuple(v - rank if v >= 0 else v for v in value)
    return None


def _noncontiguous(t: torch.Tensor) -> torch.Tensor:
    if t.dim() < 2 or t.shape[-1] < 2 or t.shape[-2] < 2:
        return t
    view = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not view.is_contiguous()
    return view


def _as_float64(a):
    if isinstance(a, Const) and a.data.dtype == torch.float32:
        return Const(a.data.double())
    if isinstance(a, torch.Tensor) and a.dtype == torch.float32:
        return a.double()
    return a


def variants(op, base: Sample):
    """(name, sample) of every case the schema implies, the base first."""
    yield "base", base
    for slot, name in enumerate(op.inputs):
        if name.endswith("?") and slot < len(base.args) and base.args[slot] is not None:
            yield f"no_{name[:-1]}", _with_arg(base, slot, None)
    for attr, spec in op.attrs.items():
        for choice in spec.choices or ():
            if base.attrs.get(attr, spec.default) != choice:
                yield f"{attr}={choice}", dataclasses.replace(
                    base, attrs={**base.attrs, attr: choice})
    slots = _tensor_slots(base)
    rank = base.args[slots[0]].dim() if slots else 0
    negative = {k: _negative(v, rank) for k, v in base.attrs.items() if k in AXIS_ATTRS}
    negative = {k: v for k, v in negative.items() if v is not None}
    if negative:
        yield "negative_axes", dataclasses.replace(base, attrs={**base.attrs, **negative})
    if slots and base.args[slots[0]].dim() >= 1:
        first = base.args[slots[0]]
        if first.shape[-1] > 1:
            yield "size1", _with_arg(base, slots[0], first[..., :1].contiguous())
        yield "empty", _with_arg(base, slots[0], first[:0])
    if any(a.dim() >= 2 for a in (base.args[i] for i in slots)):
        yield "noncontiguous", dataclasses.replace(
            base, args=[_noncontiguous(a) if isinstance(a, torch.Tensor) else a
                        for a in base.args])
    if any(isinstance(a, (Const, torch.Tensor)) and _as_float64(a) is not a for a in base.args):
        yield "float64", dataclasses.replace(base, args=[_as_float64(a) for a in base.args],
                                             rtol=max(base.rtol, 1e-6))


def run_case(op: str, sample: Sample, strict: bool) -> str:
    """'ok', 'invalid' (not a valid call), 'refused' (NativeUnsupportedError); raises on a
    disagreement. ``strict``: the call must run natively."""
    try:
        g, feeds = build(op, sample)
        with torch.no_grad():
            ref = graphopt.run(g, *feeds)
    except (GraphoptError, RuntimeError, ValueError, TypeError, IndexError):
        if strict:
            raise
        return "invalid"
    for threads in ((1, 2) if strict else (2,)):
        try:
            fn = graphopt.compile(g, backend="native", fallback="error", threads=threads)
        except NativeUnsupportedError:
            if strict:
                raise
            return "refused"
        assert_same(fn(*feeds), ref, sample.rtol, sample.atol)
    return "ok"


def test_every_op_has_a_sample():
    missing = [name for name, op in _builtin_ops().items() if sample_of(op) is None]
    assert not missing, f"ops without a sample in tests/op_samples.py: {missing}"


@pytest.mark.parametrize("op_name", OPS)
def test_op_cases_from_schema(op_name):
    op = all_ops()[op_name]
    base = sample_of(op)
    if base is None:
        pytest.fail(f"no sample for '{op_name}' (see test_every_op_has_a_sample)")
    outcomes = {}
    for name, sample in variants(op, base):
        try:
            outcomes[name] = run_case(op_name, sample, strict=name == "base")
        except AssertionError as exc:
            raise AssertionError(f"{op_name} [{name}]: native disagrees: {exc}") from None
        except Exception as exc:
            raise AssertionError(f"{op_name} [{name}]: {type(exc).__name__}: {exc}") from exc
    assert outcomes["base"] == "ok"


def test_generated_cases_reach_the_kernels():
    # The generator must keep producing valid calls that run natively: were most cases to
    # turn "invalid" (a sample or the IR drifting), the per-op tests would pass vacuously.
    outcomes = {"ok": 0, "invalid": 0, "refused": 0}
    for name in OPS:
        op = all_ops()[name]
        for vname, sample in variants(op, sample_of(op)):
            outcomes[run_case(name, sample, strict=vname == "base")] += 1
    total = sum(outcomes.values())
    assert outcomes["ok"] >= 0.8 * total, outcomes
    assert outcomes["ok"] >= 4 * len(OPS), outcomes  # 724 of 805 when written
