"""Tengine `quant_tool_uint8`'s KL (`-a 1`) and ACIQ (`-a 2`) activation ranges, as its source
computes them (tools/quantize/quant_tool_uint8.cpp and quant_utils.cpp of OAID/Tengine).

* KL: a 2048-bin histogram over the tensor's observed [min, max] (`histCount`: bin width
  (max - min) / 2047, a truncated zero point, zeros not counted), then ncnn's entropy search
  (`threshold_distribution`, 256 target bins) for the upper threshold, and the same search on the
  histogram reversed below that threshold for the lower one. The range is read off bin centres of a
  2048-bin grid, so it stays asymmetric (Tengine's KL does not force zero point 127).
* ACIQ: the Gaussian clip of |x|max for a tensor of N elements per image (its `elem_num`),
  `T = 3.92403714 * std`, `std = 2 * 0.175 * (1 + sqrt(pi * ln 4)) * absmax / sqrt(2 ln N)`;
  the range is [-T, T] (zero point 127 on every tensor, ReLU6 outputs included).

Everything is float32, in the C order of operations, so near-equal KL values break the same way
as in Tengine (the search is a numba loop: sequential float32 sums, not numpy's pairwise ones).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

HIST_BINS = 2048
TARGET_BINS = 256
ALPHA_GAUSSIAN_8BIT = 3.92403714
GAUSSIAN_CONST = (0.5 * 0.35) * (1 + math.sqrt(3.14159265358979323846 * math.log(4)))


def hist_count(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Tengine's `histCount(data, n, max, min)`: counts of the non-zero values of `x` in 2048 bins."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    bin_scale = np.float32((hi32 - lo32) / np.float32(2047.0))
    if not bin_scale > 0:
        return np.zeros(HIST_BINS, np.int64)
    bin_zp = np.float32(int(-lo32 / bin_scale))  # C int(): truncation toward zero
    v = x.reshape(-1).astype(np.float32, copy=False)
    v = v[v != 0]
    idx = (v / bin_scale + bin_zp).astype(np.int64)  # uint32_t(...) of a non-negative float truncates
    return np.bincount(np.clip(idx, 0, HIST_BINS - 1), minlength=HIST_BINS).astype(np.int64)


@njit(cache=True)
def _threshold_distribution(hist: np.ndarray, target_bin: int) -> int:  # pragma: no cover - compiled
    length = hist.shape[0]
    total = np.float32(0.0)
    for i in range(1, length):  # normalize_histogram skips bin 0
        total = np.float32(total + np.float32(hist[i]))
    dist = np.zeros(length, np.float32)
    for i in range(1, length):
        dist[i] = np.float32(np.float32(hist[i]) / total)
    target = target_bin
    best = np.float32(3.4028234663852886e38)
    tail = np.float32(0.0)
    for t in range(target_bin, length):
        tail = np.float32(tail + dist[t])
    quant = np.zeros(target_bin, np.float32)
    for threshold in range(target_bin, length):
        p = dist[:threshold].copy()
        p[threshold - 1] = np.float32(p[threshold - 1] + tail)
        tail = np.float32(tail - dist[threshold])
        quant[:] = 0
        per_bin = np.float32(np.float32(threshold) / np.float32(target_bin))
        for i in range(target_bin):
            start = np.float32(np.float32(i) * per_bin)
            end = np.float32(start + per_bin)
            left_upper = int(math.ceil(start))
            if np.float32(left_upper) > start:
                quant[i] = np.float32(quant[i] + np.float32(np.float32(np.float32(left_upper) - start) * dist[left_upper - 1]))
            right_lower = int(math.floor(end))
            if np.float32(right_lower) < end and right_lower < length:
                quant[i] = np.float32(quant[i] + np.float32(np.float32(end - np.float32(right_lower)) * dist[right_lower]))
            for j in range(left_upper, right_lower):
                quant[i] = np.float32(quant[i] + dist[j])
        expand = np.zeros(threshold, np.float32)
        for i in range(target_bin):
            start = np.float32(np.float32(i) * per_bin)
            end = np.float32(start + per_bin)
            count = np.float32(0.0)
            left_upper = int(math.ceil(start))
            left_scale = np.float32(0.0)
            if np.float32(left_upper) > start:
                left_scale = np.float32(np.float32(left_upper) - start)
                if dist[left_upper - 1] != 0:
                    count = np.float32(count + left_scale)
            right_lower = int(math.floor(end))
            right_scale = np.float32(0.0)
            right_inside = np.float32(right_lower) < end and right_lower < length
            if right_inside:
                right_scale = np.float32(end - np.float32(right_lower))
                if dist[right_lower] != 0:
                    count = np.float32(count + right_scale)
            for j in range(left_upper, right_lower):
                if dist[j] != 0:
                    count = np.float32(count + np.float32(1.0))
            if count == 0:
                continue  # every bin of this chunk is empty: nothing to spread
            value = np.float32(quant[i] / count)
            if np.float32(left_upper) > start and dist[left_upper - 1] != 0:
                expand[left_upper - 1] = np.float32(expand[left_upper - 1] + np.float32(value * left_scale))
            if right_inside and right_lower < threshold and dist[right_lower] != 0:
                expand[right_lower] = np.float32(expand[right_lower] + np.float32(value * right_scale))
            for j in range(left_upper, right_lower):
                if dist[j] != 0:
                    expand[j] = np.float32(expand[j] + value)
        kl = np.float32(0.0)
        for i in range(threshold):
            if p[i] != 0:
                if expand[i] == 0:
                    kl = np.float32(kl + np.float32(1.0))
                else:
                    kl = np.float32(kl + np.float32(p[i] * np.float32(math.log(np.float32(p[i] / expand[i])))))
        if kl < best:
            best = kl
            target = threshold
    return target


def threshold_distribution(hist: np.ndarray, target_bin: int = TARGET_BINS) -> int:
    """ncnn's / Tengine's entropy threshold: the bin count (>= target_bin) whose clipped
    distribution is closest in KL divergence to its `target_bin`-level quantization."""
    return int(_threshold_distribution(np.ascontiguousarray(hist, dtype=np.int64), int(target_bin)))


def kl_range(hist: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """Tengine's KL range of a tensor from its `hist_count` histogram over its observed [lo, hi]."""
    top = threshold_distribution(hist)
    reversed_below = np.ascontiguousarray(hist[top::-1])
    bottom = top - threshold_distribution(reversed_below) + 1
    lo32 = np.float32(lo)
    step = np.float32((np.float32(hi) - lo32) / np.float32(2048.0))
    edge = lambda j: float(np.float32(np.float32(step * np.float32(j + 0.5)) + lo32))  # noqa: E731
    return edge(bottom), edge(top)


def aciq_clip(absmax: float, elements: int) -> float:
    """Tengine's `compute_aciq_gaussian_clip(absmax, N, 8)`."""
    std = (float(np.float32(absmax)) * 2 * GAUSSIAN_CONST) / math.sqrt(2 * math.log(max(elements, 2)))
    return float(np.float32(ALPHA_GAUSSIAN_8BIT * std))
