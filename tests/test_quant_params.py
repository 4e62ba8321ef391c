"""One QuantParams type: the documented I/O params compute exactly what each backend computes."""
from __future__ import annotations

import numpy as np
import pytest

import unified
from unified.core.quant_params import INTEGER_RANGES, QuantParams
from unified.core.rounding import RoundingPolicy

PRE16 = unified.Preprocess(resize=16, crop=16)


@pytest.mark.parametrize("backend", ["rknn", "tengine"])
def test_documented_input_params_agree_with_quantize_input_on_ties(backend, tiny_model, tiny_calibration) -> None:
    qm = unified.quantize(tiny_model, backend=backend, calibration=tiny_calibration, preprocess=PRE16)
    iq = qm.input_quant
    # every value an exact tie: x / s = k + 0.5 (and the zero point added before or after rounding)
    steps = np.arange(-6, 6) + 0.5
    x = np.resize(steps * iq.scale, (1, 3, 16, 16)).astype(np.float64)
    native = qm.quantize_input(x)
    documented = iq.quantize(x)
    if iq.layout == "NHWC":
        documented = documented.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(documented, native)


def test_tengine_and_rknn_differ_on_ties_as_their_schemes_say() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5]) * 0.1
    rknn = QuantParams(0.1, 0, "int8", rounding=RoundingPolicy.TIES_TO_EVEN)
    tengine = QuantParams(0.1, 128, "uint8", rounding=RoundingPolicy.TIES_AWAY, zero_point_inside_round=True)
    assert rknn.quantize(x).tolist() == [0, 2, 2, 0, -2]
    # Tengine adds the zero point first: -0.5 + 128 = 127.5 rounds away from zero to 128
    assert (tengine.quantize(x).astype(int) - 128).tolist() == [1, 2, 3, 0, -1]


def test_one_table_of_integer_ranges() -> None:
    assert INTEGER_RANGES["int8"] == (-128, 127) and INTEGER_RANGES["uint8"] == (0, 255)
    assert QuantParams(1.0, 0, "uint8").qmax == 255
    with pytest.raises(ValueError, match="unsupported integer dtype 'int4'"):
        QuantParams(1.0, 0, "int4")


def _rknn_histogram(x: np.ndarray):
    from unified.quant.ranges import Histogram

    x = x.astype(np.float32)
    h = Histogram(min(float(x.min()), 0.0), max(float(x.max()), 0.0), observed_lo=float(x.min()),
                  observed_hi=float(x.max()), binning="rknn_abs")
    h.add(x)
    return h


def test_rknn_kl_keeps_a_dense_relu6_range_as_the_toolkit_does() -> None:
    """RKNN-Toolkit2 gives a [0, 6] ReLU6 output exactly 1023.5 * 6 / 1024 (its tables, and its own
    KL function on these values)."""
    from unified.quant.ranges import kl_rknn

    lo, hi = kl_rknn(_rknn_histogram(np.linspace(0.0, 6.0, 200_000)), 256)
    assert lo == 0.0 and hi == 5.9970703125


def test_rknn_kl_leaves_zeros_out() -> None:
    """Half a ReLU output is exact zeros: counting them pulled the threshold down to a third of
    the toolkit's. Thresholds are bin centres of 1024 bins of [0, max|x|]."""
    from unified.quant.ranges import kl_rknn

    rng = np.random.default_rng(0)
    relu = np.maximum(rng.normal(size=100_000), 0).astype(np.float32)
    with_zeros, without = kl_rknn(_rknn_histogram(relu), 256), kl_rknn(_rknn_histogram(relu[relu > 0]), 256)
    assert with_zeros[1] == pytest.approx(without[1], rel=1e-6)
    bin_width = float(relu.max()) / 1024
    assert (with_zeros[1] / bin_width - 0.5) == pytest.approx(round(with_zeros[1] / bin_width - 0.5), abs=1e-3)
    assert 0.8 * relu.max() < with_zeros[1] < relu.max()   # the toolkit: 4.152 of 4.732 on these values


def test_rknn_kl_clips_a_small_sample_when_a_threshold_fits() -> None:
    """4095 values on [0, 1] and one at 5: the toolkit's own function gives 1.00830078125
    (= 206.5 * 5 / 1024); only the divergence bound, not the sample size, makes it keep min-max."""
    from unified.quant.ranges import kl_rknn

    x = np.append(np.random.default_rng(0).uniform(0, 1, 5000).astype(np.float32)[:4094], np.float32(5.0))
    assert kl_rknn(_rknn_histogram(x), 256)[1] == 1.00830078125


@pytest.mark.parametrize("counts, target, size, divergence", [
    ([1, 1, 1], 2, 2, 5.503746),          # no remainder: the last chunk stays empty (eps)
    ([1, 2, 3], 2, 2, 7.224739),
    ([1, 0, 3, 4], 2, 3, 7.682221),
    ([1, 2, 3, 4, 5], 2, 4, 7.308232),
    ([1, 1, 1, 1, 1, 1, 1], 2, 5, 3.965815),  # 6 would win if the last chunk were spread over all its bins
    ([2, 1, 1, 0, 0], 2, 4, 2.057327),
])
def test_rknn_kl_search_reproduces_the_toolkit_on_small_histograms(counts, target, size, divergence) -> None:
    """(size, divergence) pairs returned by RKNN-Toolkit2's own `calc_kl` on these histograms; the
    first one by hand: P = [1, 2] / 3, Q = [1, eps] smoothed -> 1/3 ln(1/3) + 2/3 ln(2/3 / 1e-4)."""
    from unified.quant.ranges import _kl_threshold_rknn, _rknn_kl_divergence

    counts = np.array(counts, np.float64)
    assert _kl_threshold_rknn(counts, target)[0] == size
    assert _rknn_kl_divergence(counts, size, target) == pytest.approx(divergence, rel=2e-6)


def test_rknn_kl_keeps_min_max_when_no_threshold_fits() -> None:
    """13 discrete levels on [0, 6]: the least divergence is 2.4 (> 0.1), and the toolkit's own
    function keeps (0, 6); taking the best threshold anyway would give 5.51."""
    from unified.quant.ranges import _kl_threshold_rknn, kl_rknn

    levels = (np.random.default_rng(0).integers(0, 13, 100_000) * 0.5).astype(np.float32)
    h = _rknn_histogram(levels)
    assert _kl_threshold_rknn(h.counts[1:1024])[1] > 0.1
    assert kl_rknn(h, 256) == (0.0, 6.0)


def test_rknn_kl_clips_a_long_tail_symmetrically_within_the_observed_range() -> None:
    from unified.quant.ranges import kl_rknn

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.laplace(0, 1, 200_000), [-30.0, 12.0]]).astype(np.float32)
    lo, hi = kl_rknn(_rknn_histogram(x), 256)
    assert -30.0 < lo < 0 < hi <= 12.0
    assert lo == -hi or hi == 12.0                      # one threshold T on |x|, cut by the observed max
