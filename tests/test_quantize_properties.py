"""Properties of every built-in backend's quantize_input / dequantize_output (hypothesis)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import unified

PRE16 = unified.Preprocess(resize=16, crop=16)
INTEGER_BACKENDS = ("rknn", "tengine")


@pytest.fixture(scope="module")
def models(tiny_model, tiny_calibration):
    return {b: unified.quantize(tiny_model, backend=b, calibration=tiny_calibration, preprocess=PRE16,
                                quantized_algorithm="normal") if b == "rknn" else
            unified.quantize(tiny_model, backend=b, calibration=tiny_calibration, preprocess=PRE16,
                             bias_correction=False, rounding="nearest")
            for b in INTEGER_BACKENDS}


def _native_to_model(qm, q: np.ndarray) -> np.ndarray:
    return q.transpose(0, 3, 1, 2) if qm.input_quant.layout == "NHWC" else q


values = hnp.arrays(np.float32, (1, 3, 16, 16), elements=st.floats(-8, 8, width=32))


@pytest.mark.parametrize("backend", INTEGER_BACKENDS)
@settings(max_examples=40, deadline=None)
@given(x=values)
def test_round_trip_within_half_a_step_inside_the_range(models, backend, x) -> None:
    qm = models[backend]
    iq = qm.input_quant
    lo, hi = (iq.qmin - iq.zero_point) * iq.scale, (iq.qmax - iq.zero_point) * iq.scale
    q = _native_to_model(qm, qm.quantize_input(x))
    back = iq.dequantize(q)
    inside = (x >= lo) & (x <= hi)
    assert np.all(np.abs(back[inside] - x[inside]) <= iq.scale / 2 * (1 + 1e-6))
    assert np.all(q[x < lo] == iq.qmin) and np.all(q[x > hi] == iq.qmax)  # saturation at both ends
    np.testing.assert_array_equal(iq.quantize(x), q)  # the documented params compute the same


@pytest.mark.parametrize("backend", INTEGER_BACKENDS)
@settings(max_examples=25, deadline=None)
@given(a=st.floats(-8, 8, width=32), b=st.floats(-8, 8, width=32))
def test_quantize_input_is_monotone(models, backend, a, b) -> None:
    qm = models[backend]
    lo, hi = sorted((a, b))
    x = np.empty((1, 3, 16, 16), np.float32)
    x[..., :8], x[..., 8:] = lo, hi
    q = _native_to_model(qm, qm.quantize_input(x)).astype(int)
    assert q[0, 0, 0, 0] <= q[0, 0, 0, 15]


@pytest.mark.parametrize("backend", INTEGER_BACKENDS)
@settings(max_examples=25, deadline=None)
@given(q=hnp.arrays(np.int64, 10, elements=st.integers(0, 255)))
def test_dequantize_output_is_affine_in_the_integer(models, backend, q) -> None:
    qm = models[backend]
    oq = qm.output_quant
    native = np.clip(q + oq.qmin, oq.qmin, oq.qmax).astype(oq.dtype)[None]
    out = qm.dequantize_output(native)
    np.testing.assert_allclose(out, (native.astype(np.float64) - oq.zero_point) * oq.scale, rtol=1e-6, atol=1e-7)


@settings(max_examples=20, deadline=None)
@given(x=values)
def test_ort_io_is_the_identity(tiny_model, x) -> None:
    qm = unified.quantize(tiny_model, backend="ort", mode="fp32")
    np.testing.assert_array_equal(qm.quantize_input(x), x)
    assert qm.input_quant is None and qm.output_quant is None
