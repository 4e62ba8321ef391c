"""Tengine on EfficientNet-Lite0: the measured effect of each option, and the fidelity oracle."""
from __future__ import annotations

import numpy as np
import pytest

import unified
from tests.helpers import run_chunked
from tests.test_lite0_rknn import _check_fidelity
from tests.torchvision_models import ARCHITECTURES, torchvision_onnx

pytestmark = pytest.mark.lite0


def _agree(qm, eval_batch, reference) -> float:
    out = run_chunked(qm, eval_batch)
    return float((out.argmax(1) == reference.argmax(1)).mean())


@pytest.fixture(scope="module")
def option_figures(lite0, calib_crops, eval_batch, lite0_fp32_logits) -> dict[str, float]:
    figures = {}
    # Tengine's own min-max ranges and rounding; the rows before the default measure the options
    # without the empirical bias correction that the default adds
    nearest = dict(rounding="nearest", activation_ranges="calibrated", weight_ranges="minmax",
                   empirical_bias_correction=False)
    for label, opts in [("minmax", dict(nearest, bias_correction=False)),
                        ("equalization", dict(nearest, bias_correction=False, equalization=True)),
                        ("bias correction", dict(nearest, bias_correction=True)),
                        ("default", None),  # adaptive rounding, both bias corrections, MSE ranges; built once per session
                        ("all three", dict(bias_correction=True, equalization=True, activation_ranges="calibrated",
                                           weight_ranges="minmax"))]:
        if opts is None:
            qm = unified.quantize("efficientnet_lite0", backend="tengine")  # same 100 calibration crops
        else:
            qm = unified.quantize(lite0, backend="tengine", calibration=calib_crops, **opts)
        figures[label] = _agree(qm, eval_batch, lite0_fp32_logits)
    print("\ntengine share of fp32 top-1 kept on", len(eval_batch), "crops:",
          ", ".join(f"{k} {v:.1%}" for k, v in figures.items()))
    return figures


def test_bias_correction_and_adaptive_rounding_keep_80_percent(option_figures) -> None:
    # Measured here (200 crops, min-max ranges): minmax 34%, + bias correction 68%, + adaptive rounding 81%;
    # the default adds MSE ranges and the empirical bias correction: 84-85.5%
    assert option_figures["bias correction"] >= option_figures["minmax"] + 0.25
    assert option_figures["default"] >= 0.83
    assert option_figures["all three"] >= option_figures["default"] - 0.05


def test_default_is_minmax_with_adaptive_rounding(option_figures) -> None:
    qm = unified.quantize("efficientnet_lite0", backend="tengine")  # cached from the fixture's build
    assert (qm.artifact.extra["algorithm"], qm.artifact.extra["rounding"]) == ("minmax", "adaptive")
    assert qm.artifact.extra["activation_ranges"] == qm.artifact.extra["weight_ranges"] == "mse"


def test_fidelity_oracle_lite0(eval_batch) -> None:
    _check_fidelity(unified.quantize("efficientnet_lite0", backend="tengine"), eval_batch[:2], "tengine lite0",
                    min_equal=0.999)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fidelity_oracle_torchvision(arch: str) -> None:
    rng = np.random.default_rng(0)
    cal = [rng.normal(0, 1, (1, 3, 224, 224)).astype(np.float32) for _ in range(2)]
    qm = unified.quantize(torchvision_onnx(arch), backend="tengine", calibration=cal, bias_correction=False)
    _check_fidelity(qm, rng.normal(0, 1, (1, 3, 224, 224)).astype(np.float32), f"tengine {arch}")
