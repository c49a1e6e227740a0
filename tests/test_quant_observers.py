"""Calibration observers on known distributions, the doubling histogram, affine qparams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphopt.errors import QuantizationError
from graphopt.quant.observers import Histogram, affine_qparams, kl_threshold, make_observer


def _observe(name, data, chunks=4, **options):
    obs = make_observer(name, **options)
    for part in data.chunk(chunks):
        obs.update(part)
    return obs


def _quant_mse(data: torch.Tensor, lo: float, hi: float) -> float:
    scale, zp = affine_qparams(lo, hi)
    q = torch.clamp(torch.round(data / float(scale)) + zp, 0, 255)
    return float(((q - zp) * float(scale) - data).pow(2).mean())


def test_affine_qparams():
    scale, zp = affine_qparams(-1.0, 2.0)
    assert scale == np.float32(3.0 / 255.0) and zp == 85
    assert affine_qparams(1.0, 4.0) == (np.float32(4.0 / 255.0), 0)  # 0 always representable
    assert affine_qparams(0.0, 0.0) == (np.float32(1.0), 0)
    assert affine_qparams(-2.0, 1.0, "i8") == (np.float32(2.0 / 127.0), 0)


def test_minmax_is_exact_and_includes_zero():
    obs = _observe("minmax", torch.tensor([0.5, 3.0, 1.0, 2.0]), chunks=2)
    assert obs.range() == (0.0, 3.0)
    obs = _observe("minmax", torch.tensor([-2.0, -1.0]), chunks=1)
    assert obs.range() == (-2.0, 0.0)


def test_histogram_doubles_without_losing_counts():
    h = Histogram(bins=8)
    h.add(torch.tensor([0.1, -0.2, 0.3]))
    h.add(torch.tensor([5.0, -3.0]))  # range grows 0.3 -> 0.6 -> ... -> 9.6
    assert h.counts.sum() == 5 and h.limit >= 5.0
    centers = h.centers()[h.counts > 0]
    assert centers.min() < -2.0 and centers.max() > 4.0
    np.testing.assert_allclose(h.absolute().sum(), 5)


def test_percentile_matches_the_quantile():
    torch.manual_seed(0)
    data = torch.rand(200_000)
    lo, hi = _observe("percentile", data, percentile=99.0).range()
    assert lo == 0.0 and hi == pytest.approx(0.99, abs=2e-3)
    data = torch.randn(200_000)
    lo, hi = _observe("percentile", data, percentile=99.9).range()
    assert hi == pytest.approx(float(data.quantile(0.999)), abs=0.01)
    assert lo == pytest.approx(float(data.quantile(0.001)), abs=0.01)


def test_entropy_clips_a_heavy_tail_not_a_gaussian():
    torch.manual_seed(0)
    gauss = torch.randn(400_000)
    lo, hi = _observe("entropy", gauss).range()
    assert 3.5 < hi <= float(gauss.max()) + 1e-6 and lo == -hi or lo == float(gauss.min())
    heavy = torch.cat([torch.distributions.Laplace(0.0, 1.0).sample((400_000,)),
                       torch.tensor([200.0])])
    lo, hi = _observe("entropy", heavy).range()
    assert 5.0 < hi < 30.0  # the lone outlier at 200 is clipped
    relu = torch.relu(torch.randn(400_000))  # half exact zeros: they do not drag T down
    lo, hi = _observe("entropy", relu).range()
    assert lo == 0.0 and hi > 3.0


def test_kl_threshold_is_the_full_range_for_a_uniform_histogram():
    assert kl_threshold(np.ones(1024), levels=128) == 1024
    assert kl_threshold(np.zeros(1024), levels=128) == 1024  # no data: keep the range


def test_mse_minimizes_the_quantization_error():
    torch.manual_seed(0)
    data = torch.cat([torch.distributions.Laplace(0.0, 1.0).sample((200_000,)),
                      torch.tensor([40.0])])
    errors = {name: _quant_mse(data, *_observe(name, data).range())
              for name in ("minmax", "mse", "percentile")}
    assert errors["mse"] <= min(errors.values()) * 1.02, errors
    assert errors["mse"] < 0.8 * errors["minmax"]


def test_observer_errors():
    with pytest.raises(QuantizationError, match="unknown observer 'histogram'"):
        make_observer("histogram")
    with pytest.raises(QuantizationError, match="observer 'mse'"):
        make_observer("mse", percentile=3)
    with pytest.raises(QuantizationError, match="saw no data"):
        make_observer("minmax").range()
    with pytest.raises(QuantizationError, match="non-finite"):
        make_observer("entropy").update(torch.tensor([1.0, float("inf")]))
