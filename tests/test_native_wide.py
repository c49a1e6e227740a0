"""Native kernels outside float32 and the non-constant pads (issue #21): float64 / integer
matmul ("matmul_wide"), float64 einsum and softmax ("softmax_f64"), reflect / replicate /
circular pads, a float16 pad value the integer path could not hold (an infinity), bicubic
resize, 3-D pooling and convolutions, and uint16 / uint32 / uint64 elementwise ops. Each
against the op's reference implementation, every node native (fallback="error")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from native_util import Const, check_op, randn

import graphopt
import graphopt.errors
from graphopt.ir.dtypes import DType
from graphopt.native import NativeUnsupportedError

INF, NAN = math.inf, math.nan


def _kernels(fn) -> list[str]:
    return [s.kernel for s in fn.plan.steps]


# ----------------------------------------------------------------------------- matmul
@pytest.mark.parametrize("a_shape,b_shape", [
    ((3, 5), (5, 4)), ((5,), (5, 4)), ((3, 5), (5,)), ((2, 3, 5), (5, 4)),
    ((2, 1, 3, 5), (4, 5, 6)), ((1, 7), (7, 1)), ((4, 0), (0, 3))])
def test_float64_matmul_broadcasts_like_torch(a_shape, b_shape):
    a, b = randn(*a_shape).double(), randn(*b_shape, seed=1).double()
    if a.numel() == 0:
        with pytest.raises(NativeUnsupportedError, match="empty matmul"):
            check_op("matmul", [a, b])
        return
    fn = check_op("matmul", [a, b], rtol=1e-12, atol=1e-12)
    assert "matmul_wide" in _kernels(fn)


def test_float64_matmul_sums_exactly_in_double():
    # float32 sums would lose the 1.0 next to 1e17; double keeps what numpy keeps.
    a = torch.tensor([[1e17, 1.0, -1e17]], dtype=torch.float64)
    b = torch.ones(3, 2, dtype=torch.float64)
    check_op("matmul", [a, b], rtol=0.0, atol=0.0)
    check_op("matmul", [a, Const(b)], rtol=0.0, atol=0.0)  # a constant B is read in place


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.int8,
                                   torch.uint8])
def test_integer_matmul_wraps_like_torch(dtype):
    info = torch.iinfo(dtype)
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(info.min, info.max, (2, 3, 6), generator=gen, dtype=torch.int64).to(dtype)
    b = torch.randint(info.min, info.max, (6, 5), generator=gen, dtype=torch.int64).to(dtype)
    check_op("matmul", [a, b])
    check_op("matmul", [a, b.t().contiguous().t()])  # a transposed view of B: strided reads


def test_mixed_dtype_matmul_is_refused():
    # The IR refuses it (or native names it): never a silently converted product.
    with pytest.raises(graphopt.GraphoptError):
        check_op("matmul", [randn(2, 3).double(), randn(3, 2)])


# ----------------------------------------------------------------------------- einsum
@pytest.mark.parametrize("equation,shapes", [
    ("ij,jk->ik", [(3, 4), (4, 5)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("i,i->", [(7,), (7,)]), ("ii->i", [(4, 4)]), ("bii->bi", [(2, 3, 3)]),
    ("ij->ji", [(3, 5)]), ("ij->", [(3, 5)]), ("...ij,...jk->...ik", [(2, 3, 4), (4, 2)])])
def test_float64_einsum(equation, shapes):
    args = [randn(*s, seed=i).double() for i, s in enumerate(shapes)]
    fn = check_op("einsum", args, {"equation": equation}, rtol=1e-12, atol=1e-12)
    assert "gemm" not in _kernels(fn)  # float64 never goes through the float32 GEMM


# ---------------------------------------------------------------------------- softmax
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_float64_softmax(op, axis):
    x = randn(3, 4, 5).double() * 30.0  # large logits: a float32 exp would lose digits
    x[0, 0, :] = -INF  # a row of -inf: NaN, as torch
    x[1, 2, 3] = NAN
    x[2, 1, :] = torch.tensor([INF, 0.0, 1.0, -INF, 2.0], dtype=torch.float64)
    fn = check_op(op, [x], {"axis": axis}, rtol=1e-12, atol=1e-12)
    assert _kernels(fn) == ["softmax_f64"]


# ------------------------------------------------------------------------------- pads
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("shape,pads", [((2, 4, 5), (1, 2)), ((2, 3, 4, 5), (2, 0, 1, 3)),
                                        ((1, 3, 4, 5), (0, 1, 2, 2, 1, 0))])
def test_border_pads_match_torch(mode, shape, pads):
    x = randn(*shape)
    fn = check_op("pad", [x], {"pads": pads, "mode": mode, "value": 0.0})
    assert "fill" not in _kernels(fn)  # every element is a copy of the input
    check_op("pad", [x.double()], {"pads": pads, "mode": mode, "value": 0.0})


def test_border_pad_wider_than_the_input_is_refused():
    with pytest.raises(Exception, match="too wide|reflect|pad"):
        check_op("pad", [randn(1, 2, 3)], {"pads": (3, 3), "mode": "reflect", "value": 0.0})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_pad_fills_infinity(dtype):
    x = randn(2, 3).to(dtype)
    check_op("pad", [x], {"pads": (1, 2, 0, 1), "mode": "constant", "value": -INF})
    big = 1e10 if dtype is torch.bfloat16 else 65504.0  # the largest finite float16
    check_op("pad", [x], {"pads": (1, 1), "mode": "constant", "value": big})
    check_op("pad", [x], {"pads": (1, 1), "mode": "constant", "value": 0.1})  # rounded once


# ----------------------------------------------------------------------- bicubic resize
@pytest.mark.parametrize("size,scales,align", [
    ((9, 7), None, False), ((9, 7), None, True), ((3, 2), None, False), ((5, 5), None, False),
    ((10, 10), (2.0, 2.5), False), ((2, 1), (0.5, 0.25), False)])
def test_bicubic_resize_matches_torch(size, scales, align):
    x = randn(2, 3, 5, 4) * 4.0
    attrs = {"size": size, "mode": "bicubic", "align_corners": align, "scales": scales}
    fn = check_op("resize", [x], attrs)
    kernels = _kernels(fn)
    assert set(kernels) <= {"resample_axis", "copy"} and kernels, kernels


# ------------------------------------------------------------------------ volumetric (3-D)
@pytest.mark.parametrize("kernel,stride,pad,dil,ceil", [
    ((2, 2, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1), False),
    ((3, 2, 3), (1, 2, 2), (1, 1, 1), (1, 1, 1), True),
    ((2, 3, 2), (2, 1, 2), (1, 1, 0), (2, 1, 2), False)])
def test_max_pool3d(kernel, stride, pad, dil, ceil):
    x = randn(2, 3, 6, 7, 5)
    x[0, 1, 2, 3, 1] = NAN  # NaN wins its windows
    fn = check_op("max_pool", [x], {"kernel": kernel, "stride": stride, "padding": pad,
                                    "dilation": dil, "ceil_mode": ceil})
    assert _kernels(fn) == ["pool3d"]


@pytest.mark.parametrize("include_pad", [True, False])
@pytest.mark.parametrize("ceil", [True, False])
@pytest.mark.parametrize("divisor", [None, 5])
def test_avg_pool3d(include_pad, ceil, divisor):
    x = randn(1, 2, 5, 6, 7)
    fn = check_op("avg_pool", [x], {"kernel": (3, 2, 3), "stride": (2, 2, 2),
                                    "padding": (1, 1, 1), "ceil_mode": ceil,
                                    "count_include_pad": include_pad,
                                    "divisor_override": divisor})
    assert _kernels(fn) == ["pool3d"]


@pytest.mark.parametrize("groups,stride,pad,dil", [(1, (1, 1, 1), (0, 0, 0), (1, 1, 1)),
                                                   (2, (2, 1, 2), (1, 2, 0), (1, 2, 1)),
                                                   (4, (1, 2, 1), (1, 1, 1), (2, 1, 1))])
@pytest.mark.parametrize("const_weight", [True, False])
def test_conv3d(groups, stride, pad, dil, const_weight):
    x = randn(2, 4, 5, 6, 7)
    w = randn(8, 4 // groups, 3, 2, 3, seed=1)
    b = randn(8, seed=2)
    attrs = {"stride": stride, "padding": pad, "dilation": dil, "groups": groups}
    fn = check_op("conv", [x, Const(w) if const_weight else w, Const(b)], attrs)
    assert _kernels(fn) == ["conv3d"]
    check_op("conv", [x, Const(w), None], attrs)  # no bias


@pytest.mark.parametrize("groups,stride,pad,dil,outpad", [
    (1, (1, 1, 1), (0, 0, 0), (1, 1, 1), (0, 0, 0)),
    (2, (2, 1, 2), (1, 0, 1), (1, 2, 1), (1, 0, 1)),
    (4, (3, 2, 1), (0, 1, 0), (2, 1, 1), (2, 1, 0))])
def test_conv_transpose3d(groups, stride, pad, dil, outpad):
    x = randn(2, 4, 3, 4, 5)
    w = randn(4, 8 // groups, 2, 3, 2, seed=1)
    attrs = {"stride": stride, "padding": pad, "dilation": dil, "groups": groups,
             "output_padding": outpad}
    fn = check_op("conv_transpose", [x, Const(w), Const(randn(8, seed=2))], attrs)
    assert _kernels(fn) == ["conv_transpose3d"]


# ------------------------------------------------------------------ uint16 / uint32 / uint64
_UNSIGNED = [torch.uint16, torch.uint32, torch.uint64]


def _unsigned(dtype, seed=0, big=True):
    """Values across the whole range (the top bit set included) and small ones."""
    info = torch.iinfo(dtype)
    gen = np.random.default_rng(seed)
    np_dtype = {torch.uint16: np.uint16, torch.uint32: np.uint32, torch.uint64: np.uint64}[dtype]
    top = int(info.max) if big else 50
    values = gen.integers(0, top, size=(3, 8), dtype=np.uint64, endpoint=True).astype(np_dtype)
    values[0, :3] = [0, 1, top]
    return torch.from_numpy(values)


@pytest.mark.parametrize("dtype", _UNSIGNED)
@pytest.mark.parametrize("op,attrs", [
    ("add", {}), ("sub", {}), ("mul", {}), ("maximum", {}), ("minimum", {}), ("eq", {}),
    ("lt", {}), ("ge", {}), ("bitwise_and", {}), ("bitwise_or", {}), ("bitwise_xor", {}),
    ("div", {"rounding_mode": "trunc"}), ("div", {"rounding_mode": "floor"}),
    ("remainder", {})])
def test_unsigned_binary_ops_wrap_and_compare_unsigned(dtype, op, attrs):
    a, b = _unsigned(dtype), _unsigned(dtype, seed=1)
    if op in ("div", "remainder"):
        nonzero = b.numpy().copy()
        nonzero[nonzero == 0] = 7  # (torch has no masked_fill for these dtypes)
        b = torch.from_numpy(nonzero)
    fn = check_op(op, [a, b], attrs)
    assert fn.plan.steps  # ran natively (check_op uses fallback="error")
    # The reference itself agrees with numpy's unsigned semantics (what ONNX specifies).
    expected = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "maximum": np.maximum,
                "minimum": np.minimum, "eq": np.equal, "lt": np.less, "ge": np.greater_equal,
                "bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or,
                "bitwise_xor": np.bitwise_xor, "div": np.floor_divide,
                "remainder": np.remainder}[op](a.numpy(), b.numpy())
    np.testing.assert_array_equal(fn(a, b).numpy(), expected)


@pytest.mark.parametrize("dtype", _UNSIGNED)
@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_unsigned_shifts(dtype, direction):
    a = _unsigned(dtype)
    bits = torch.iinfo(dtype).bits
    shift = torch.from_numpy(np.array([0, 1, 3, bits - 1, bits, bits + 5, 2, 7],
                                      dtype=a.numpy().dtype))
    check_op("bitshift", [a, shift], {"direction": direction})
    check_op("bitwise_not", [a])


@pytest.mark.parametrize("dtype", _UNSIGNED)
def test_unsigned_cast_and_data_movement(dtype):
    a = _unsigned(dtype, big=False)
    check_op("cast", [a], {"dtype": DType.float32})
    check_op("cast", [a], {"dtype": DType.int64})
    check_op("concat", [a, a], {"axis": 0})
    check_op("permute", [a], {"perm": (1, 0)})


def test_mixed_unsigned_promotion_is_a_type_error():
    with pytest.raises(graphopt.errors.TypeInferenceError, match="do not promote"):
        check_op("add", [_unsigned(torch.uint32), torch.ones(3, 8, dtype=torch.int64)])


# ---------------------------------------------------------------------------------- bitcast
@pytest.mark.parametrize("src,dst", [
    (torch.float32, DType.int32), (torch.float32, DType.uint32), (torch.int64, DType.float64),
    (torch.float64, DType.uint64), (torch.int16, DType.float16), (torch.float16, DType.uint16),
    (torch.uint8, DType.int8), (torch.bool, DType.uint8)])
def test_bitcast_keeps_the_bits(src, dst):
    x = (randn(3, 4) * 100).to(src) if src is not torch.bool else randn(3, 4) > 0
    fn = check_op("bitcast", [x], {"dtype": dst})
    got = fn(x)
    assert got.dtype == dst.torch and got.shape == x.shape
    assert got.numpy().tobytes() == x.numpy().tobytes()
    assert [s.kernel for s in fn.plan.steps] in ([], ["copy"])  # a view (or the output copy)


def test_bitcast_between_sizes_is_a_type_error():
    with pytest.raises(graphopt.errors.TypeInferenceError, match="element sizes differ"):
        check_op("bitcast", [randn(2, 3)], {"dtype": DType.int64})


def test_onnx_bitcast_exports_only_at_opset_26():
    from native_util import op_graph
    g, _ = op_graph("bitcast", [randn(2, 3)], {"dtype": DType.int32})
    with pytest.raises(graphopt.errors.LoweringError, match="opset 26"):
        graphopt.to_onnx(g)
    model = graphopt.to_onnx(g, opset=26)
    assert [n.op_type for n in model.graph.node] == ["BitCast"]
