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
