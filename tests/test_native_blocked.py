"""The channel-blocked convolution layout of the native backend (graphopt/native/lower/blocked.py,
csrc/rt_blocked.cpp): torch models traced, optimized and run with layout="blocked" against
eager torch, on the kernel set this process picked; the file is rerun with the portable
kernels by test_other_kernel_sets. Each case also pins which steps the plan holds: blocked
convolutions, and reorders only at the edges."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphopt
from graphopt import _C, zoo
from graphopt.errors import GraphoptError
from graphopt.native.errors import NativeError

F32 = np.float32


def _run(model, x, layout="blocked", pipeline="default"):
    model.eval()
    with torch.no_grad():
        ref = model(x)
    graph = graphopt.optimize(graphopt.trace(model, (x,)), pipeline)
    fn = graphopt.compile(graph, backend="native", threads=2, layout=layout)
    out = fn(x)
    kernels = collections.Counter(step.kernel for step in fn.plan.steps)
    return ref, out, kernels


def _assert_close(out, ref, rtol=1e-4):
    assert ref.abs().max() > 1e-3  # not vacuous
    err = (out - ref).abs().max() / ref.abs().max()
    assert err <= rtol, f"max error {err:.3g} relative to the largest output"


class Chain(nn.Module):
    """conv (plain input) -> conv -> depthwise -> conv: every reader of the inner values is
    a blocked convolution, so only the last output is reordered."""

    def __init__(self, c_in, mid, k=3, stride=1, pad=1, dil=1, act=nn.ReLU, bias=True):
        super().__init__()
        self.a = nn.Conv2d(c_in, mid, k, stride, pad, dil, bias=bias)
        self.b = nn.Conv2d(mid, mid, 1, bias=bias)
        self.dw = nn.Conv2d(mid, mid, k, stride, pad, dil, groups=mid, bias=bias)
        self.c = nn.Conv2d(mid, 5, k, 1, pad, bias=bias)
        self.act = act()

    def forward(self, x):
        x = self.act(self.a(x))
        x = self.act(self.b(x))
        x = self.act(self.dw(x))
        return self.c(x)


@pytest.mark.parametrize("c_in,mid,k,stride,pad,dil,act,size", [
    (3, 16, 3, 1, 1, 1, nn.ReLU, 9),
    (3, 24, 3, 2, 1, 1, nn.ReLU6, 13),      # 24 channels: a half-empty second block
    (5, 33, 5, 1, 2, 1, nn.SiLU, 11),       # three blocks, the last with one channel
    (16, 32, 3, 1, 2, 2, nn.Sigmoid, 10),   # dilation
    (8, 17, 1, 1, 0, 1, nn.GELU, 7),        # 1x1 everywhere: the flat path
    (4, 40, 7, 2, 3, 1, nn.Hardswish, 23),  # 7x7 stride 2, rows wider than one tile
    (2, 16, 3, 1, 0, 1, nn.Tanh, 30),       # no padding: taps stay inside, no scratch
    (20, 16, 3, 2, 1, 1, nn.ReLU, 12),      # plain padded input over two channel blocks
    (3, 16, 3, 2, 1, 1, nn.ReLU, 230),      # rows of 115 pixels: two chunks per row
    (32, 16, 3, 1, 1, 1, nn.ReLU, 9),       # C * kh * kw = 288: the plain zero-bordered copy
])
def test_conv_chains_match_torch(c_in, mid, k, stride, pad, dil, act, size):
    torch.manual_seed(0)
    model = Chain(c_in, mid, k, stride, pad, dil, act)
    x = torch.randn(2, c_in, size, size)
    ref, out, kernels = _run(model, x)
    _assert_close(out, ref)
    assert kernels["conv2d_blocked"] == 4 and kernels["conv2d"] == 0
    assert kernels["from_blocked"] == 1 and kernels["to_blocked"] == 0


def test_nchw_layout_uses_no_blocked_kernel():
    torch.manual_seed(0)
    ref, out, kernels = _run(Chain(3, 16), torch.randn(1, 3, 12, 12), layout="nchw")
    _assert_close(out, ref)
    assert kernels["conv2d"] == 4
    assert not {"conv2d_blocked", "from_blocked", "to_blocked"} & set(kernels)


def test_auto_layout_follows_the_kernel_set():
    torch.manual_seed(0)
    _, _, kernels = _run(Chain(3, 16), torch.randn(1, 3, 12, 12), layout="auto")
    avx512 = _C.cpu_features()["blocked_conv_kernel"] == "avx512"
    assert kernels["conv2d_blocked"] == (4 if avx512 else 0)


class Residual(nn.Module):
    """ResNet-style: conv-bn-relu, max pool, a bottleneck with a residual add (fused into the
    last convolution), a global average pool and a linear head."""

    def __init__(self, c=24):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 5, 2, 2, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.body = nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(c, c, 1), nn.BatchNorm2d(c))
        self.head = nn.Linear(c, 7)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = F.relu(self.body(x) + x)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_residual_block_pools_and_head():
    torch.manual_seed(0)
    model = Residual()
    for m in model.modules():  # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ref, out, kernels = _run(model, torch.randn(2, 3, 31, 29))
    _assert_close(out, ref)
    assert kernels["conv2d_blocked"] == 4
    assert kernels["max_pool2d_blocked"] == 1 and kernels["global_avg_pool_blocked"] == 1
    assert kernels["from_blocked"] == 0 and kernels["to_blocked"] == 0


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pool_edges_and_nan(ceil_mode):
    conv = nn.Conv2d(3, 20, 3, padding=1)
    torch.manual_seed(0)
    model = nn.Sequential(conv, nn.MaxPool2d(3, 2, 1, dilation=1, ceil_mode=ceil_mode),
                          nn.Conv2d(20, 4, 1))
    x = torch.randn(1, 3, 10, 9)
    ref, out, kernels = _run(model, x)
    _assert_close(out, ref)
    assert kernels["max_pool2d_blocked"] == 1
    x[0, 0, 4, 4] = float("nan")  # NaN propagates through conv and max pool as in torch
    graph = graphopt.optimize(graphopt.trace(model.eval(), (x,)), "default")
    got = graphopt.compile(graph, backend="native", threads=2, layout="blocked")(x)
    with torch.no_grad():
        want = model(x)
    assert torch.equal(torch.isnan(got), torch.isnan(want))


class TfPad(nn.Module):
    """An explicit zero pad between two convolutions (MobileNet's TF-style padding): folded
    into the blocked depthwise convolution, no copy."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 1)
        self.dw = nn.Conv2d(32, 32, 3, stride=2, groups=32)
        self.b = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        return self.b(self.dw(F.pad(F.relu(self.a(x)), (0, 1, 0, 1))))


def test_zero_pad_folds_into_blocked_convolution():
    torch.manual_seed(0)
    ref, out, kernels = _run(TfPad(), torch.randn(2, 3, 14, 14))
    _assert_close(out, ref)
    assert kernels["conv2d_blocked"] == 3 and kernels["pad"] == 0 and kernels["copy"] == 0


class Mixed(nn.Module):
    """A blocked value with a plain reader (a channel softmax) whose result comes back as a
    convolution's residual: reorders appear exactly where a reader needs them."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 20, 3, padding=1)
        self.c = nn.Conv2d(20, 20, 1)

    def forward(self, x):
        z = self.b(F.relu(self.a(x)))
        return self.c(z) + torch.softmax(z, dim=1)


def test_plain_readers_get_one_reorder():
    torch.manual_seed(0)
    ref, out, kernels = _run(Mixed(), torch.randn(2, 3, 8, 8))
    _assert_close(out, ref)
    # z: reordered once for the softmax; the softmax: reordered to blocked as c's residual;
    # c's output: reordered as the graph output.
    assert kernels["conv2d_blocked"] == 3 and kernels["conv2d"] == 0
    assert kernels["from_blocked"] == 2 and kernels["to_blocked"] == 1


def _first(outputs):
    """The last hidden state of a transformers model output (or a plain tensor)."""
    outputs = getattr(outputs, "last_hidden_state", outputs)
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def test_mobilenetv2_and_resnet_blocks_match_torch():
    """Real architectures (reinitialized so outputs are not degenerate), fewer layers."""
    for name, options in (("mobilenetv2", {"size": 64}),
                          ("resnet50", {"size": 64, "depths": (1, 1, 1, 1)})):
        model, args = zoo.get(name, **options)
        with torch.no_grad():
            ref = model(*args)
        ref = _first(ref)
        graph = graphopt.optimize(graphopt.trace(model, args), "default")
        fn = graphopt.compile(graph, backend="native", threads=2, layout="blocked")
        out = fn(*args)
        out = _first(out)
        _assert_close(out, ref)
        kernels = collections.Counter(step.kernel for step in fn.plan.steps)
        assert kernels["conv2d"] == 0 and kernels["conv2d_blocked"] > 10, (name, kernels)
        assert kernels["to_blocked"] == 0, (name, kernels)


def test_bad_layout_option_is_refused():
    graph = graphopt.trace(Chain(3, 16).eval(), (torch.randn(1, 3, 8, 8),))
    with pytest.raises(GraphoptError, match="layout must be one of"):
        graphopt.compile(graph, backend="native", layout="nhwc")


class GroupedChain(nn.Module):
    """Grouped convolutions between blocked ones (ResNeXt's bottleneck and wider groups)."""

    def __init__(self, width, groups, stride):
        super().__init__()
        self.reduce = nn.Conv2d(8, width, 1)
        self.grouped = nn.Conv2d(width, width, 3, stride, 1, groups=groups)
        wide = width % 16 == 0 and width >= 32  # groups of 16 / 32 channels too
        self.wide = nn.Conv2d(width, 2 * width, 3, 1, 1, groups=width // 16) if wide else None
        self.expand = nn.Conv2d(2 * width if wide else width, 8, 1)

    def forward(self, x):
        y = F.relu(self.reduce(x))
        y = F.relu(self.grouped(y))
        if self.wide is not None:
            y = F.relu(self.wide(y))
        return self.expand(y) + x


@pytest.mark.parametrize("width,groups,stride", [(32, 8, 1), (128, 32, 2), (24, 6, 1),
                                                 (64, 4, 1), (48, 12, 2), (20, 5, 1)])
def test_grouped_convolutions_run_blocked(width, groups, stride):
    """Groups of 4 channels (ResNeXt 32x4d), 16-multiples, and a width that is no multiple of
    16 (the last block is partial) all run as block-diagonal blocked convolutions."""
    torch.manual_seed(0)
    model = GroupedChain(width, groups, stride) if stride == 1 else nn.Sequential(
        nn.Conv2d(8, width, 1), nn.ReLU(), nn.Conv2d(width, width, 3, stride, 1, groups=groups),
        nn.ReLU(), nn.Conv2d(width, 8, 1))
    ref, out, kernels = _run(model, torch.randn(2, 8, 11, 9))
    _assert_close(out, ref)
    assert "conv2d" not in kernels and kernels["from_blocked"] == 1, kernels


def test_resnext_blocks_match_torch():
    """The zoo's ResNeXt (one bottleneck per stage, 64 px): every convolution blocked."""
    model, (x,) = zoo.get("resnext50", depths=(1, 1, 1, 1), size=64)
    ref, out, kernels = _run(model, x)
    _assert_close(out, ref)
    assert "conv2d" not in kernels and kernels["conv2d_blocked"] == 17, kernels


@pytest.mark.parametrize("ints,operands,match", [
    ([1, 4, 3, 3, 6, 1, 1, 1, 1, 0, 0, 1, 1, 2, 3, 3, 0, 1], 3,
     "do not tile 16-channel blocks"),
    ([1, 4, 3, 3, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 3, 3, 0, 1], 3, "needs a .*scratch operand"),
])
def test_raw_blocked_conv_misuse_raises(ints, operands, match):
    w = np.zeros(4 * 4 * 9, F32)
    plan = _C.NativePlan(1)
    plan.add_constant(w.ctypes.data, w.nbytes)
    ops = [(0, 0, 0), (0, 0, 0), (1, 0, 0)][:operands]
    with pytest.raises(NativeError, match=match):
        plan.add_step("conv2d_blocked", "%node", ops, ints, [0.0, 0.0])
    assert plan.num_steps == 0


def _kernels_with(env: str | None) -> str:
    environ = dict(os.environ)
    if env:
        environ[env] = "1"
    code = "from graphopt import _C; print(_C.cpu_features()['blocked_conv_kernel'])"
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_other_kernel_sets():
    """GRAPHOPT_DISABLE_AVX512=1 picks the portable blocked kernels (the AVX2 build keeps NCHW
    under "auto"), and the whole file passes on them (rerun in a subprocess unless they are
    this run's own)."""
    assert _kernels_with("GRAPHOPT_DISABLE_AVX512") == "portable"
    if _C.cpu_features()["blocked_conv_kernel"] == "portable":
        return  # the tests above already ran on the portable kernels
    environ = dict(os.environ, GRAPHOPT_DISABLE_AVX512="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
         "-k", "not other_kernel_sets"],
        env=environ, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-0.5, 0.7)])
def test_register_activations_match_torch_with_nan(act):
    """relu / relu6 / clamp run in registers in the blocked epilogue: same values and NaN
    propagation as torch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 20, 3, padding=1), act, nn.Conv2d(20, 20, 3, padding=1,
                          groups=20), act, nn.Conv2d(20, 4, 1)).eval()
    x = torch.randn(1, 3, 9, 9)
    x[0, 1, 2, 3] = float("nan")
    graph = graphopt.optimize(graphopt.trace(model, (x,)), "default")
    fn = graphopt.compile(graph, backend="native", threads=2, layout="blocked")
    got = fn(x)
    with torch.no_grad():
        want = model(x)
    assert collections.Counter(s.kernel for s in fn.plan.steps)["conv2d_blocked"] == 3
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(want).any()
    finite = ~torch.isnan(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride,size,residual", [
    (2, 14, True),        # ResNet's downsampling projection
    (2, 7, False),        # odd size: the last row/column of the input is not read
    ((2, 1), 9, False),   # stride along one axis only
    (3, 10, True),
])
def test_strided_1x1_reads_a_subsampled_copy(stride, size, residual):
    """A strided 1x1 convolution of a blocked input copies the pixels it reads into a compact
    scratch and runs as one long row: same values as torch, the scratch in the step."""

    class Down(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 40, 3, padding=1)
            self.down = nn.Conv2d(40, 24, 1, stride=stride)
            self.main = nn.Conv2d(40, 24, 1, stride=stride)

        def forward(self, x):
            y = F.relu(self.a(x))
            out = self.main(y)
            return F.relu(out + self.down(y)) if residual else out

    torch.manual_seed(0)
    model, x = Down().eval(), torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
    fn = graphopt.compile(graphopt.optimize(graphopt.trace(model, (x,)), "default"),
                          backend="native", threads=2, layout="blocked")
    _assert_close(fn(x), ref)
    # ints: N C H W Co kh kw sh sw ...; operand 5: the scratch
    strided = [s for s in fn.plan.steps if s.kernel == "conv2d_blocked"
               and s.ints[5:7] == [1, 1] and s.ints[7:9] != [1, 1]]
    assert len(strided) == (2 if residual else 1)
    assert all(s.operands[5] is not None for s in strided)
