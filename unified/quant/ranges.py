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
#: RKNN-Toolkit2's KL: |x| histogram bins, merged chunks, and the divergence above which it keeps min-max
RKNN_KL_BINS = 1024
RKNN_KL_TARGET = 128
RKNN_KL_MAX_DIVERGENCE = 0.1


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
    #: "uniform" (BINS bins over [lo, hi]), "rknn_abs" (RKNN-Toolkit2's KL histogram: |x| in
    #: RKNN_KL_BINS bins of [0, max|x|), held in the first RKNN_KL_BINS counts) or "tengine"
    #: (Tengine's histCount over the observed range)
    binning: str = "uniform"

    def add(self, x: np.ndarray) -> None:
        flat = x.reshape(-1)
        if self.binning == "rknn_abs":
            self._add_rknn_abs(flat)
        elif self.binning == "tengine":
            from unified.quant.tengine_ranges import hist_count

            self.counts += hist_count(flat, self.observed_lo, self.observed_hi)
        elif self.hi > self.lo:
            # uniform bins: index arithmetic + bincount, ~10x faster than np.histogram
            idx = ((flat - np.float32(self.lo)) * np.float32(BINS / (self.hi - self.lo))).astype(np.int32)
            np.clip(idx, 0, BINS - 1, out=idx)
            self.counts += np.bincount(idx, minlength=BINS)
        self.total += flat.size
        self.sum += float(flat.sum(dtype=np.float64))

    def _add_rknn_abs(self, flat: np.ndarray) -> None:
        """|x| in float64 binned as the toolkit's `fast_histogram.histogram1d(|x|, 1024, (0, amax))`
        does it: floor(|x| * bins / amax), the right edge excluded (so max|x| itself is not counted)."""
        amax = max(abs(self.lo), abs(self.hi))
        magnitudes = np.abs(flat).astype(np.float64)
        if amax > 0:  # values >= amax are left out before binning: amax * (bins / amax) can round below bins
            idx = (magnitudes[magnitudes < amax] * (RKNN_KL_BINS / amax)).astype(np.int64)
            self.counts[:RKNN_KL_BINS] += np.bincount(np.minimum(idx, RKNN_KL_BINS - 1), minlength=RKNN_KL_BINS)

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


def _smoothed(p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """MXNet's KL smoothing: eps into empty bins, taken evenly from the others (on raw counts)."""
    empty = p == 0
    filled = p.size - int(empty.sum())
    return np.where(empty, eps, p - eps * (p.size - filled) / max(filled, 1))


def _rknn_kl_divergence(counts: np.ndarray, size: int, target: int) -> float:
    """KL(P || Q) of one candidate, as the toolkit's `calc_kl` computes it (checked value for value
    on hand-made histograms): P the first `size` bins with the rest folded into its last; Q the
    bins merged into `target` chunks of size // target, each chunk's mass spread evenly over its
    non-empty bins and, unlike MXNet, also written into its empty ones; the last chunk (which also
    takes the remainder) is spread over all but the last bin, and is left empty when there is no
    remainder; both smoothed, then normalized."""
    p = counts[:size].copy()
    p[-1] += counts[size:].sum()
    filled = p != 0
    width = size // target
    edge = width * target
    chunk_mass = counts[:edge].reshape(target, width).sum(1)
    chunk_mass[-1] += counts[edge:size].sum()
    chunk_filled = filled[:edge].reshape(target, width).sum(1)
    per_bin = np.where(chunk_filled > 0, chunk_mass / np.maximum(chunk_filled, 1), 0.0)
    q = np.zeros(size)
    last = (target - 1) * width
    q[:last] = np.repeat(per_bin[:-1], width)
    if size > edge:
        spread = int(filled[last:size - 1].sum())
        q[last:size - 1] = chunk_mass[-1] / spread if spread else 0.0
    if not filled.any() or not (q != 0).any():
        return np.inf
    ps, qs = _smoothed(p), _smoothed(q)
    ps, qs = ps / ps.sum(), qs / qs.sum()
    return float(np.sum(ps * np.log(ps / qs)))


def _kl_threshold_rknn(counts: np.ndarray, target: int = RKNN_KL_TARGET) -> tuple[int, float]:
    """The candidate size (target <= size < len(counts)) of least divergence, the first on ties,
    and that divergence.
    Divergences are compared at float32 precision, the toolkit C search's own: runs of candidates
    whose divergence differs only in float64's last digits (a histogram with empty bins gives such
    plateaus) tie there and the first of the run wins. The toolkit's float32 sums still break some
    near-ties a few bins away (README, toolkit agreement)."""
    counts = counts.astype(np.float64)
    values = np.array([_rknn_kl_divergence(counts, size, target) for size in range(target, len(counts))], np.float32)
    best = int(np.argmin(values))
    return target + best, float(values[best])


def kl_rknn(h: Histogram, levels: int) -> tuple[float, float]:
    """RKNN-Toolkit2's `kl_divergence`, as its quantizer computes it on all calibration values of
    a tensor at once (its Python steps observed on the toolkit itself, its C search checked value
    for value): |x| in 1024 bins of [0, max|x|) (needs a histogram with `binning="rknn_abs"`);
    bin 0 dropped, which leaves the zeros out; the search above on the other 1023 from 128
    candidates on; T = (chosen size + 1.5) bin widths, so a dense [0, 6] ReLU6 output gets
    1023.5 * 6 / 1024 = 5.9970703125, as its tables show. The range is [max(min, -T), min(max, T)].
    A tensor whose least divergence exceeds 0.1 (no threshold fits; small or discrete samples)
    keeps its min-max."""
    amax = max(abs(h.lo), abs(h.hi))
    if amax <= 0:
        return h.lo, h.hi
    size, divergence = _kl_threshold_rknn(h.counts[1:RKNN_KL_BINS])
    if divergence > RKNN_KL_MAX_DIVERGENCE:
        return h.lo, h.hi
    threshold = (size + 1.5) * amax / RKNN_KL_BINS
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
BINNING = {"kl_tengine": "tengine", "kl_rknn": "rknn_abs"}
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
