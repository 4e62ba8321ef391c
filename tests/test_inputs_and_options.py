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


def test_constant_calibration_gets_a_floor_and_a_warning_naming_the_tensor(tiny_model) -> None:
    from unified.engine.lowering.context import DegenerateRangeWarning

    zeros = [np.zeros((1, 3, 16, 16), np.float32)] * 4
    with pytest.warns(DegenerateRangeWarning, match="tensor 'input' is constant \\(0\\)"):
        qm = unified.quantize(tiny_model, backend="tengine", calibration=zeros, preprocess=PRE16,
                              bias_correction=False, rounding="nearest")
    assert qm.input_quant.scale >= 1e-6 / 255


def test_impossible_calibration_is_a_calibration_error_naming_the_tensor(tiny_model) -> None:
    huge = [np.full((1, 3, 16, 16), 1e30, np.float32)] * 4
    with pytest.raises(unified.CalibrationError, match="tensor '.+': calibrated range .* cannot be quantized"):
        unified.quantize(tiny_model, backend="rknn", calibration=huge, preprocess=PRE16)


def test_cli_refuses_backend_and_mode_on_a_saved_model(tiny_model, tiny_calibration, tmp_path, capsys) -> None:
    from unified.cli import main

    path = tmp_path / "m.uqm"
    unified.quantize(tiny_model, backend="rknn", calibration=tiny_calibration, preprocess=PRE16).save(path)
    assert main(["infer", str(tmp_path / "x.png"), "--model", str(path), "--backend", "ort"]) == 2
    assert "is a saved rknn/default model; --backend/--mode cannot change it" in capsys.readouterr().err
    assert main(["quantize", "--model", str(path), "--backend", "ort", "-o", str(tmp_path / "y.uqm")]) == 2
    assert "is a saved quantized model, not a float model" in capsys.readouterr().err
    assert not (tmp_path / "y.uqm").exists()


def test_an_image_with_too_many_pixels_is_an_image_error(tmp_path, monkeypatch) -> None:
    from PIL import Image

    path = tmp_path / "wide.png"
    Image.new("RGB", (3000, 2000)).save(path)
    monkeypatch.setenv("UNIFIED_MAX_IMAGE_PIXELS", "1000000")
    with pytest.raises(unified.ImageError, match="3000x2000 = 6000000 pixels is over the limit of 1000000"):
        PRE16(str(path))


@pytest.mark.parametrize("kwargs, message", [
    ({"resize": 0}, "resize must be a size in pixels"),
    ({"resize": 16, "crop": 32}, "crop 32 is larger than the resize 16"),
    ({"mean": (1.0, 2.0)}, "one value or one per RGB channel"),
    ({"std": 0}, "std non-zero"),
    ({"layout": "CHWN"}, "layout must be one of NCHW, NHWC"),
])
def test_bad_preprocessing_is_refused_when_constructed(kwargs, message) -> None:
    with pytest.raises(unified.InputError, match=message):
        unified.Preprocess(**kwargs)


def test_a_model_with_integer_input_is_refused_naming_it() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Cast", ["ids"], ["out"], to=TensorProto.FLOAT)], "m",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(unified.ModelError, match="input 'ids' is int64"):
        unified.quantize(model, backend="ort", mode="fp32")


def test_a_free_height_and_width_take_the_preprocessing_size(tiny_model, tiny_calibration, tiny_batch) -> None:
    import onnx

    free = onnx.ModelProto()
    free.CopyFrom(tiny_model)
    dims = free.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    for backend in ("rknn", "tengine"):
        qm = unified.quantize(free, backend=backend, calibration=tiny_calibration, preprocess=PRE16)
        assert qm.float_nodes == {}
        reference = unified.quantize(tiny_model, backend=backend, calibration=tiny_calibration, preprocess=PRE16)
        np.testing.assert_array_equal(qm.run(tiny_batch), reference.run(tiny_batch))


def test_library_errors_cross_the_api_as_unified_errors(tiny_model, tmp_path) -> None:
    qm = unified.quantize(tiny_model, backend="ort", mode="fp32")
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(unified.UnifiedError, match="a file operation failed") as info:
        qm.save(tmp_path / "afile" / "m.uqm")
    assert isinstance(info.value.__cause__, OSError)


def test_cli_stops_quietly_on_a_broken_pipe(capsys) -> None:
    import os
    import sys

    from unified.cli import main

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`| head -1`) has gone
    saved_stdout = sys.stdout
    sys.stdout = os.fdopen(write_end, "w", buffering=1)
    try:
        assert main(["backends"]) == 0
    finally:
        sys.stdout = saved_stdout
    assert "Traceback" not in capsys.readouterr().err


def test_quantize_reuses_a_build_of_the_same_calibration_content(tiny_model, tiny_calibration, tiny_batch) -> None:
    first = unified.quantize(tiny_model, backend="tengine", calibration=tiny_calibration, preprocess=PRE16,
                             rounding="nearest")
    again = unified.quantize(tiny_model, backend="tengine", calibration=[t.copy() for t in tiny_calibration],
                             preprocess=PRE16, rounding="nearest")
    assert (first.from_cache, again.from_cache) == (False, True)
    np.testing.assert_array_equal(again.run(tiny_batch), first.run(tiny_batch))
    changed = [t.copy() for t in tiny_calibration]
    changed[0][0, 0, 0, 0] += 0.5
    assert not unified.quantize(tiny_model, backend="tengine", calibration=changed, preprocess=PRE16,
                                rounding="nearest").from_cache
    assert not unified.quantize(tiny_model, backend="tengine", calibration=tiny_calibration, preprocess=PRE16,
                                rounding="nearest", cache=False).from_cache
