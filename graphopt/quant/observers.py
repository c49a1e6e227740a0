"""Calibration observers: from the values a tensor takes on calibration data to the real range
``[lo, hi]`` that its int8 / u8 grid should cover.

* ``minmax``: the smallest and largest value seen (every outlier is kept, resolution may suffer);
* ``percentile{percentile=99.99}``: the two-sided percentile of the value distribution;
* ``entropy``: TensorRT's KL-divergence calibration: the clipping threshold T on ``|x|`` whose
  quantized distribution (``levels`` bins) is closest (KL) to the clipped reference;
* ``mse``: the range, a fraction of the min/max range, with the least expected quantization
  error (clipping error of the values outside + ``step**2 / 12`` rounding error inside).

The histogram observers share :class:`Histogram`: 2 x ``bins`` bins symmetric around 0 whose
range doubles (merging bin pairs, exact) when a new batch exceeds it, so one pass over the data
suffices and memory stays constant. Every range includes 0, so real zero is exact.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from graphopt.errors import QuantizationError

OBSERVERS = ("minmax", "percentile", "entropy", "mse")


def affine_qparams(lo: float, hi: float, dtype: str = "u8") -> tuple[np.float32, int]:
    """``(scale, zero_point)`` of the asymmetric grid covering ``[min(lo, 0), max(hi, 0)]``.

    u8: 255 steps, ``zp = round(-lo / scale)``; i8: symmetric, ``scale = max|.| / 127``, zp 0.
    A zero range gives scale 1 (any scale represents an all-zero tensor exactly).
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if dtype == "i8":
        amax = max(-lo, hi)
        return np.float32(amax / 127.0 if amax > 0 else 1.0), 0
    scale = np.float32((hi - lo) / 255.0)
    if not scale > 0:
        return np.float32(1.0), 0
    zp = int(np.clip(np.rint(-lo / scale), 0, 255))
    return scale, zp


class Observer:
    """Base class: ``update(tensor)`` once per calibration batch, then ``range()``."""

    name = ""

    def __init__(self) -> None:
        self.min = math.inf
        self.max = -math.inf
        self.batches = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float32)
        if x.numel() == 0:
            return
        if not bool(torch.isfinite(x).all()):
            raise QuantizationError(f"{self.name} observer got non-finite values (inf/nan)")
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.batches += 1
        self._update(x)

    def _update(self, x: torch.Tensor) -> None:
        pass

    def range(self) -> tuple[float, float]:
        """The real range to quantize, ``lo <= 0 <= hi``."""
        if self.batches == 0:
            raise QuantizationError(f"{self.name} observer saw no data")
        lo, hi = self._range()
        return min(lo, 0.0), max(hi, 0.0)

    def _range(self) -> tuple[float, float]:
        return self.min, self.max

    def qparams(self, dtype: str = "u8") -> tuple[np.float32, int]:
        return affine_qparams(*self.range(), dtype)


class MinMaxObserver(Observer):
    """The range of every value seen."""

    name = "minmax"


class Histogram:
    """Counts over ``[-limit, limit]`` in ``2 * bins`` equal bins; the range doubles as needed."""

    def __init__(self, bins: int = 2048):
        if bins < 2 or bins % 2:
            raise ValueError("Histogram bins (per side) must be even")
        self.bins = bins
        self.counts = np.zeros(2 * bins, np.float64)
        self.limit = 0.0

    @property
    def width(self) -> float:
        return self.limit / self.bins

    def add(self, x: torch.Tensor) -> None:
        amax = float(x.abs().max())
        if self.limit == 0.0:
            self.limit = amax if amax > 0 else 1e-12
        while amax > self.limit:
            self._double()
        hist = torch.histc(x.flatten(), bins=2 * self.bins, min=-self.limit, max=self.limit)
        self.counts += hist.to(torch.float64).numpy()

    def _double(self) -> None:
        pairs = self.counts.reshape(self.bins, 2).sum(axis=1)  # old bins 2m, 2m+1 -> one bin
        self.counts = np.zeros_like(self.counts)
        self.counts[self.bins // 2: self.bins // 2 + self.bins] = pairs
        self.limit *= 2.0

    def centers(self) -> np.ndarray:
        return -self.limit + (np.arange(2 * self.bins) + 0.5) * self.width

    def absolute(self) -> np.ndarray:
        """Counts of ``|x|`` in ``bins`` bins over ``[0, limit]``."""
        return self.counts[self.bins:] + self.counts[: self.bins][::-1]


class _HistogramObserver(Observer):
    # Exact zeros (ReLU outputs, padding) are exact on every grid that contains 0: the
    # error-driven observers leave them out, else the spike at 0 drags the range down.
    skip_zeros = False

    def __init__(self, bins: int = 2048):
        super().__init__()
        self.hist = Histogram(bins)

    def _update(self, x: torch.Tensor) -> None:
        if self.skip_zeros:
            x = x[x != 0]
            if x.numel() == 0:
                return
        self.hist.add(x)

    def _clip(self, lo: float, hi: float) -> tuple[float, float]:
        return max(lo, self.min), min(hi, self.max)


class PercentileObserver(_HistogramObserver):
    """``[q(1 - p), q(p)]`` of the value distribution, ``p = percentile / 100``."""

    name = "percentile"

    def __init__(self, percentile: float = 99.99, bins: int = 2048):
        if not 50.0 < percentile <= 100.0:
            raise QuantizationError(f"percentile must be in (50, 100], got {percentile}")
        super().__init__(bins)
        self.percentile = float(percentile)

    def _range(self) -> tuple[float, float]:
        h = self.hist
        cdf = np.cumsum(h.counts) / h.counts.sum()
        p = self.percentile / 100.0
        upper = int(np.searchsorted(cdf, p, side="left"))
        lower = int(np.searchsorted(cdf, 1.0 - p, side="right"))
        hi = -h.limit + (upper + 1) * h.width  # upper edge of the bin reaching p
        lo = -h.limit + lower * h.width  # lower edge of the bin leaving 1 - p
        return self._clip(lo, hi)


def kl_threshold(abs_counts: np.ndarray, levels: int, max_candidates: int = 512) -> int:
    """TensorRT-style entropy calibration on a histogram of ``|x|``: the number of bins ``i``
    (threshold ``i * width``) minimizing ``KL(P || Q)``. P is the histogram clipped to ``i``
    bins with the clipped-off mass added to its last bin; Q is the unclipped first ``i`` bins
    merged into ``levels`` levels and spread back evenly over the bins where P is non-zero.
    Clipping too hard piles mass into P's last bin that Q does not have; clipping too little
    merges many bins per level: the KL divergence balances the two."""
    n = len(abs_counts)
    if n <= levels or abs_counts.sum() == 0:
        return n
    step = max(1, (n - levels) // max_candidates)
    best, best_kl = n, math.inf
    tail = np.concatenate([np.cumsum(abs_counts[::-1])[::-1], [0.0]])  # tail[i] = sum(c[i:])
    for i in list(range(levels, n, step)) + [n]:
        raw = abs_counts[:i]
        p = raw.copy()
        p[-1] += tail[i]
        nonzero = p > 0
        group = (np.arange(i) * levels) // i
        mass = np.bincount(group, weights=raw, minlength=levels)
        filled = np.bincount(group, weights=nonzero, minlength=levels)
        q = np.where(nonzero, mass[group] / np.maximum(filled[group], 1), 0.0)
        q = np.where(nonzero & (q <= 0), 1e-12 * p.sum(), q)  # smoothing: P > 0 but Q empty
        ps, qs = p[nonzero] / p.sum(), q[nonzero] / q.sum()
        kl = float(np.sum(ps * np.log(ps / qs)))
        if kl < best_kl - 1e-12:
            best, best_kl = i, kl
    return best


class EntropyObserver(_HistogramObserver):
    """KL-divergence calibration (TensorRT): a symmetric threshold T on ``|x|``, then the
    range ``[max(min, -T), min(max, T)]``. ``levels`` defaults to 255 for non-negative data
    (the u8 grid spans [0, T]) and 128 otherwise (about half the grid on each side)."""

    name = "entropy"
    skip_zeros = True

    def __init__(self, levels: int | None = None, bins: int = 2048):
        super().__init__(bins)
        self.levels = levels

    def _range(self) -> tuple[float, float]:
        levels = self.levels or (255 if self.min >= 0 else 128)
        if self.hist.limit == 0.0:  # all zeros
            return 0.0, 0.0
        i = kl_threshold(self.hist.absolute(), levels)
        threshold = i * self.hist.width
        return self._clip(-threshold, threshold)


class MseObserver(_HistogramObserver):
    """The range with the least expected squared error of u8 quantization over the
    histogram: first ``a * [min, max]`` for ``candidates`` values of ``a`` in ``(0, 1]``, then
    the upper and the lower end alone (a one-sided outlier is clipped without shrinking the
    other side)."""

    name = "mse"
    skip_zeros = True

    def __init__(self, candidates: int = 100, bins: int = 2048):
        super().__init__(bins)
        self.candidates = int(candidates)

    def _error(self, centers, counts, lo: float, hi: float) -> float:
        scale, zp = affine_qparams(lo, hi)
        lo, hi = (0 - zp) * float(scale), (255 - zp) * float(scale)
        clipped = np.clip(centers, lo, hi)
        inside = clipped == centers
        return float(np.sum(counts[~inside] * (centers[~inside] - clipped[~inside]) ** 2)
                     + counts[inside].sum() * float(scale) ** 2 / 12.0)

    def _range(self) -> tuple[float, float]:
        lo, hi = min(self.min, 0.0), max(self.max, 0.0)
        if hi - lo <= 0 or self.hist.limit == 0.0:
            return 0.0, 0.0
        keep = self.hist.counts > 0
        centers, counts = self.hist.centers()[keep], self.hist.counts[keep]
        fractions = np.linspace(1.0 / self.candidates, 1.0, self.candidates)
        best = min(((a * lo, a * hi) for a in fractions),
                   key=lambda r: self._error(centers, counts, *r))
        lo, hi = best
        if hi > 0:
            hi = min((a * hi for a in fractions),
                     key=lambda h: self._error(centers, counts, lo, h))
        if lo < 0:
            lo = min((a * lo for a in fractions),
                     key=lambda v: self._error(centers, counts, v, hi))
        return float(lo), float(hi)


_CLASSES = {c.name: c for c in (MinMaxObserver, PercentileObserver, EntropyObserver,
                                 MseObserver)}


def make_observer(name: str, **options) -> Observer:
    """A fresh observer by name (``minmax``, ``percentile``, ``entropy``, ``mse``).

    Raises:
        QuantizationError: an unknown observer name or option.
    """
    cls = _CLASSES.get(name)
    if cls is None:
        raise QuantizationError(
            f"unknown observer '{name}'; known: {', '.join(OBSERVERS)}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise QuantizationError(f"observer '{name}': {exc}") from None
