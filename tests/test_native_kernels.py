"""Native runtime kernels against torch, op by op, on edge shapes.

Each case builds a one-op graph (tests/native_util.py), compiles it for the native backend with
1 and 2 threads and compares with the reference interpreter, whose op implementations are the
torch functions (F.conv2d, F.scaled_dot_product_attention, ...).

Tolerance: |native - torch| <= 1e-5 * max(1, max|torch|) + 1e-4 * |torch| (float32 sums in a
different order; the scale term covers the rounding of length-K dot products). Integer and
bool results must be equal. The elementwise kernels: tests/test_native_elementwise.py. This
file and that one (and test_native_kv_attention.py) also run on the portable (non-AVX2) kernels:
``test_portable_path`` reruns them with GRAPHOPT_DISABLE_AVX2=1.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from native_util import Const, check_graph, check_op, op_graph, randn

import graphopt

F32 = torch.float32
ACTS = [("none", ()), ("relu", ()), ("relu6", ()), ("gelu", ()), ("gelu_tanh", ()), ("silu", ()),
        ("sigmoid", ()), ("tanh", ()), ("hardswish", ()), ("hardsigmoid", ()),
        ("clamp", (-0.5, 0.75)), ("clamp", (-math.inf, 0.3)), ("leaky_relu", (0.2,))]


# ------------------------------------------------------------------------------------- gemm
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 37, 5), (2, 64, 33), (4, 300, 17),
                                   (5, 3, 16), (7, 17, 100), (13, 257, 31), (150, 64, 48)])
def test_linear_shapes(m, k, n):
    check_op("linear", [randn(m, k), Const(randn(n, k, seed=1)), Const(randn(n, seed=2))])
    check_op("linear", [randn(2, m, k), Const(randn(n, k, seed=1)), None])


@pytest.mark.parametrize("act,params", ACTS)
@pytest.mark.parametrize("m", [1, 9])
def test_fused_linear_epilogues(act, params, m):
    check_op("fused_linear", [randn(m, 40), Const(randn(24, 40, seed=1) * 0.3),
                              Const(randn(24, seed=2)), randn(m, 24, seed=3)],
             {"activation": act, "activation_params": params})


def test_linear_weight_as_input_and_strided_x():
    x = randn(6, 20).t()  # a transposed (non-contiguous) input
    check_op("linear", [x, randn(9, 6, seed=1), randn(9, seed=2)])


@pytest.mark.parametrize("a_shape,b_shape", [((5, 7), (7, 3)), ((7,), (7, 4)), ((3, 7), (7,)),
                                             ((2, 3, 5, 7), (3, 7, 4)), ((1, 5, 7), (4, 7, 2)),
                                             ((6, 1, 7), (1, 7, 9))])
def test_matmul_broadcasting(a_shape, b_shape):
    check_op("matmul", [randn(*a_shape), randn(*b_shape, seed=1)])
    check_op("matmul", [randn(*a_shape), Const(randn(*b_shape, seed=1))])


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True),
                                             (True, True)])
@pytest.mark.parametrize("act,params", [("none", ()), ("gelu", ()), ("clamp", (0.0, 1.0))])
def test_fused_matmul(trans_a, trans_b, act, params):
    a = randn(2, 9, 6) if trans_a else randn(2, 6, 9)
    b = randn(11, 9, seed=1) if trans_b else randn(9, 11, seed=1)
    check_op("fused_matmul", [a, Const(b), Const(randn(11, seed=2)), randn(2, 6, 11, seed=3)],
             {"trans_a": trans_a, "trans_b": trans_b, "alpha": 0.5, "activation": act,
              "activation_params": params})


# ------------------------------------------------------------------------------------- conv
CONV_CASES = [
    # (N, C, H, W), (Co, C/g, kh, kw), stride, padding, dilation, groups
    ((1, 3, 7, 9), (5, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((2, 4, 11, 6), (6, 4, 1, 1), (1, 1), (0, 0), (1, 1), 1),  # pointwise = plain GEMM
    ((1, 5, 13, 13), (7, 5, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    ((1, 3, 10, 10), (4, 3, 3, 1), (1, 2), (2, 0), (2, 1), 1),  # asymmetric, dilated
    ((1, 8, 9, 9), (6, 4, 3, 3), (1, 1), (1, 1), (1, 1), 2),  # grouped
    ((2, 6, 12, 12), (6, 1, 3, 3), (1, 1), (1, 1), (1, 1), 6),  # depthwise
    ((1, 6, 12, 11), (6, 1, 3, 3), (2, 2), (1, 1), (1, 1), 6),  # depthwise stride 2
    ((1, 4, 9, 9), (8, 1, 5, 5), (1, 1), (4, 4), (2, 2), 4),  # depthwise x2 multiplier, dilated
    ((1, 3, 1, 1), (2, 3, 1, 1), (1, 1), (0, 0), (1, 1), 1),  # 1x1 image
    ((1, 2, 3, 3), (3, 2, 3, 3), (1, 1), (0, 0), (1, 1), 1),  # output 1x1
    ((1, 17, 20, 37), (19, 17, 3, 3), (1, 1), (1, 1), (1, 1), 1),  # primes, multi-panel rows
    ((1, 6, 8, 8), (6, 1, 3, 3), (1, 1), (0, 0), (1, 1), 6),  # depthwise without padding
]


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,dilation,groups", CONV_CASES)
def test_conv2d(x_shape, w_shape, stride, padding, dilation, groups):
    attrs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    check_op("conv", [randn(*x_shape), Const(randn(*w_shape, seed=1)),
                      Const(randn(w_shape[0], seed=2))], attrs)


def test_conv1d():
    check_op("conv", [randn(2, 4, 19), Const(randn(6, 4, 3, seed=1)), None],
             {"stride": (2,), "padding": (1,), "dilation": (1,), "groups": 1})


@pytest.mark.parametrize("act,params", ACTS)
@pytest.mark.parametrize("groups", [1, 4])
def test_fused_conv_epilogues(act, params, groups):
    w = (4, 1, 3, 3) if groups == 4 else (5, 4, 3, 3)
    out_c = w[0]
    check_op("fused_conv", [randn(1, 4, 6, 7), Const(randn(*w, seed=1) * 0.3),
                            Const(randn(out_c, seed=2)), randn(1, out_c, 6, 7, seed=3)],
             {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": groups,
              "activation": act, "activation_params": params}, threads=(2,))


@pytest.mark.parametrize("stride,padding,dilation,groups,out_pad", [
    ((2, 2), (0, 0), (1, 1), 1, (0, 0)), ((2, 1), (1, 0), (1, 2), 2, (1, 0)),
    ((3, 3), (1, 1), (1, 1), 1, (2, 1))])
def test_conv_transpose(stride, padding, dilation, groups, out_pad):
    check_op("conv_transpose", [randn(2, 4, 5, 6), Const(randn(4, 3, 3, 2, seed=1)),
                                Const(randn(3 * groups, seed=2))],
             {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
              "output_padding": out_pad})


# ---------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil", [
    ((3, 3), (2, 2), (1, 1), (1, 1), False), ((2, 2), (2, 2), (0, 0), (1, 1), True),
    ((3, 2), (1, 2), (1, 0), (2, 1), True), ((1, 1), (1, 1), (0, 0), (1, 1), False),
    ((2, 2), (2, 2), (0, 0), (1, 1), False)])
def test_max_pool(kernel, stride, padding, dilation, ceil):
    check_op("max_pool", [randn(2, 3, 9, 8)], {"kernel": kernel, "stride": stride,
                                                "padding": padding, "dilation": dilation,
                                                "ceil_mode": ceil})


def test_max_pool_2x2_propagates_nan_like_torch():
    """The 2x2 / stride-2 fast path (rt_pool.cpp) keeps torch's NaN propagation wherever the
    NaN sits in the window."""
    x = randn(1, 2, 6, 8)
    for i, (r, c) in enumerate([(0, 0), (0, 3), (3, 4), (5, 7)]):
        x[0, i % 2, r, c] = float("nan")
    g, feeds = op_graph("max_pool", [x], {"kernel": (2, 2), "stride": (2, 2),
                                          "padding": (0, 0), "dilation": (1, 1)})
    got = graphopt.compile(g, backend="native", fallback="error")(*feeds)
    want = torch.nn.functional.max_pool2d(x, 2)
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and int(torch.isnan(want).sum()) == 4
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))


@pytest.mark.parametrize("kernel,stride,padding,ceil,include,divisor", [
    ((3, 3), (2, 2), (1, 1), False, True, None), ((2, 2), (2, 2), (0, 0), True, False, None),
    ((3, 3), (2, 2), (1, 1), True, True, None), ((2, 3), (1, 2), (1, 1), False, False, 5)])
def test_avg_pool(kernel, stride, padding, ceil, include, divisor):
    check_op("avg_pool", [randn(1, 3, 9, 7)], {
        "kernel": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil,
        "count_include_pad": include, "divisor_override": divisor})


def test_pool1d():
    check_op("max_pool", [randn(2, 3, 11)], {"kernel": (3,), "stride": (2,), "padding": (1,)})
    check_op("avg_pool", [randn(2, 3, 11)], {"kernel": (4,), "stride": (3,), "ceil_mode": True})


@pytest.mark.parametrize("op", ["adaptive_avg_pool", "adaptive_max_pool"])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 7), (4, 4)])
def test_adaptive_pool(op, size):
    check_op(op, [randn(2, 3, 7, 9)], {"output_size": size})


@pytest.mark.parametrize("mode,align,size,scales", [
    ("nearest", None, (6, 10), None), ("nearest", None, (3, 4), (0.5, 0.5)),
    ("bilinear", False, (9, 5), None), ("bilinear", True, (9, 5), None),
    ("bilinear", False, (3, 4), (0.5, 0.5)), ("nearest-exact", None, (5, 11), None)])
def test_resize(mode, align, size, scales):
    check_op("resize", [randn(1, 2, 6, 8)], {"size": size, "mode": mode, "align_corners": align,
                                             "scales": scales})


# ------------------------------------------------------------------------ norms and softmax
@pytest.mark.parametrize("shape,norm", [((3, 7), (7,)), ((2, 5, 33), (33,)), ((2, 3, 4), (3, 4)),
                                        ((1, 1), (1,))])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(shape, norm, affine):
    w = Const(randn(*norm, seed=1)) if affine else None
    b = Const(randn(*norm, seed=2)) if affine else None
    check_op("layer_norm", [randn(*shape) * 3 + 1, w, b], {"normalized_shape": norm, "eps": 1e-5})


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_group_norm(groups):
    check_op("group_norm", [randn(2, 6, 5, 3), Const(randn(6, seed=1)), Const(randn(6, seed=2))],
             {"groups": groups, "eps": 1e-5})


def test_batch_norm():
    var = randn(5, seed=3).abs() + 0.1
    check_op("batch_norm", [randn(2, 5, 4, 3), Const(randn(5, seed=1)), Const(var),
                            Const(randn(5, seed=2)), Const(randn(5, seed=4))], {"eps": 1e-5})


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape,axis", [((3, 17), -1), ((2, 5, 4), 1), ((4,), 0), ((2, 3, 1), 2)])
def test_softmax(op, shape, axis):
    x = randn(*shape) * 4
    check_op(op, [x], {"axis": axis})


def test_softmax_masked_rows():
    x = randn(3, 6)
    x[1] = -math.inf
    x[2, :4] = -math.inf
    check_op("softmax", [x], {"axis": -1})


# ------------------------------------------------------------------------------- reductions
REDUCE_CASES = [((3, 5, 4), (2,), False), ((3, 5, 4), (1,), True), ((3, 5, 4), (0, 2), False),
                ((3, 5, 4), (), False), ((2, 3, 4, 5), (1, 2), True), ((7,), (0,), False)]


@pytest.mark.parametrize("op", ["sum", "mean", "prod", "amax", "amin", "logsumexp"])
@pytest.mark.parametrize("shape,axes,keepdim", REDUCE_CASES)
def test_reduce_float(op, shape, axes, keepdim):
    check_op(op, [randn(*shape)], {"axes": axes, "keepdim": keepdim}, threads=(2,))


@pytest.mark.parametrize("op", ["var", "std"])
@pytest.mark.parametrize("correction", [0.0, 1.0])
def test_reduce_var(op, correction):
    check_op(op, [randn(3, 8, 5)], {"axes": (1,), "keepdim": False, "correction": correction})
    check_op(op, [randn(3, 8, 5)], {"axes": (0, 2), "keepdim": True, "correction": correction})


@pytest.mark.parametrize("op", ["sum", "prod", "amax", "amin", "all", "any"])
def test_reduce_int_bool(op):
    x = torch.tensor([[3, -1, 0, 2], [1, 1, 5, -2]])
    check_op(op, [x], {"axes": (1,), "keepdim": False})
    check_op(op, [x > 0], {"axes": (0,), "keepdim": True})


@pytest.mark.parametrize("op", ["argmax", "argmin"])
@pytest.mark.parametrize("axis,keepdim", [(None, False), (0, True), (1, False), (-1, True)])
def test_arg_reduce(op, axis, keepdim):
    x = randn(4, 7)
    x[2, 3] = x[2, 5] = 10.0 if op == "argmax" else -10.0  # ties: first index wins
    check_op(op, [x], {"axis": axis, "keepdim": keepdim})


# ------------------------------------------------------------------------------------ shape
@pytest.mark.parametrize("op,shape,attrs", [
    ("permute", (2, 3, 4), {"perm": (2, 0, 1)}),
    ("expand", (3, 1), {"shape": (2, 3, 5)}),
    ("slice", (5, 7), {"axis": 1, "start": 1, "end": 6, "step": 2}),
    ("slice", (5, 7), {"axis": 0, "start": -3, "end": 2**63 - 1, "step": 1}),
    ("select", (4, 3, 2), {"axis": 1, "index": -1}),
    ("flip", (3, 4, 2), {"axes": (0, 2)}),
    ("tile", (2, 3), {"repeats": (2, 1, 3)}),
    ("reshape", (4, 6), {"shape": (3, -1, 2)}),
    ("squeeze", (3, 1, 2), {"axes": (1,)}),
    ("unsqueeze", (3, 2), {"axis": 1}),
    ("pad", (2, 3, 4), {"pads": (1, 2, 0, 1), "mode": "constant", "value": 0.5}),
    ("pad", (2, 3, 4), {"pads": (-1, 2), "mode": "constant", "value": 0.0}),
])
def test_shape_ops(op, shape, attrs):
    check_op(op, [randn(*shape)], attrs)


def test_split_concat():
    check_op("split", [randn(3, 10)], {"axis": 1, "sizes": (3, 0, 7)})
    check_op("concat", [randn(2, 3), randn(2, 1, seed=1), randn(2, 4, seed=2)], {"axis": 1})
    check_op("concat", [torch.tensor([[1, 2]]), torch.tensor([[3, 4], [5, 6]])], {"axis": 0})


def test_views_feeding_kernels():
    """A permuted view reshaped (needs a copy), a slice into an elementwise op, a view output."""
    def f(x):
        t = x.permute(0, 2, 1).reshape(2, -1)
        s = x[:, 1:, ::2] * 2.0
        return t.softmax(-1), s, x.transpose(1, 2)

    x = randn(2, 4, 5)
    g = graphopt.trace(_Fn(f), (x,))
    check_graph(g, [x])


class _Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


# -------------------------------------------------------------------------------- attention
def _attention_args(b, h, l, s, e, ev, seed=0):
    return randn(b, h, l, e, seed=seed), randn(b, h, s, e, seed=seed + 1), randn(b, h, s, ev,
                                                                                seed=seed + 2)


@pytest.mark.parametrize("b,h,l,s,e,ev", [(1, 1, 1, 1, 4, 4), (2, 3, 5, 7, 8, 6),
                                          (1, 2, 130, 700, 16, 16), (1, 1, 64, 64, 64, 64)])
@pytest.mark.parametrize("causal", [False, True])
def test_attention(b, h, l, s, e, ev, causal):
    q, k, v = _attention_args(b, h, l, s, e, ev)
    check_op("attention", [q, k, v, None], {"is_causal": causal, "scale": None}, threads=(2,))


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("mask_shape", [(5, 9), (2, 1, 1, 9), (1, 3, 5, 9), (2, 1, 5, 1),
                                        "transposed"])
def test_attention_masks(kind, mask_shape):
    """Masks of every layout the kernel reads: contiguous rows, rows broadcast along the keys
    (stride 0) and a transposed view (stride > 1 along the keys)."""
    q, k, v = _attention_args(2, 3, 5, 9, 8, 8)
    m = randn(9, 5, seed=9).t() if mask_shape == "transposed" else randn(*mask_shape, seed=9)
    mask = m > -0.5 if kind == "bool" else m
    if kind == "bool":
        mask[..., 0, :] = False  # a fully masked row -> zeros
    check_op("attention", [q, k, v, mask], {"scale": 0.3})


def test_attention_gqa_and_long_causal():
    q, k, v = randn(1, 4, 70, 8), randn(1, 2, 600, 8, seed=1), randn(1, 2, 600, 8, seed=2)
    check_op("attention", [q, k, v, None], {"enable_gqa": True, "scale": None}, threads=(2,))
    q, k, v = _attention_args(1, 2, 600, 600, 8, 8)
    check_op("attention", [q, k, v, None], {"is_causal": True, "scale": None}, threads=(2,))


def test_attention_reads_head_views_in_place():
    """linear -> reshape -> permute -> attention -> permute -> reshape: no copies planned."""
    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(16, 48)

        def forward(self, x):
            q, k, v = self.qkv(x).split(16, dim=-1)
            split = lambda t: t.view(1, 6, 4, 4).transpose(1, 2)
            a = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
            return a.transpose(1, 2).reshape(1, 6, 16)

    x = randn(1, 6, 16)
    g = graphopt.trace(Heads().eval(), (x,))
    fn = check_graph(g, [x])
    kernels = [s.kernel for s in fn.plan.steps]
    assert kernels == ["gemm", "attention"], kernels


# ------------------------------------------------------------------------- other ISA paths
def _main_run_isa() -> str:
    from graphopt import _C

    return _C.native_vec_isa()


# The main run takes the best ISA of this CPU; each narrower path is rerun in a subprocess
# (on a CPU without AVX-512 the main run already is the AVX2 path).
_NARROWER_PATHS = [("GRAPHOPT_DISABLE_AVX2", "portable")]
if _main_run_isa() == "avx512":
    _NARROWER_PATHS.append(("GRAPHOPT_DISABLE_AVX512", "avx2_fma"))


@pytest.mark.skipif(os.environ.get("GRAPHOPT_DISABLE_AVX2") not in (None, "", "0"),
                    reason="already on the portable path")
@pytest.mark.parametrize("env_var,isa", _NARROWER_PATHS, ids=[i for _, i in _NARROWER_PATHS])
def test_portable_path(env_var, isa):
    """The same kernel tests on the narrower kernels (portable baseline ISA; AVX2 on an
    AVX-512 CPU)."""
    env = dict(os.environ, **{env_var: "1"})
    tests = os.path.dirname(os.path.abspath(__file__))
    check = subprocess.run([sys.executable, "-c", "from graphopt import _C; "
                            "print(_C.native_vec_isa())"], env=env, capture_output=True,
                           text=True, check=True)
    assert check.stdout.strip() == isa
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         os.path.join(tests, "test_native_kernels.py"),
         os.path.join(tests, "test_native_elementwise.py"),
         os.path.join(tests, "test_native_kv_attention.py"),
         # (not the traced decoder step: tracing it again costs 20 s and adds no kernel case)
         "-k", ("not portable and not traced_decoder and (linear or conv or attention or norm "
                "or softmax or unary or binary_float or reduce_float or pool)")],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("groups", [1, 6])
@pytest.mark.parametrize("pads", [(0, 1, 0, 1), (2, 0, 1, 3), (1, 1)])
def test_zero_pad_folds_into_conv(groups, pads):
    """MobileNetV2's TF-style asymmetric "same" padding: pad(0, 1, 0, 1) -> conv stride 2."""
    class PadConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(6, 6, 3, stride=2, groups=groups)

        def forward(self, x):
            return self.conv(torch.nn.functional.pad(x, pads))

    x = randn(1, 6, 11, 10)
    g = graphopt.trace(PadConv().eval(), (x,))
    fn = check_graph(g, [x])
    assert [s.kernel for s in fn.plan.steps] == ["conv2d"]


def test_pad_with_other_readers_is_materialized():
    class PadTwice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            p = torch.nn.functional.pad(x, (1, 1, 1, 1))
            return self.conv(p), p.sum()

    x = randn(1, 3, 6, 5)
    fn = check_graph(graphopt.trace(PadTwice().eval(), (x,)), [x])
    assert "fill" in [s.kernel for s in fn.plan.steps]


def test_attention_constant_mask_that_masks_nothing_is_dropped():
    q, k, v = _attention_args(1, 2, 5, 7, 4, 4)
    for mask in (torch.ones(5, 7, dtype=torch.bool), torch.zeros(1, 1, 5, 7)):
        fn = check_op("attention", [q, k, v, Const(mask)], {"scale": None})
        assert fn.plan.steps[0].operands[4] is None


def test_batched_matmul_with_nested_parallel_loops():
    """Many batches of large products: the batch loop and the GEMM inside both want threads."""
    check_op("matmul", [randn(3, 130, 70), randn(3, 70, 150, seed=1)], threads=(2,))
    check_op("matmul", [randn(40, 9, 8), randn(40, 8, 7, seed=1)], threads=(2,))
