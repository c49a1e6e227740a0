"""Native lowerings of the ops ONNX models bring (issue #21): each against the op's reference
implementation, on the shapes that break kernels (negative axes, size-1 and empty dims,
broadcasting, ties and NaNs, out-of-range indices), with every node native (fallback="error")."""

from __future__ import annotations

import collections
import math

import pytest
import torch
from native_util import Const, check_op, op_graph, randn

import graphopt
from graphopt.native import NativeIndexError

INF, NAN = math.inf, math.nan


def _special(*shape, seed=0):
    """randn with infinities, NaN, zeros and ties mixed in."""
    x = randn(*shape, seed=seed).flatten()
    picks = torch.tensor([INF, -INF, NAN, 0.0, -0.0, 0.5, -0.5])
    x[: min(len(picks), x.numel())] = picks[: x.numel()]
    return x.reshape(shape)


# ---------------------------------------------------------------------------- elementwise
@pytest.mark.parametrize("op,lo,hi", [("acos", -1, 1), ("asin", -1, 1), ("acosh", 1, 5),
                                      ("asinh", -4, 4), ("atanh", -0.99, 0.99), ("cosh", -5, 5),
                                      ("sinh", -5, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_and_hyperbolic_functions(op, lo, hi, dtype):
    x = torch.linspace(lo, hi, 37, dtype=dtype).reshape(37, 1).expand(37, 3).contiguous()
    check_op(op, [x])
    check_op(op, [torch.tensor([NAN, lo - 1.0, hi + 1.0], dtype=dtype)])  # NaN and domain edges


@pytest.mark.parametrize("pos,neg", [(True, True), (True, False), (False, True), (False, False)])
def test_isinf(pos, neg):
    fn = check_op("isinf", [_special(3, 4)], {"detect_positive": pos, "detect_negative": neg})
    assert [s.kernel for s in fn.plan.steps] == (["fill"] if not (pos or neg) else ["unary"])
    check_op("isinf", [torch.tensor([1, -2, 3])], {"detect_positive": pos, "detect_negative": neg})


def test_thresholded_relu_and_shrink():
    x = _special(4, 5)
    check_op("thresholded_relu", [x], {"alpha": 0.3})
    check_op("thresholded_relu", [x], {"alpha": -1.0})
    check_op("shrink", [x], {"lambd": 0.5, "bias": 0.25})
    check_op("shrink", [x.double()], {"lambd": 0.0, "bias": -1.0})


def test_prelu_broadcasts_slope():
    x = randn(2, 3, 4, 5)
    check_op("prelu", [x, Const(torch.tensor([0.1, -0.2, 0.3]).reshape(3, 1, 1))])
    check_op("prelu", [x, randn(5, seed=1)])  # runtime slope on the last axis
    check_op("prelu", [randn(1, 5), randn(4, 1, seed=2)])  # both broadcast
    check_op("prelu", [torch.tensor([-3, 4, -5]), torch.tensor([2, 2, 3])])  # integers


def test_fmod_takes_the_dividends_sign():
    a = torch.tensor([5.5, -5.5, 5.5, -5.5, 0.0, INF, 1.0])
    b = torch.tensor([2.0, 2.0, -2.0, -2.0, 3.0, 2.0, 0.0])
    check_op("fmod", [a, b])
    check_op("fmod", [torch.tensor([7, -7, 7, -7]), torch.tensor([3, 3, -3, -3])])
    check_op("fmod", [torch.tensor([[7], [-9]], dtype=torch.int32),
                      torch.tensor([4, -5], dtype=torch.int32)])
    g, feeds = op_graph("fmod", [torch.tensor([1, 2]), torch.tensor([1, 0])])
    with pytest.raises(graphopt.GraphoptError, match="division by zero"):
        graphopt.compile(g, backend="native", fallback="error")(*feeds)


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_bitshift(direction):
    a = torch.tensor([1, 2, 255, 16, 128], dtype=torch.uint8)
    b = torch.tensor([0, 1, 3, 4, 7], dtype=torch.uint8)
    check_op("bitshift", [a, b], {"direction": direction})
    check_op("bitshift", [torch.tensor([[1], [300000]], dtype=torch.int64),
                          torch.tensor([0, 5, 63, 64])], {"direction": direction})
    check_op("bitshift", [torch.tensor([-8, 8], dtype=torch.int32),
                          torch.tensor([1, 33], dtype=torch.int32)], {"direction": direction})


# -------------------------------------------------------------------------- scans, top-k
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cumsum_and_cumprod(axis):
    x = randn(3, 4, 5) * 0.5
    check_op("cumsum", [x], {"axis": axis, "dtype": None})
    check_op("cumprod", [x], {"axis": axis})
    ints = torch.randint(-3, 4, (3, 4, 5), generator=torch.Generator().manual_seed(1))
    check_op("cumsum", [ints.int()], {"axis": axis, "dtype": None})  # accumulates in int64
    check_op("cumprod", [ints], {"axis": axis})
    check_op("cumsum", [torch.zeros(3, 0, 2)], {"axis": axis, "dtype": None})
    check_op("cumsum", [torch.tensor([True, False, True])], {"axis": 0, "dtype": None})


def test_cumsum_accumulates_in_double():
    x = torch.full((1, 20000), 0.1)
    check_op("cumsum", [x], {"axis": 1, "dtype": None}, rtol=1e-6, atol=0)


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_topk_orders_ties_by_index_and_nan_first(largest, axis):
    x = torch.tensor([[3.0, 1.0, 3.0, NAN, 2.0], [0.0, 0.0, -1.0, 5.0, 5.0],
                      [1.0, 2.0, 3.0, 4.0, 5.0]])
    size = x.shape[axis]
    for k in (0, 1, size):
        check_op("topk", [x], {"k": k, "axis": axis, "largest": largest, "sorted": True})
    check_op("topk", [torch.tensor([[4, 4, 1, 7]], dtype=torch.int32)],
             {"k": 3, "axis": 1, "largest": largest, "sorted": True})


def test_hardmax_marks_the_first_maximum():
    x = torch.tensor([[[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]], [[NAN, 1.0, 2.0], [0.0, 0.0, 0.0]]])
    for axis in (0, 1, 2, -1):
        check_op("hardmax", [x], {"axis": axis})
    check_op("hardmax", [randn(2, 3, 4, 5).double()], {"axis": -2})


# --------------------------------------------------------------------------- normalizations
@pytest.mark.parametrize("axis", [-1, -2, 1])
def test_rms_norm(axis):
    x = randn(2, 3, 8) * 3
    shape = x.shape[axis % 3:]
    check_op("rms_norm", [x, None], {"axis": axis, "eps": 1e-6})
    check_op("rms_norm", [x, Const(randn(*shape, seed=1))], {"axis": axis, "eps": 1e-5})
    check_op("rms_norm", [x, randn(*shape, seed=2)], {"axis": axis, "eps": 1e-5})


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_lrn(size):
    x = randn(2, 6, 3, 4)
    check_op("lrn", [x], {"size": size, "alpha": 1e-2, "beta": 0.75, "bias": 1.5})
    check_op("lrn", [randn(1, 3, 7)], {"size": size, "alpha": 0.5, "beta": 0.5, "bias": 2.0})


# ------------------------------------------------------------------------------- indexing
def test_gather_elements_with_negative_indices():
    x = randn(3, 4, 5)
    index = torch.tensor([[[0, -1, 2]], [[-5, 4, 1]], [[3, 3, -2]]])  # [3, 1, 3]
    check_op("gather_elements", [x, index], {"axis": 2})
    check_op("gather_elements", [x, Const(index.int())], {"axis": -1})
    check_op("gather_elements", [x, torch.tensor([[[2, -3]]])], {"axis": 0})
    g, feeds = op_graph("gather_elements", [x, torch.tensor([[[5]]])], {"axis": 2})
    with pytest.raises(IndexError, match="out of bounds"):
        graphopt.compile(g, backend="native", fallback="error")(*feeds)


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_gather_nd(batch_dims):
    x = randn(2, 3, 4, 5)
    if batch_dims == 0:
        indices = torch.tensor([[[0, -1], [1, 2]], [[1, 0], [-2, -3]]])  # tuples of 2
    else:
        indices = torch.tensor([[[2], [-1]], [[0], [1]]])  # per batch, tuples of 1
    check_op("gather_nd", [x, indices], {"batch_dims": batch_dims})
    check_op("gather_nd", [x, indices.int()], {"batch_dims": batch_dims})
    check_op("gather_nd", [torch.arange(12).reshape(3, 4), torch.tensor([[2, 3], [0, 0]])],
             {"batch_dims": 0})
    g, feeds = op_graph("gather_nd", [x, torch.tensor([[2, 0]])], {"batch_dims": 0})
    with pytest.raises(IndexError, match="out of bounds"):
        graphopt.compile(g, backend="native", fallback="error")(*feeds)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_elements(reduction):
    x = randn(3, 4)
    index = torch.tensor([[0, -1, 2], [3, 1, -4]])
    updates = randn(2, 3, seed=3)
    check_op("scatter_elements", [x, index, updates], {"axis": 1, "reduction": reduction})
    check_op("scatter_elements", [x, Const(torch.tensor([[2, 0, -1, 1]])), randn(1, 4, seed=4)],
             {"axis": 0, "reduction": reduction})
    check_op("scatter_elements", [torch.arange(6).reshape(2, 3), torch.tensor([[1], [2]]),
                                  torch.tensor([[7], [9]])], {"axis": -1, "reduction": reduction})


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd(reduction):
    x = randn(4, 3, 2)
    indices = torch.tensor([[0], [-1], [2]])  # whole [3, 2] slices
    check_op("scatter_nd", [x, indices, randn(3, 3, 2, seed=5)], {"reduction": reduction})
    indices = torch.tensor([[[1, 2]], [[-4, 0]]])  # [2, 1, 2]: single rows of 2
    check_op("scatter_nd", [x, indices, randn(2, 1, 2, seed=6)], {"reduction": reduction})
    g, feeds = op_graph("scatter_nd", [x, torch.tensor([[4]]), randn(1, 3, 2)],
                        {"reduction": reduction})
    with pytest.raises(IndexError, match="out of bounds"):
        graphopt.compile(g, backend="native", fallback="error")(*feeds)


# ------------------------------------------------------------------------ moves, generators
@pytest.mark.parametrize("shifts,axes", [((1,), (0,)), ((-2, 3), (1, -1)), ((5,), (1,)),
                                         ((1, 1), (2, 2)), ((0,), (0,))])
def test_roll(shifts, axes):
    check_op("roll", [randn(3, 4, 5)], {"shifts": shifts, "axes": axes})
    check_op("roll", [randn(3, 5, 4).transpose(1, 2)], {"shifts": shifts, "axes": axes})


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_pixel_shuffle(factor):
    check_op("pixel_shuffle", [randn(2, 2 * factor * factor, 3, 4)], {"factor": factor})
    check_op("pixel_shuffle", [randn(1, 3 * factor * factor, 1, 7)], {"factor": factor})


@pytest.mark.parametrize("op", ["tril", "triu"])
@pytest.mark.parametrize("diagonal", [-2, 0, 1, 7])
def test_tril_triu(op, diagonal):
    check_op(op, [randn(2, 4, 5)], {"diagonal": diagonal})
    check_op(op, [randn(5, 3).t()], {"diagonal": diagonal})  # a transposed view
    check_op(op, [torch.arange(12).reshape(3, 4)], {"diagonal": diagonal})
    check_op(op, [torch.zeros(2, 0, 3)], {"diagonal": diagonal})


def test_shape_full_arange_without_folding():
    """shape of a runtime input is a plan-time constant; full and arange lower too."""
    fn = check_op("shape", [randn(2, 3, 4)], {"start": 1, "end": None})
    assert fn.plan.steps == [] or all(s.kernel == "copy" for s in fn.plan.steps)
    check_op("shape", [randn(2, 3, 4)], {"start": -2, "end": -1})
    g = graphopt.ir.graph.Graph("gen")
    x = g.add_input("x", graphopt.ir.types.TensorType((3,), graphopt.DType.float32))
    full = g.create_node("full", [], {"shape": (3,), "value": 2.5, "dtype": graphopt.DType.float32})
    ar = g.create_node("arange", [], {"start": 1, "end": 7, "step": 2,
                                      "dtype": graphopt.DType.float32})
    s = g.create_node("add", [full.outputs[0], ar.outputs[0]])
    out = g.create_node("mul", [s.outputs[0], x])
    g.set_outputs(out.outputs)
    fn = graphopt.compile(g, backend="native", fallback="error")
    x_val = randn(3)
    torch.testing.assert_close(fn(x_val), (torch.full((3,), 2.5) + torch.arange(1, 7, 2)) * x_val)


# -------------------------------------------------------------------------- losses, det
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_nll_loss(reduction):
    x = torch.log_softmax(randn(4, 5, 3), 1)
    target = torch.tensor([[0, 4, 2], [1, 1, -100], [3, 2, 0], [4, 4, 4]])
    weight = torch.tensor([0.5, 1.0, 2.0, 0.1, 1.5])
    check_op("nll_loss", [x, target, None], {"reduction": reduction, "ignore_index": None})
    check_op("nll_loss", [x, target, Const(weight)], {"reduction": reduction,
                                                       "ignore_index": None})
    check_op("nll_loss", [x, target.clamp(min=0), weight], {"reduction": reduction,
                                                            "ignore_index": 4})
    check_op("nll_loss", [x[:, :, 0], target[:, 0].int(), None],
             {"reduction": reduction, "ignore_index": 1})
    g, feeds = op_graph("nll_loss", [x, target.clamp(max=5) + 1, None],
                        {"reduction": reduction, "ignore_index": None})
    with pytest.raises(IndexError, match="out of bounds for 5 classes"):
        graphopt.compile(g, backend="native", fallback="error")(*feeds)


def test_nll_loss_mean_with_every_target_ignored_is_nan():
    x = torch.log_softmax(randn(2, 3), 1)
    check_op("nll_loss", [x, torch.tensor([1, 1]), None], {"reduction": "mean",
                                                           "ignore_index": 1})


def test_det():
    check_op("det", [randn(4, 3, 3)])
    check_op("det", [randn(2, 2, 5, 5).double()])
    singular = torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    check_op("det", [torch.stack([singular, torch.eye(2), -torch.eye(2)])])
    check_op("det", [randn(1, 1)])


# --------------------------------------------------------------------------------- einsum
@pytest.mark.parametrize("equation,shapes", [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 8), (2, 3, 5, 8)]),
    ("ij->ji", [(3, 4)]),
    ("ii->i", [(4, 4)]),
    ("ii", [(4, 4)]),
    ("ij->", [(3, 4)]),
    ("i,i", [(5,), (5,)]),
    ("i,j->ij", [(3,), (4,)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),
    ("ijk,jil->kl", [(2, 3, 4), (3, 2, 5)]),
    ("abc,cd", [(2, 3, 4), (4, 5)]),
    ("ij,ij->ij", [(3, 4), (1, 4)]),
])
def test_einsum(equation, shapes):
    args = [randn(*s, seed=i) for i, s in enumerate(shapes)]
    check_op("einsum", args, {"equation": equation})


def test_einsum_with_a_constant_operand_and_transposed_views():
    g = graphopt.ir.graph.Graph("einsum")
    x = g.add_input("x", graphopt.ir.types.TensorType((4, 3), graphopt.DType.float32))
    xt = g.create_node("permute", [x], {"perm": (1, 0)})
    w = g.add_constant(randn(5, 3, seed=3).numpy(), "w")
    e = g.create_node("einsum", [xt.outputs[0], w], {"equation": "ki,jk->ij"})
    g.set_outputs(e.outputs)
    from native_util import check_graph

    check_graph(g, [randn(4, 3, seed=4)])


# --------------------------------------------------------------------------- onnx resize
@pytest.mark.parametrize("mode,ctm,extra", [
    ("nearest", "asymmetric", {"nearest_mode": "floor"}),
    ("nearest", "half_pixel", {"nearest_mode": "round_prefer_ceil"}),
    ("linear", "half_pixel", {}),
    ("linear", "align_corners", {}),
    ("linear", "pytorch_half_pixel", {"antialias": True}),
    ("cubic", "half_pixel", {"cubic_coeff_a": -0.5, "exclude_outside": True}),
    ("cubic", "half_pixel_symmetric", {"antialias": True}),
    ("linear", "tf_crop_and_resize", {"roi": (0, 0, 0.2, 0.1, 1, 1, 0.9, 1.2),
                                      "extrapolation_value": -7.0}),
])
@pytest.mark.parametrize("sizes", [(1, 2, 7, 3), (1, 2, 2, 9)])
def test_onnx_resize(mode, ctm, extra, sizes):
    x = randn(1, 2, 4, 5)
    scales = tuple(o / i for o, i in zip(sizes, x.shape))
    attrs = {"sizes": sizes, "scales": scales, "mode": mode,
             "coordinate_transformation_mode": ctm, **extra}
    check_op("onnx_resize", [x], attrs)
    check_op("onnx_resize", [x.double()], attrs)
    if not extra.get("antialias"):  # antialias weights can land integers on exact .5 ties,
        # which two summation orders may round apart
        check_op("onnx_resize", [(x * 40).round().to(torch.int32)], attrs)


# ------------------------------------------------------------------ runtime conv weights
@pytest.mark.parametrize("groups,kernel,stride,padding", [
    (1, (3, 3), (1, 1), (1, 1)),
    (1, (1, 1), (1, 1), (0, 0)),   # pointwise: the input is B directly
    (2, (3, 2), (2, 1), (0, 1)),   # grouped
    (4, (3, 3), (1, 1), (1, 1)),   # depthwise
    (4, (3, 3), (2, 2), (1, 1)),   # depthwise, strided
])
def test_conv_with_a_weight_computed_at_run_time(groups, kernel, stride, padding):
    """ONNX graphs may feed a convolution's weight from an input: read on every call."""
    x = randn(2, 4, 7, 6)
    w = randn(8, 4 // groups, *kernel, seed=1)
    attrs = {"stride": stride, "padding": padding, "dilation": (1, 1), "groups": groups}
    fn = check_op("conv", [x, w, randn(8, seed=2)], attrs)
    assert [s.kernel for s in fn.plan.steps] == ["conv2d"]
    check_op("conv", [x, w, None], attrs)
    # the same plan, another weight: nothing of the first call's weight is kept
    w2 = randn(8, 4 // groups, *kernel, seed=3)
    g, _ = op_graph("conv", [x, w, None], attrs)
    fn = graphopt.compile(g, backend="native", fallback="error")
    fn(x, w)
    torch.testing.assert_close(fn(x, w2), graphopt.run(g, x, w2), rtol=1e-4, atol=1e-5)


def test_conv1d_and_conv_transpose_with_runtime_weights():
    check_op("conv", [randn(2, 3, 9), randn(5, 3, 3, seed=1), None],
             {"stride": (2,), "padding": (1,), "dilation": (1,), "groups": 1})
    check_op("conv_transpose", [randn(1, 4, 5, 5), randn(4, 3, 3, 3, seed=1), randn(3, seed=2)],
             {"stride": (2, 2), "padding": (1, 1), "output_padding": (1, 1), "dilation": (1, 1),
              "groups": 1})


# ------------------------------------------------------------------- spatial transformers
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_2d(mode, padding_mode, align_corners):
    x = randn(2, 3, 5, 7)
    grid = torch.rand(2, 4, 6, 2, generator=torch.Generator().manual_seed(1)) * 2.6 - 1.3
    if padding_mode != "reflection":  # (reflecting 1e30 is rounding noise in any precision)
        grid[0, 0, 0] = torch.tensor([1e30, -1e30])  # far outside: no overflowing index
    attrs = {"mode": mode, "padding_mode": padding_mode, "align_corners": align_corners}
    check_op("grid_sample", [x, grid], attrs)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_grid_sample_3d(mode, padding_mode):
    x = randn(1, 2, 3, 4, 5)
    grid = torch.rand(1, 2, 3, 4, 3, generator=torch.Generator().manual_seed(2)) * 2.4 - 1.2
    check_op("grid_sample", [x, grid], {"mode": mode, "padding_mode": padding_mode,
                                        "align_corners": False})


@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_grid(align_corners):
    theta = randn(3, 2, 3)
    check_op("affine_grid", [theta], {"size": (3, 1, 4, 5), "align_corners": align_corners})
    check_op("affine_grid", [randn(2, 3, 4)], {"size": (2, 1, 2, 3, 4),
                                               "align_corners": align_corners})
    check_op("affine_grid", [randn(1, 2, 3)], {"size": (1, 1, 1, 3),
                                               "align_corners": align_corners})


def test_batch_norm_with_statistics_computed_at_run_time():
    x = randn(2, 3, 4, 5)
    mean, var = randn(3, seed=1), randn(3, seed=2).abs() + 0.1
    w, b = randn(3, seed=3), randn(3, seed=4)
    fn = check_op("batch_norm", [x, mean, var, w, b], {"eps": 1e-3})
    assert collections.Counter(s.kernel for s in fn.plan.steps)["channel_affine"] == 1
    check_op("batch_norm", [x, mean, var, None, None], {"eps": 1e-5})
    check_op("batch_norm", [x, Const(mean), var, Const(w), None], {"eps": 1e-5})
    check_op("batch_norm", [randn(4, 3), mean, var, w, b], {"eps": 1e-5})


# ----------------------------------------------------------------------- ONNX RNN / GRU / LSTM
def _rnn_case(cell, direction="forward", layout=0, lens=None, with_state=True, **attrs):
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[cell]
    dirs = 2 if direction == "bidirectional" else 1
    seq, batch, inp, hidden = 5, 3, 4, 6
    x = randn(seq, batch, inp) if layout == 0 else randn(batch, seq, inp)
    state = (dirs, batch, hidden) if layout == 0 else (batch, dirs, hidden)
    args = [x, Const(randn(dirs, gates * hidden, inp, seed=1) * 0.5),
            Const(randn(dirs, gates * hidden, hidden, seed=2) * 0.5),
            randn(dirs, 2 * gates * hidden, seed=3) * 0.1,
            None if lens is None else torch.tensor(lens, dtype=torch.int32),
            randn(*state, seed=4) if with_state else None,
            randn(*state, seed=5) if with_state and cell == "LSTM" else None,
            randn(dirs, 3 * hidden, seed=6) * 0.1 if cell == "LSTM" else None]
    attrs = {"cell": cell, "hidden_size": hidden, "direction": direction, "layout": layout,
             **attrs}
    return args, attrs


@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_onnx_rnn(cell, direction, layout):
    args, attrs = _rnn_case(cell, direction, layout, lens=[5, 2, 0])
    check_op("onnx_rnn", args, attrs)
    args, attrs = _rnn_case(cell, direction, layout, with_state=False)
    check_op("onnx_rnn", args, attrs)


@pytest.mark.parametrize("cell,attrs", [
    ("RNN", {"activations": ("Relu",), "clip": 0.7}),
    ("RNN", {"activations": ("ScaledTanh",), "activation_alpha": (1.5,),
             "activation_beta": (0.5,)}),
    ("GRU", {"linear_before_reset": True}),
    ("GRU", {"activations": ("HardSigmoid", "LeakyRelu"), "activation_alpha": (0.3, 0.05),
             "activation_beta": (0.4,)}),
    ("LSTM", {"input_forget": True, "clip": 1.5}),
    ("LSTM", {"activations": ("Sigmoid", "Softsign", "Elu"), "activation_alpha": (0.8,)}),
    ("LSTM", {"direction": "bidirectional",
              "activations": ("Sigmoid", "Tanh", "Tanh", "HardSigmoid", "Affine", "Softplus"),
              "activation_alpha": (0.2, 2.0), "activation_beta": (0.5, -1.0)}),
])
def test_onnx_rnn_attributes(cell, attrs):
    direction = attrs.pop("direction", "forward")
    args, full = _rnn_case(cell, direction, lens=[4, 5, 1], **attrs)
    check_op("onnx_rnn", args, full)


def test_onnx_rnn_rejects_a_sequence_length_past_the_input():
    args, attrs = _rnn_case("GRU", lens=[5, 6, 1])
    g, feeds = op_graph("onnx_rnn", args, attrs)
    with pytest.raises(IndexError, match="sequence length 6"):
        graphopt.compile(g, backend="native", fallback="error")(*feeds)


# --------------------------------------------------------------- run-time quantization ops
def test_dynamic_quantize_linear_matches_the_reference_exactly():
    for x in (randn(3, 7) * 4, randn(5).abs() + 1, -randn(2, 2).abs(), torch.zeros(3)):
        fn = check_op("dynamic_quantize_linear", [x])
        assert [s.kernel for s in fn.plan.steps] == ["dynamic_quantize_linear"]


@pytest.mark.parametrize("src,dst", [("u8", "u8"), ("u8", "i8"), ("i8", "u8"), ("i8", "i8")])
def test_requantize_linear(src, dst):
    dt = {"u8": torch.uint8, "i8": torch.int8}
    lo, hi = (0, 256) if src == "u8" else (-128, 128)
    q = torch.randint(lo, hi, (4, 9), generator=torch.Generator().manual_seed(0)).to(dt[src])
    zp_in = torch.tensor(7 if src == "u8" else -3, dtype=dt[src])
    zp_out = torch.tensor(120 if dst == "u8" else 5, dtype=dt[dst])
    args = [q, torch.tensor(0.05), zp_in, torch.tensor(0.07), zp_out]
    check_op("requantize_linear", args, {"dtype": dst})
    check_op("requantize_linear", [q, torch.tensor(0.05), None, torch.tensor(0.02), None],
             {"dtype": dst})


@pytest.mark.parametrize("activation,residual", [("none", False), ("relu", False),
                                                 ("relu", True), ("clamp", True)])
def test_qconv_dynamic(activation, residual):
    x = randn(2, 4, 6, 5)
    w = torch.randint(-127, 128, (6, 2, 3, 3), generator=torch.Generator().manual_seed(1))
    params = (-0.5, 0.5) if activation == "clamp" else ()
    attrs = {"stride": (1, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 2,
             "activation": activation, "activation_params": params}
    res = randn(2, 6, 6, 3, seed=5) if residual else None
    fn = check_op("qconv_dynamic", [x, Const(w.to(torch.int8)), Const(randn(6).abs() * 1e-3),
                                    Const(randn(6, seed=2) * 0.1), res], attrs)
    kernels = [s.kernel for s in fn.plan.steps]
    assert kernels[:2] == ["dynamic_quantize_linear", "qconv2d"]
