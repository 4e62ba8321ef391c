"""Choosing an activation's clipping range from its calibration histogram.

All estimators take a `Histogram` (counts of a tensor's values over fixed bins) and return
(lo, hi); the scheme then turns the range into a scale and zero point.

* minmax     - the observed extremes (RKNN `normal`, Tengine MIN-MAX).
* percentile - the 0.01% / 99.99% quantiles.
* mse        - the range minimizing expected squared quantization error over the histogram:
               rounding noise step^2/12 inside the range plus squared clipping error outside.
* kl         - the TensorRT / Tengine entropy calibration: the threshold T whose 128-bin
               quantized distribution has minimal KL divergence from the reference
               distribution clipped at T (Migacz, "8-bit Inference with TensorRT", 2017),
               applied to |x| and intersected with the observed range.
* aciq       - analytical clipping for a Laplace(b) distribution (Banner et al., "Post-training
               4-bit quantization", 2019): alpha = 9.89 * b at 8 bits, b = E|x - mean|; symmetric.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BINS = 2048


@dataclass
class Histogram:
    """Counts of values over `BINS` equal bins spanning [lo, hi], plus exact extremes and moments."""

    lo: float
    hi: float
    counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.float64))
    total: int = 0
    sum: float = 0.0
    #: the extremes actually observed (lo/hi above are widened to include 0)
    observed_lo: float = 0.0
    observed_hi: float = 0.0
    #: elements per sample (Tengine's ACIQ uses the tensor's element count at batch 1)
    sample_size: int = 0
    #: "uniform" (BINS bins over [lo, hi]), "nonzero" (the same, exact zeros not counted, as
    #: RKNN-Toolkit2's KL leaves them out) or "tengine" (Tengine's histCount over the observed range)
    binning: str = "uniform"
    #: values counted in `counts` (fewer than `total` when zeros are left out)
    counted: int = 0

    def add(self, x: np.ndarray) -> None:
        flat = x.reshape(-1)
        if self.binning == "tengine":
            from unified.quant.tengine_ranges import hist_count

            self.counts += hist_count(flat, self.observed_lo, self.observed_hi)
        elif self.hi > self.lo:
            # uniform bins: index arithmetic + bincount, ~10x faster than np.histogram
            idx = ((flat - np.float32(self.lo)) * np.float32(BINS / (self.hi - self.lo))).astype(np.int32)
            np.clip(idx, 0, BINS - 1, out=idx)
            counts = np.bincount(idx, minlength=BINS)
            if self.binning == "nonzero":
                zeros = int(np.count_nonzero(flat == 0))
                zero_bin = int((np.float32(0.0) - np.float32(self.lo)) * np.float32(BINS / (self.hi - self.lo)))
                counts[min(max(zero_bin, 0), BINS - 1)] -= zeros
                self.counted += flat.size - zeros
            else:
                self.counted += flat.size
            self.counts += counts
        self.total += flat.size
        self.sum += float(flat.sum(dtype=np.float64))

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, BINS + 1)

    @property
    def centers(self) -> np.ndarray:
        e = self.edges
        return (e[:-1] + e[1:]) / 2


def minmax(h: Histogram, levels: int) -> tuple[float, float]:
    return h.lo, h.hi


def percentile(h: Histogram, levels: int, pct: float = 99.99) -> tuple[float, float]:
    cdf = np.cumsum(h.counts) / max(h.counts.sum(), 1)
    edges = h.edges
    lo_i = int(np.searchsorted(cdf, (100 - pct) / 100))
    hi_i = int(np.searchsorted(cdf, pct / 100))
    return float(edges[lo_i]) if h.lo < 0 else h.lo, float(edges[min(hi_i + 1, BINS)])


def _mse_of(h: Histogram, lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    """Expected squared error for each candidate range (vectorized over candidates)."""
    x = h.centers[None, :]
    p = h.counts[None, :] / max(h.counts.sum(), 1)
    step = (hi - lo)[:, None] / (levels - 1)
    clipped = np.clip(x, lo[:, None], hi[:, None])
    err = (x - clipped) ** 2 + step**2 / 12.0
    return (err * p).sum(axis=1)


def mse(h: Histogram, levels: int) -> tuple[float, float]:
    ratios = np.linspace(0.2, 1.0, 41)
    lo_c = np.minimum(h.lo * ratios, 0.0)
    hi_c = np.maximum(h.hi * ratios, 0.0)
    if h.lo >= 0:
        lo_grid, hi_grid = np.zeros_like(hi_c), hi_c
    else:
        lo_grid, hi_grid = (a.reshape(-1) for a in np.meshgrid(lo_c, hi_c))
    errors = _mse_of(h, lo_grid, hi_grid, levels)
    best = int(np.argmin(errors))
    return float(lo_grid[best]), float(hi_grid[best])


def _kl_threshold(abs_counts: np.ndarray, bin_width: float, quant_bins: int = 128) -> float:
    """TensorRT's entropy calibration on a histogram of |x| starting at 0."""
    best_kl, best_i = np.inf, len(abs_counts)
    total_bins = len(abs_counts)
    for i in range(quant_bins, total_bins + 1, 16):
        ref = abs_counts[:i].astype(np.float64).copy()
        ref[i - 1] += abs_counts[i:].sum()  # clipped mass goes to the last bin
        if ref.sum() == 0:
            continue
        # quantize the first i bins into quant_bins, then expand back over non-empty bins
        edges = np.linspace(0, i, quant_bins + 1).astype(int)
        q = np.zeros(i)
        for j in range(quant_bins):
            a, b = edges[j], max(edges[j + 1], edges[j] + 1)
            chunk = abs_counts[a:b]
            nz = chunk > 0
            if nz.any():
                q[a:b][nz] = chunk.sum() / nz.sum()
        p = ref / ref.sum()
        qs = q.sum()
        if qs == 0:
            continue
        q = q / qs
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i * bin_width


def kl(h: Histogram, levels: int) -> tuple[float, float]:
    amax = max(abs(h.lo), abs(h.hi))
    abs_counts, _ = np.histogram(np.abs(h.centers), bins=BINS, range=(0, amax), weights=h.counts)
    threshold = _kl_threshold(abs_counts, amax / BINS)
    return max(h.lo, -threshold), min(h.hi, threshold)


def aciq(h: Histogram, levels: int) -> tuple[float, float]:
    p = h.counts / max(h.counts.sum(), 1)
    mean = float((p * h.centers).sum())
    b = float((p * np.abs(h.centers - mean)).sum())
    alpha = 9.89 * b
    return max(h.lo, -alpha), min(h.hi, alpha)


RKNN_KL_BINS = 1024
RKNN_KL_TARGET = 128
RKNN_KL_MIN_VALUES = 4096


def _smoothed(p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """The usual KL smoothing (MXNet's): eps into empty bins, taken evenly from the others."""
    empty = p == 0
    filled = p.size - int(empty.sum())
    return np.where(empty, eps, p - eps * (p.size - filled) / max(filled, 1))


def _kl_threshold_rknn(abs_counts: np.ndarray, target: int = RKNN_KL_TARGET) -> int:
    """The number of |x| bins L (target < L <= bins) whose clipped histogram P (the mass beyond
    folded into its last bin) is closest in KL divergence to Q: P merged into `target` chunks of
    L // target bins (the last takes the rest), each chunk's mass spread over its non-empty bins;
    both smoothed. The threshold is the centre of bin L - 1."""
    counts = abs_counts.astype(np.float64)
    bins = len(counts)
    tail = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])
    best_kl, best = np.inf, bins
    for size in range(target + 1, bins + 1):
        p = counts[:size].copy()
        p[-1] += tail[size]
        width = size // target
        edge = width * target
        chunk_mass = counts[:edge].reshape(target, width).sum(1)
        chunk_mass[-1] += counts[edge:size].sum()
        filled = (p > 0)
        chunk_filled = filled[:edge].reshape(target, width).sum(1)
        chunk_filled[-1] += filled[edge:size].sum()
        per_bin = np.where(chunk_filled > 0, chunk_mass / np.maximum(chunk_filled, 1), 0.0)
        q = np.concatenate([np.repeat(per_bin, width), np.full(size - edge, per_bin[-1])])
        q[~filled] = 0.0
        if not filled.any() or q.sum() <= 0:
            continue
        ps, qs = _smoothed(p), _smoothed(q)
        ps, qs = ps / ps.sum(), qs / qs.sum()
        value = float(np.sum(ps * np.log(ps / qs)))
        if value < best_kl:
            best_kl, best = value, size
    return best


def abs_histogram(h: Histogram, amax: float, bins: int = BINS) -> np.ndarray:
    """Counts of |x| over `bins` bins of [0, amax], from the signed histogram with its mass spread
    uniformly inside each bin: |x| <= t holds the mass of [-t, t]. (Putting each signed bin at its
    centre leaves every other |x| bin empty when the signed range spans both signs, and the KL
    search then prefers short thresholds.)"""
    cumulative = np.concatenate([[0.0], np.cumsum(h.counts)])
    signed = lambda t: np.interp(t, h.edges, cumulative)  # noqa: E731  mass below t
    t = np.linspace(0.0, amax, bins + 1)
    return np.diff(signed(t) - signed(-t))


def kl_rknn(h: Histogram, levels: int) -> tuple[float, float]:
    """RKNN-Toolkit2's `kl_divergence`, as its quantizer computes it on all calibration values of
    a tensor at once (checked against the toolkit's own function on synthetic tensors and against
    its tables): a histogram of the non-zero |x| in 1024 bins of [0, max|x|]; the entropy search
    above (128 merged chunks, thresholds from bin 129 on); T the centre of the chosen last bin,
    so a dense [0, 6] ReLU6 output gets 1023.5 * 6 / 1024 = 5.9970703125. The range is
    [max(min, -T), min(max, T)]. A tensor with fewer than 4096 non-zero values keeps its min-max.
    Needs a histogram with `binning="nonzero"`."""
    amax = max(abs(h.lo), abs(h.hi))
    if amax <= 0 or h.counted < RKNN_KL_MIN_VALUES:
        return h.lo, h.hi
    size = _kl_threshold_rknn(abs_histogram(h, amax, RKNN_KL_BINS))
    threshold = (size - 0.5) * amax / RKNN_KL_BINS
    return max(h.lo, -threshold), min(h.hi, threshold)


def kl_tengine(h: Histogram, levels: int) -> tuple[float, float]:
    """Tengine's `-a 1` (see `tengine_ranges`); needs a histogram with `binning="tengine"`."""
    from unified.quant.tengine_ranges import kl_range

    if not h.observed_hi > h.observed_lo or h.counts[1:].sum() == 0:
        return h.lo, h.hi
    return kl_range(h.counts, h.observed_lo, h.observed_hi)


def aciq_tengine(h: Histogram, levels: int) -> tuple[float, float]:
    """Tengine's `-a 2`: the Gaussian clip T of |x|max, range [-T, T]."""
    from unified.quant.tengine_ranges import aciq_clip

    t = aciq_clip(max(abs(h.lo), abs(h.hi)), h.sample_size)
    return (-t, t) if t > 0 else (h.lo, h.hi)


ESTIMATORS = {"minmax": minmax, "percentile": percentile, "mse": mse, "kl": kl, "kl_rknn": kl_rknn, "aciq": aciq,
              "kl_tengine": kl_tengine, "aciq_tengine": aciq_tengine}
#: estimators that read a histogram binned their own way
BINNING = {"kl_tengine": "tengine", "kl_rknn": "nonzero"}
#: estimators that need only the extremes (no second, histogram pass)
EXTREMES_ONLY = {"minmax", "aciq_tengine"}


def weight_ranges(w: np.ndarray, per_channel: bool, method: str, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis 0) or per-tensor weight ranges; `mse` shrinks each range to minimize MSE."""
    flat = w.reshape(w.shape[0], -1).astype(np.float64) if per_channel else w.reshape(1, -1).astype(np.float64)
    lo = np.minimum(flat.min(axis=1), 0.0)
    hi = np.maximum(flat.max(axis=1), 0.0)
    if method != "mse":
        return lo, hi
    best_lo, best_hi = lo.copy(), hi.copy()
    best_err = np.full(flat.shape[0], np.inf)
    for r in np.linspace(0.5, 1.0, 26):
        l, u = lo * r, hi * r
        step = np.maximum(u - l, 1e-12) / (levels - 1)
        zp = np.round(-l / step)
        q = np.clip(np.round(flat / step[:, None]) + zp[:, None], 0, levels - 1)
        err = ((q - zp[:, None]) * step[:, None] - flat) ** 2
        e = err.sum(axis=1)
        better = e < best_err
        best_err = np.where(better, e, best_err)
        best_lo = np.where(better, l, best_lo)
        best_hi = np.where(better, u, best_hi)
    return best_lo, best_hi
