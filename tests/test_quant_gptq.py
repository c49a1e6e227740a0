"""rounding='gptq': error-compensating rounding of weight-only blocks (graphopt/quant/gptq.py)."""

import numpy as np
import pytest
import torch

import graphopt
from graphopt.ops.quant import unpack_blocks
from graphopt.quant.gptq import DAMP, InputHessian, gptq_blocks
from graphopt.quant.weight_only import quantize_blocks


def _dequantized(codes, scales, bits, block, k):
    w = unpack_blocks(torch.from_numpy(codes), bits, k).double() - 2 ** (bits - 1)
    return (w * torch.from_numpy(scales).double().repeat_interleave(block, 1)[:, :k]).numpy()


def _correlated_inputs(rows, k, seed):
    """Samples (``seed``) of one distribution like a transformer layer's inputs: mixed
    channels, a few of them large (outliers)."""
    layer = np.random.default_rng(12345)
    mixing = layer.standard_normal((k, k)) / np.sqrt(k) + np.eye(k)
    mixing[:, layer.choice(k, 4, replace=False)] *= 8.0
    return np.random.default_rng(seed).standard_normal((rows, k)) @ mixing


def _hessian(x):
    h = InputHessian(x.shape[1])
    h.add(torch.from_numpy(x))
    return h


def _gptq_by_the_paper(w, x, bits, block):
    """GPTQ without lazy batches, from the paper's Algorithm 1 (numpy, float64) with its
    activation order and static groups (round-to-nearest's scales): the codes the library's
    batched implementation must reproduce."""
    n, k = w.shape
    h = x.T @ x / x.shape[0]
    order = np.argsort(-np.diag(h), kind="stable")
    h = h[order][:, order]
    h[np.diag_indices(k)] += DAMP * np.mean(np.diag(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor of H^-1
    scales = quantize_blocks(w, bits, block)[1].astype(np.float64)
    w = w.astype(np.float64)[:, order]
    qmax = 2 ** (bits - 1) - 1
    codes = np.zeros((n, k), np.int64)
    for i in range(k):
        scale = scales[:, order[i] // block]
        codes[:, order[i]] = np.clip(np.round(w[:, i] / scale), -qmax, qmax)
        err = (w[:, i] - codes[:, order[i]] * scale) / u[i, i]
        w[:, i + 1:] -= np.outer(err, u[i, i + 1:])
    return codes


@pytest.mark.parametrize("bits, block, k", [(4, 32, 256), (4, 64, 300), (8, 16, 160)])
def test_codes_follow_the_algorithm_and_beat_nearest(bits, block, k):
    """The batched implementation takes the paper's column-by-column decisions (a few codes may
    differ where float sums round differently at a tie) and keeps round-to-nearest's scales; on
    held-out inputs of the calibration distribution its output error is well below
    round-to-nearest's."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, k)).astype(np.float32)
    calib, held_out = _correlated_inputs(2048, k, 1), _correlated_inputs(1024, k, 2)
    codes, scales = gptq_blocks(w, _hessian(calib), bits, block)
    np.testing.assert_array_equal(scales, quantize_blocks(w, bits, block)[1])
    n_blocks = -(-k // block)
    assert codes.shape == (48, n_blocks, block * bits // 8) and scales.shape == (48, n_blocks)
    centred = unpack_blocks(torch.from_numpy(codes), bits, k).numpy() - 2 ** (bits - 1)
    assert np.mean(centred == _gptq_by_the_paper(w, calib, bits, block)) > 0.99
    gptq = _dequantized(codes, scales, bits, block, k)
    nearest = _dequantized(*quantize_blocks(w, bits, block), bits, block, k)

    def error(q):
        return np.linalg.norm(held_out @ (w - q).T) / np.linalg.norm(held_out @ w.T)

    assert error(gptq) < 0.75 * error(nearest), (error(gptq), error(nearest))


def test_isotropic_inputs_give_nearest_rounding():
    """With uncorrelated inputs of equal scale there is nothing to compensate: the codes and
    scales are round-to-nearest's exactly. Inputs that are always zero get any code."""
    w = np.random.default_rng(3).standard_normal((16, 96)).astype(np.float32)
    h = InputHessian(96)
    h.sum = torch.eye(96, dtype=torch.float64) * 7.0
    h.rows = 7
    np.testing.assert_array_equal(gptq_blocks(w, h, 4, 32)[0], quantize_blocks(w, 4, 32)[0])
    np.testing.assert_array_equal(gptq_blocks(w, h, 4, 32)[1], quantize_blocks(w, 4, 32)[1])
    h.sum[:32, :32] = 0  # dead inputs
    codes, scales = gptq_blocks(w, h, 4, 32)
    assert np.isfinite(scales).all()
    with pytest.raises(graphopt.GraphoptError, match="Hessian of inputs of width 96"):
        gptq_blocks(w[:, :64], h, 4, 32)


class _Block(torch.nn.Module):
    """An MLP block with a norm in front, like a transformer's."""

    def __init__(self, width=128):
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.up, self.down = torch.nn.Linear(width, 4 * width), torch.nn.Linear(4 * width, width)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


def test_quantize_with_gptq_end_to_end():
    """graphopt.quantize(..., rounding='gptq') on calibration batches: the same graph shape as
    round-to-nearest, a smaller output error on held-out inputs, the same result on native as
    in the reference; layers calibration saw fewer rows than inputs of round to nearest, with a
    warning."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(_Block(), _Block()).eval()
    mixing = torch.randn(128, 128) / 12 + torch.eye(128)
    mixing[:, :3] *= 6

    def batch(rows):
        return (torch.randn(rows, 128) @ mixing,)

    calibration, held_out = [batch(256) for _ in range(4)], batch(256)
    graph = graphopt.optimize(graphopt.trace(model, held_out))
    nearest = graphopt.quantize(graph, "weight-only", bits=4)
    gptq, rep = graphopt.quantize(graph, "weight-only", bits=4, rounding="gptq",
                                  calibration=calibration, report=True)
    assert "gptq (4 layers)" in str(rep)
    assert [n.op for n in gptq.nodes] == [n.op for n in nearest.nodes]
    with torch.no_grad():
        expected = model(*held_out)

    def error(g):
        return float((graphopt.run(g, *held_out) - expected).norm() / expected.norm())

    assert error(gptq) < 0.8 * error(nearest), (error(gptq), error(nearest))
    torch.testing.assert_close(graphopt.compile(gptq, backend="native")(*held_out),
                               graphopt.run(gptq, *held_out), rtol=1e-4, atol=1e-4)
    # one batch: 256 rows are enough for the 128-wide inputs, not for the 512-wide ones
    with pytest.warns(UserWarning, match="2 layer.s. fewer input rows than inputs"):
        few, rep = graphopt.quantize(graph, "weight-only", rounding="gptq",
                                     calibration=[batch(256)], report=True)
    assert "gptq (2 layers)" in str(rep)
    assert sum(n.op == "linear_weight_only" for n in few.nodes) == 4


def test_gptq_option_errors():
    graph = graphopt.optimize(graphopt.trace(_Block().eval(), (torch.randn(2, 128),)))
    with pytest.raises(graphopt.GraphoptError, match="needs calibration"):
        graphopt.quantize(graph, "weight-only", rounding="gptq")
    with pytest.raises(graphopt.GraphoptError, match="applies to mode='weight-only'"):
        graphopt.quantize(graph, "dynamic", rounding="gptq", calibration=[torch.randn(2, 128)])
    with pytest.raises(graphopt.GraphoptError, match="rounding"):
        graphopt.quantize(graph, "weight-only", rounding="best")
    with pytest.raises(graphopt.GraphoptError, match="calibration item 0 does not fit"):
        graphopt.quantize(graph, "weight-only", rounding="gptq",
                          calibration=[torch.randn(2, 64)])
    bad = torch.randn(2, 128)
    bad[0, 0] = float("nan")
    with pytest.raises(graphopt.GraphoptError, match="non-finite"):
        graphopt.quantize(graph, "weight-only", rounding="gptq", calibration=[bad])
