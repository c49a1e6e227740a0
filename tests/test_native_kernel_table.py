"""One source of truth across the language boundary: the C++ kernel table and code tables.

The C++ runtime declares each kernel's signature next to its registration (csrc/rt_*.cpp,
``GRAPHOPT_RT_KERNEL``) and each code table next to its enum; Python reads them
(``_C.native_kernel_table()``, ``_C.native_code_tables()``) and validates every step a lowering
emits. These tests tie the two sides together.
"""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest
import torch

import graphopt
from graphopt import _extension, zoo
from graphopt.ir.dtypes import DType
from graphopt.native import codes
from graphopt.native.builder import PlanBuilder
from graphopt.native.errors import NativeError
from graphopt.native.kernel_call import KernelCall, check_call, kernel_table

_C = _extension.load()
ROOT = pathlib.Path(__file__).resolve().parent.parent
NATIVE = ROOT / "graphopt" / "native"
INT_TYPES = {"dim", "positive", "signed", "rank", "flag", "elem", "bits", "mode", "dtype", "act",
             "unary", "binary", "reduce"}


def _emitted_kernel_names() -> set[str]:
    """Kernel names Python can emit: the string first argument of every ``emit(...)`` call in
    graphopt/native (``ctx.emit(kernel, ...)``, ``builder.emit(kernel, name, ...)``)."""
    names = set()
    for path in NATIVE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "emit" and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                names.add(node.args[0].value)
    names.discard("reference")  # a Python step, not a kernel
    return names


# ------------------------------------------------------------------------------ the table
def test_table_lists_every_registered_kernel():
    assert set(kernel_table()) == set(_C.native_kernels())


def test_python_emits_exactly_the_table():
    emitted = _emitted_kernel_names()
    assert len(emitted) > 20  # the scan found the lowerings
    assert emitted - set(kernel_table()) == set(), "emitted but not in the C++ table"
    assert set(kernel_table()) - emitted == set(), "in the C++ table but never emitted"


def test_signatures_are_well_formed():
    for name, sig in kernel_table().items():
        assert sig.operands, name
        assert not sig.operands[0].optional, f"{name}: operand 0 is the output"
        seen = {}
        for p in sig.ints:
            assert p.type in INT_TYPES, (name, p)
            if isinstance(p.count, str):
                assert seen.get(p.count) == "rank", (name, p)
            seen[p.name] = p.type
        names = [s.name for s in sig.operands] + [p.name for p in sig.ints]
        assert len(names) == len(set(names)) or name == "attention", name


def test_kernel_table_is_stable():
    # Every entry parses (a malformed signature raises NativeError here); the answer is stable.
    assert _C.native_kernel_table() == _C.native_kernel_table()


# ----------------------------------------------------------------------------- code tables
def test_code_tables_come_from_the_extension():
    tables = _C.native_code_tables()
    assert set(tables) >= {"act", "dtype", "unary", "binary", "reduce"}
    assert dict(codes.ACTIVATION_CODES) == {n: i for i, n in enumerate(tables["act"])}
    assert dict(codes.UNARY_CODES) == {n: i for i, n in enumerate(tables["unary"])}
    assert dict(codes.BINARY_CODES) == {n: i for i, n in enumerate(tables["binary"])}
    assert dict(codes.REDUCE_CODES) == {n: i for i, n in enumerate(tables["reduce"])}
    assert dict(codes.DTYPE_CODES) == {DType[n]: i for i, n in enumerate(tables["dtype"])}


def test_codes_keep_their_values():
    """Saved artifacts store these integers: the C++ lists may only grow at the end."""
    assert [codes.ACTIVATION_CODES[n] for n in (
        "none", "relu", "relu6", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "hardswish",
        "hardsigmoid", "clamp", "leaky_relu")] == list(range(12))
    assert codes.DTYPE_CODES[DType.float32] == 0 and codes.DTYPE_CODES[DType.int16] == 7
    assert codes.UNARY_CODES["neg"] == 0 and codes.UNARY_CODES["relu6"] == 35
    assert codes.BINARY_CODES["add"] == 0 and codes.BINARY_CODES["logical_xor"] == 22
    assert codes.REDUCE_CODES["sum"] == 0 and codes.REDUCE_CODES["argmin"] == 11


def test_op_sets_name_existing_codes():
    assert codes.INT_UNARY <= set(codes.UNARY_CODES)
    assert codes.PREDICATES | codes.FLOAT_ONLY_BINARY | codes.INT_ONLY_BINARY <= set(
        codes.BINARY_CODES)
    # Predicates are one block of the C++ enum (is_predicate: kEq <= op <= kLogicalXor).
    first = min(codes.BINARY_CODES[p] for p in codes.PREDICATES)
    last = max(codes.BINARY_CODES[p] for p in codes.PREDICATES)
    assert {n for n, c in codes.BINARY_CODES.items() if first <= c <= last} == codes.PREDICATES


def test_activations_agree_with_the_op_library():
    """graphopt.ops.fused.ACTIVATIONS (name -> parameter count, the IR's attribute check) must
    describe the same activations as the C++ list."""
    from graphopt.ops.fused import ACTIVATIONS, apply_activation

    native = {name: params for name, _code, params, _epi in _C.native_activations()}
    assert set(ACTIVATIONS) == set(native), (
        f"only in graphopt/ops/fused.py: {sorted(set(ACTIVATIONS) - set(native))}; "
        f"only in csrc/activation.h: {sorted(set(native) - set(ACTIVATIONS))}")
    counts = {n: (ACTIVATIONS[n], native[n]) for n in native if ACTIVATIONS[n] != native[n]}
    assert not counts, f"parameter counts (fused.py, activation.h) differ: {counts}"
    assert codes.activation_params() == native
    # the reference epilogue computes every listed activation
    y = torch.linspace(-3, 3, 7)
    for name, n in ACTIVATIONS.items():
        params = (-1.0, 1.0) if n == 2 else (0.1,) * n
        assert apply_activation(y, name, params).shape == y.shape
    epilogue = [name for name, _code, _params, epi in _C.native_activations() if epi]
    assert epilogue == ["none", "relu", "relu6", "gelu", "gelu_tanh", "silu", "sigmoid",
                        "tanh", "hardswish"]


def test_sgemm_rejects_non_epilogue_activation():
    a = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match="hardswish"):
        _C.sgemm(a, a, activation="clamp")


# ------------------------------------------------------------------------------ validation
def _builder():
    graph = graphopt.trace(torch.nn.Linear(4, 4), (torch.randn(2, 4),))
    return PlanBuilder(graph, [(2, 4)])


def test_unknown_kernel_names_node():
    with pytest.raises(NativeError, match=r"node n7.*unknown native kernel 'nope'"):
        _builder().emit("nope", "n7", [None])


def test_wrong_int_count_names_node_and_kernel():
    b = _builder()
    out = b.new_ref((4,), DType.float32)
    x = b.new_ref((4,), DType.float32)
    with pytest.raises(NativeError, match=r"node n3 \(op 'relu'\).*kernel 'unary' takes 3 "
                                          r"integer parameters"):
        b.emit("unary", "n3", [out, x], [codes.UNARY_CODES["relu"], 0], op="relu")
    with pytest.raises(NativeError, match=r"kernel 'unary' takes 0 to 3 float"):
        b.emit("unary", "n3", [out, x], [2, 0, 4], [0.0] * 4)
    with pytest.raises(NativeError, match=r"kernel 'copy' integer parameters.*'rank' = -1"):
        b.emit("copy", "n4", [out, x], [4, -1])
    with pytest.raises(NativeError, match=r"kernel 'copy' takes 5 integer parameters"):
        b.emit("copy", "n4", [out, x], [4, 1, 4, 1])
    with pytest.raises(NativeError, match=r"kernel 'softmax' needs operand 1 \(x\)"):
        b.emit("softmax", "n5", [out, None], [1, 4, 1, 0])
    with pytest.raises(NativeError, match=r"kernel 'cast' takes 2 operands"):
        b.emit("cast", "n6", [out, x, x], [0, 0, 4])
    assert not b.steps  # nothing was emitted


def test_valid_calls_pass():
    check_call("copy", [1, 1], [4, 2, 3, 5, 5, 1, 5, 1], [], "t")
    check_call("gemm", [1, 1, 1], [1, 2, 8, 8, 4, 4, 4, 4, 1, 4, 1, 0, 0, 0], [1.0, 0.0, 0.0], "t")
    check_call("unary", [1, 1], [0, 0, 3], [], "t")
    check_call("reduce", [1, 1], [0, 0, 1, 1, 1], [1.0], "t")


def test_kernel_call_validate_and_cpp_safety_net():
    out = np.zeros(4, np.float32)
    x = np.ones(4, np.float32)
    with pytest.raises(NativeError, match="unary_call: kernel 'unary' takes 3 integer"):
        KernelCall("unary", [out, x], [0, 0], validate=True)
    # Without validation the C++ factory still refuses (the net under saved artifacts).
    with pytest.raises(NativeError, match="too few integer parameters"):
        KernelCall("unary", [out, x], [0, 0])


@pytest.mark.parametrize("model", ["mlp", "convzoo", "bert"])
def test_zoo_plans_fit_the_table(model):
    kwargs = {"layers": 1} if model == "bert" else {}
    module, args = zoo.get(model, **kwargs)
    graph = graphopt.optimize(graphopt.trace(module, args), "default")
    fn = graphopt.compile(graph, backend="native", threads=1)
    out = fn(*args)
    plan = fn.plan if hasattr(fn, "plan") else None
    if plan is not None:
        for step in plan.steps:
            if step.kernel != "reference":
                check_call(step.kernel, step.operands, step.ints, step.floats, step.name)
    with torch.no_grad():
        want = module(*args)
    want = want if isinstance(want, torch.Tensor) else want[0]
    got = out if isinstance(out, torch.Tensor) else out[0]
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-3)
