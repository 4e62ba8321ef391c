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


def _pad_conv_relu6_model():
    """input -> Pad (bottom/right, TF 'same') -> Conv 3x3 -> Clip(0, 6): Lite0's stem in small."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "pads"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"), numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [helper.make_node("Pad", ["input", "pads"], ["padded"], mode="constant"),
             helper.make_node("Conv", ["padded", "w", "b"], ["conv"], strides=[2, 2]),
             helper.make_node("Clip", ["conv", "lo", "hi"], ["out"])]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_toolkit_profile_pads_like_tengines_runtime() -> None:
    """Tengine's uint8 Pad writes the raw byte 0 whatever the zero point: on an input with zero point
    127 that pads with -127 steps (-1.0 here), not 0. The toolkit profile keeps the Pad and does the
    same (checked against the real runtime: 98.5% top-1 agreement on Lite0); best folds it into the
    conv, whose padding is a true zero."""
    import unified

    model = _pad_conv_relu6_model()
    rng = np.random.default_rng(1)
    cal = [rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    x = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    toolkit = unified.quantize(model, backend="tengine", calibration=cal, profile="toolkit", cache=False)
    best = unified.quantize(model, backend="tengine", calibration=cal, cache=False)
    pads = [n for n in toolkit.artifact.graph.nodes if n.op == "pad"]
    assert len(pads) == 1 and pads[0].attrs["value"] == 0
    assert toolkit.artifact.graph.tensors["input"].zero_point == 127
    assert not [n for n in best.artifact.graph.nodes if n.op == "pad"]
    ref = unified.quantize(model, backend="ort", mode="fp32").run(x)
    err_toolkit, err_best = np.abs(toolkit.run(x) - ref), np.abs(best.run(x) - ref)
    # the last output row and column read the padding: there the raw 0 byte costs the toolkit build
    assert err_toolkit[:, :, -1, :].mean() > 4 * err_best[:, :, -1, :].mean()
    assert err_toolkit[:, :, :-1, :-1].max() <= 2 * err_best[:, :, :-1, :-1].max() + 0.03


def test_aciq_clips_relu6_outputs_like_any_tensor() -> None:
    """Tengine's ACIQ treats a fused Conv+ReLU6 output like every other tensor: symmetric, zero
    point 127, T below 6 (min-max keeps ReLU6 outputs at exactly [0, 6])."""
    import unified

    model = _pad_conv_relu6_model()
    rng = np.random.default_rng(2)
    cal = [rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32) * 4 for _ in range(8)]
    aciq = unified.quantize(model, backend="tengine", calibration=cal, profile="toolkit", algorithm="aciq", cache=False)
    minmax = unified.quantize(model, backend="tengine", calibration=cal, profile="toolkit", cache=False)
    out_aciq, out_minmax = aciq.artifact.graph.tensors["out"], minmax.artifact.graph.tensors["out"]
    assert (out_minmax.scale, out_minmax.zero_point) == (pytest.approx(0.023529, abs=1e-6), 0)
    assert out_aciq.zero_point == 127 and out_aciq.scale * 127.5 == pytest.approx(aciq_clip(6.0, 4 * 8 * 8), rel=1e-4)
