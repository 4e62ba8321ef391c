"""The same answer on every backend for bad numbers and empty batches; typed, validated options."""
from __future__ import annotations

import numpy as np
import pytest

import unified

PRE16 = unified.Preprocess(resize=16, crop=16)
BACKENDS = ("ort", "rknn", "tengine")


@pytest.fixture(scope="module")
def models(tiny_model, tiny_calibration):
    return {b: unified.quantize(tiny_model, backend=b, calibration=tiny_calibration, preprocess=PRE16,
                                **({"mode": "fp32"} if b == "ort" else {})) for b in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_input_is_an_input_error_everywhere(models, tiny_batch, backend, bad, word) -> None:
    x = tiny_batch.copy()
    x[1, 2, 3, 4] = bad
    with pytest.raises(unified.InputError, match=f"contains {word} values \\(first at index \\(1, 2, 3, 4\\)\\)"):
        models[backend].run(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_is_an_input_error_everywhere(models, backend) -> None:
    with pytest.raises(unified.InputError, match=r"empty batch \(shape \(0, 3, 16, 16\)\)"):
        models[backend].run(np.zeros((0, 3, 16, 16), np.float32))


@pytest.mark.parametrize("value, expected", [("False", False), ("true", True), ("0", False), (1, True), (False, False)])
def test_boolean_options_accept_cli_spellings(tiny_model, tiny_calibration, value, expected) -> None:
    qm = unified.quantize(tiny_model, backend="rknn", calibration=tiny_calibration, preprocess=PRE16,
                          quantized_algorithm="normal", bias_correction=value)
    reference = unified.quantize(tiny_model, backend="rknn", calibration=tiny_calibration, preprocess=PRE16,
                                 quantized_algorithm="normal", bias_correction=expected)
    assert [n.arrays.get("bias") is not None and n.arrays["bias"].tolist() for n in qm.artifact.graph.nodes] == \
        [n.arrays.get("bias") is not None and n.arrays["bias"].tolist() for n in reference.artifact.graph.nodes]


def test_a_truthy_word_is_refused_not_taken_as_true(tiny_model, tiny_calibration) -> None:
    with pytest.raises(unified.BackendError, match="bias_correction='no' is not a boolean"):
        unified.quantize(tiny_model, backend="tengine", calibration=tiny_calibration, preprocess=PRE16,
                         bias_correction="no")


def test_one_op_name_is_one_op(tiny_model, tiny_calibration) -> None:
    qm = unified.quantize(tiny_model, backend="rknn", calibration=tiny_calibration, preprocess=PRE16,
                          float_fallback="Relu")
    assert set(qm.float_nodes.values()) == {"float_fallback option"}


def test_ort_refuses_unknown_and_foreign_options(tiny_model, tiny_calibration) -> None:
    with pytest.raises(unified.BackendError, match=r"unknown options \['calibrate_metod'\]"):
        unified.quantize(tiny_model, backend="ort", calibration=tiny_calibration, preprocess=PRE16,
                         calibrate_metod="entropy")
    with pytest.raises(unified.BackendError, match="calibrate_method do not apply to mode 'dynamic'"):
        unified.quantize(tiny_model, backend="ort", mode="dynamic", calibrate_method="entropy")
