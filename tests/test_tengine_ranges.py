"""Tengine's KL and ACIQ, pinned on small hand-made histograms (quant_tool_uint8's source)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from unified.backends.tengine.scheme import TengineScheme
from unified.quant.ranges import Histogram, aciq_tengine, kl_tengine
from unified.quant.tengine_ranges import aciq_clip, hist_count, kl_range, threshold_distribution


def test_aciq_is_the_gaussian_clip_of_the_absolute_maximum() -> None:
    """A ReLU6 output of 32x112x112 elements: T = 3.92403714 * 2 * 0.175 * (1 + sqrt(pi ln 4)) * 6
    / sqrt(2 ln N) = 5.003..., so Tengine clips [0, 6] near 5.0 with zero point 127."""
    n = 32 * 112 * 112
    by_hand = 3.92403714 * (2 * 0.175 * (1 + math.sqrt(math.pi * math.log(4))) * 6.0) / math.sqrt(2 * math.log(n))
    t = aciq_clip(6.0, n)
    assert t == pytest.approx(by_hand, rel=1e-6) and 4.99 < t < 5.01
    lo, hi = aciq_tengine(Histogram(0.0, 6.0, sample_size=n), 256)
    p = TengineScheme(symmetric=True).activation_params(lo, hi)
    assert (lo, hi) == (-t, t) and p.zero_point == 127 and p.scale == pytest.approx(2 * t / 255, abs=1e-6)


def test_hist_count_follows_tengine_binning() -> None:
    """bin width (max - min) / 2047, zero point int(1023.5) = 1023, truncation, zeros not counted."""
    x = np.array([-1.0, 0.0, 0.0, 0.001, 0.5, 1.0], np.float32)
    hist = hist_count(x, -1.0, 1.0)
    assert hist.sum() == 4  # the two zeros are skipped
    width = np.float32(2.0) / np.float32(2047.0)
    expected = [int(np.float32(v) / width + np.float32(1023)) for v in (-1.0, 0.001, 0.5, 1.0)]
    assert expected == [0, 1024, 1534, 2046]
    assert [int(i) for i in np.flatnonzero(hist)] == expected


def _threshold_float64(hist: np.ndarray, target: int = 256) -> int:
    """The same entropy search written plainly in float64 (an independent reading of the C code)."""
    dist = np.zeros(len(hist))
    dist[1:] = hist[1:] / hist[1:].sum()
    best, best_t = np.inf, target
    for t in range(target, len(hist)):
        p = dist[:t].copy()
        p[t - 1] += dist[t:].sum()
        per = t / target
        q = np.zeros(target)
        expand = np.zeros(t)
        for i in range(target):
            start, end = i * per, (i + 1) * per
            pieces = [(j, min(end, j + 1) - max(start, j)) for j in range(int(math.floor(start)), min(int(math.ceil(end)), len(dist)))]
            q[i] = sum(w * dist[j] for j, w in pieces)
            count = sum(w for j, w in pieces if dist[j] != 0)
            for j, w in pieces:
                if dist[j] != 0 and j < t:
                    expand[j] += q[i] / count * w
        kl = sum(1.0 if expand[i] == 0 else p[i] * math.log(p[i] / expand[i]) for i in range(t) if p[i] != 0)
        if kl < best:
            best, best_t = kl, t
    return best_t


def test_entropy_threshold_matches_a_plain_reading() -> None:
    """A bulk over bins 1-600 and a sparse tail to bin 1500: both readings pick the same threshold,
    well inside the histogram (the tail is clipped)."""
    rng = np.random.default_rng(0)
    values = np.abs(rng.laplace(0, 120, 20000))
    hist = np.bincount(np.minimum(values.astype(np.int64) + 1, 2047), minlength=2048)
    t = threshold_distribution(hist)
    assert t == _threshold_float64(hist)
    assert 256 <= t < int(values.max())


def test_kl_range_clips_each_side_and_stays_asymmetric() -> None:
    """Laplace activations centred at 1.0 with outliers on both sides: KL cuts both tails, and the
    range keeps its own zero point (Tengine's KL is not symmetric)."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.laplace(1.0, 0.5, 200000), [-9.0, 14.0]]).astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    h = Histogram(lo, hi, observed_lo=lo, observed_hi=hi, binning="tengine")
    h.add(x)
    kl_lo, kl_hi = kl_tengine(h, 256)
    assert (kl_lo, kl_hi) == kl_range(h.counts, lo, hi)
    assert lo < kl_lo < -1.0 and 3.0 < kl_hi < hi
    zp = TengineScheme().activation_params(kl_lo, kl_hi).zero_point
    assert zp != 127 and 0 < zp < 255
