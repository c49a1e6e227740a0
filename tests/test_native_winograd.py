"""Winograd F(2x2, 3x3) convolutions of the native backend (csrc/rt_winograd.{h,cpp}, chosen
in graphopt/native/lower/blocked.py): forced on (GRAPHOPT_NATIVE_WINOGRAD=1) against float64
torch and against the direct blocked kernel, at odd sizes, every padding it takes, fused
residuals and activations, batches; which convolutions "auto" picks; and the kernel's refusal
of a workspace on a convolution it cannot run. The file reruns itself on the portable blocked
kernels (test_portable_kernels)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphopt
from graphopt import _C
from graphopt.native.errors import NativeError
from graphopt.native.lower.blocked import WINOGRAD_ENV


class Block(nn.Module):
    """1x1 (so the 3x3 reads a blocked value) -> 3x3 (+ residual) -> activation."""

    def __init__(self, c, co, pad, act, residual, tf_pad=False):
        super().__init__()
        self.pre = nn.Conv2d(3, c, 1)
        self.conv = nn.Conv2d(c, co, 3, 1, 0 if tf_pad else pad)
        self.skip = nn.Conv2d(3, co, 1, padding=max(pad - 1, 0)) if residual else None
        self.act, self.pad, self.tf_pad = act, pad, tf_pad

    def forward(self, x):
        y = self.pre(x)
        z = self.conv(F.pad(y, (0, 1, 0, 1)) if self.tf_pad else y)
        if self.skip is not None:
            s = self.skip(x)
            z = z + s[..., :z.shape[-2], :z.shape[-1]]
        return self.act(z)


def _compile(model, x, mode):
    os.environ[WINOGRAD_ENV] = mode
    try:
        graph = graphopt.optimize(graphopt.trace(model, (x,)), "default")
        fn = graphopt.compile(graph, backend="native", threads=2, layout="blocked")
        out = fn(x)
    finally:
        os.environ.pop(WINOGRAD_ENV, None)
    winograd = [s for s in fn.plan.steps if s.kernel == "conv2d_blocked"
                and len(s.operands) > 6 and s.operands[6] is not None]
    return out, len(winograd)


def _rel_err(out, ref):
    assert ref.abs().max() > 1e-3  # not vacuous
    return float((out.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("c,co,size,pad,act,residual,batch", [
    (16, 16, 8, 1, nn.ReLU(), False, 1),
    (20, 33, 9, 1, nn.SiLU(), True, 2),      # odd size: half-empty last tiles; 33: 3 blocks
    (48, 17, 13, 2, nn.Identity(), True, 1),  # padding 2: outputs larger than the input
    (32, 64, 7, 0, nn.ReLU6(), False, 2),     # no padding
    (40, 40, 2, 1, nn.GELU(), False, 1),      # one tile
    (64, 64, 30, 1, nn.Hardtanh(-0.5, 0.5), True, 1),
])
def test_winograd_matches_torch_and_the_direct_kernel(c, co, size, pad, act, residual, batch):
    torch.manual_seed(0)
    model = Block(c, co, pad, act, residual).eval()
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        ref = model.double()(x.double())
    model.float()
    wino, used = _compile(model, x, "1")
    direct, unused = _compile(model, x, "0")
    assert used == 1 and unused == 0
    err_w, err_d = _rel_err(wino, ref), _rel_err(direct, ref)
    # Winograd adds only the rounding of its transforms: same order as the direct sum's.
    assert err_w <= 2e-6 and err_w <= 4 * err_d + 1e-7, (err_w, err_d)


def test_asymmetric_zero_pad_folds_into_winograd():
    """TensorFlow-style bottom/right padding (a pad node folded into the convolution): the
    input transform reads zeros past the input on those sides only."""
    torch.manual_seed(0)
    model = Block(32, 32, 0, nn.ReLU(), False, tf_pad=True).eval()
    x = torch.randn(1, 3, 11, 11)
    with torch.no_grad():
        ref = model.double()(x.double())
    model.float()
    out, used = _compile(model, x, "1")
    assert used == 1 and out.shape == ref.shape
    assert _rel_err(out, ref) <= 2e-6


def test_auto_picks_wide_stride1_3x3_only():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(),          # Winograd
        nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(),          # stride 2: direct
        nn.Conv2d(64, 16, 1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU(),          # 16 channels: direct under auto
        nn.Conv2d(16, 64, 3, 1, 1, dilation=1, groups=16)).eval()  # grouped: direct
    x = torch.randn(1, 3, 16, 16)
    _, used = _compile(model, x, "auto")
    assert used == 1
    _, forced = _compile(model, x, "1")
    assert forced == 2  # the 16-channel one too; never the strided or grouped one


def test_workspace_on_an_ineligible_convolution_is_refused():
    # N C H W Co kh kw sh sw ph pw dh dw groups Ho Wo act x_blocked: a stride-2 3x3
    ints = [1, 16, 8, 8, 16, 3, 3, 2, 2, 1, 1, 1, 1, 1, 4, 4, 0, 1]
    w = np.zeros(16 * 16 * 9, np.float32)
    plan = _C.NativePlan(1)
    plan.add_constant(w.ctypes.data, w.nbytes)
    ops = [(0, 0, 0), (0, 0, 0), (1, 0, 0), None, None, None, (0, 0, 0)]
    with pytest.raises(NativeError, match="Winograd runs only 3x3, stride-1"):
        plan.add_step("conv2d_blocked", "%node", ops, ints, [0.0, 0.0])
    assert plan.num_steps == 0


def test_portable_kernels():
    """The same file on the portable blocked kernels (GRAPHOPT_DISABLE_AVX512=1), in a
    subprocess unless they are this run's own."""
    if _C.cpu_features()["blocked_conv_kernel"] == "portable":
        return
    environ = dict(os.environ, GRAPHOPT_DISABLE_AVX512="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
         "-k", "not portable_kernels"],
        env=environ, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
