"""ORT's empirical bias correction: the QDQ model's int32 biases are corrected layer after layer on
the integer engine and written back; after it, each Conv/Gemm's mean pre-activation per channel,
as ONNX Runtime itself computes it on the QDQ model, is within a bias step of fp32's; nothing but
int32 biases changes; it is on under `best` and refused under `toolkit`."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import unified
from tests.helpers import normal_calibration
from unified.backends.ort.empirical_bias import _bias_initializers, _fp32_name
from unified.consistency.tiny_models import tiny_classifier
from unified.core.errors import BackendError
from unified.graph.float_stats import channel_means
from unified.graph.prepare import prepare
from unified.inputs.calibration import CalibrationSet


def _errors_in_steps(qm, model: onnx.ModelProto, calibration: list[np.ndarray]) -> dict[str, np.ndarray]:
    """|ORT's mean pre-activation - fp32's| per channel, in units of each channel's bias step."""
    qdq = onnx.load_from_string(qm.artifact.model_bytes)
    reference = prepare(model)
    producer = {o: n for n in reference.graph.node for o in n.output}
    biases = _bias_initializers(qdq)
    names = {name: _fp32_name(name, producer) for name in biases}
    data = CalibrationSet(calibration, "test")
    measured = channel_means(qdq, sorted(biases), data)
    fp32 = channel_means(reference, sorted(set(names.values())), data)
    inits = {t.name: t for t in qdq.graph.initializer}
    dq_scale = {n.input[0]: n.input[1] for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    return {name: np.abs(measured[name] - fp32[names[name]])
            / numpy_helper.to_array(inits[dq_scale[bias]]).astype(np.float64)
            for name, bias in biases.items()}


def test_means_match_fp32_and_only_biases_change() -> None:
    model, calibration = tiny_classifier(), normal_calibration()
    corrected = unified.quantize(model, backend="ort", calibration=calibration, cache=False)
    plain = unified.quantize(model, backend="ort", calibration=calibration, cache=False,
                             empirical_bias_correction=False)
    after, before = _errors_in_steps(corrected, model, calibration), _errors_in_steps(plain, model, calibration)
    assert len(after) == 3  # conv1, the depthwise conv and the Gemm
    assert max(e.max() for e in before.values()) > 2.0
    for name, error in after.items():
        assert error.max() <= 1.0, (name, error)
    a, b = onnx.load_from_string(corrected.artifact.model_bytes), onnx.load_from_string(plain.artifact.model_bytes)
    biases = set(_bias_initializers(a).values())
    changed = {t.name for t, u in zip(a.graph.initializer, b.graph.initializer)
               if not np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(u))}
    assert changed and changed <= biases
    assert [n.SerializeToString() for n in a.graph.node] == [n.SerializeToString() for n in b.graph.node]


def test_refused_under_the_toolkit_profile() -> None:
    with pytest.raises(BackendError, match="empirical_bias_correction"):
        unified.quantize(tiny_classifier(), backend="ort", calibration=normal_calibration(), cache=False,
                         profile="toolkit", empirical_bias_correction=True)


def test_a_model_the_engine_cannot_take_keeps_ort_biases_and_says_so(monkeypatch) -> None:
    import unified.backends.ort.empirical_bias as ort_bias
    from unified.core.errors import ModelError

    def refuse(*args, **kwargs):
        raise ModelError("node 'x' (op 'Foo'): not expressible")

    monkeypatch.setattr(ort_bias, "build_from_qdq", refuse)
    model, calibration = tiny_classifier(), normal_calibration()
    with pytest.warns(ort_bias.BiasCorrectionSkippedWarning, match="op 'Foo'"):
        corrected = unified.quantize(model, backend="ort", calibration=calibration, cache=False)
    plain = unified.quantize(model, backend="ort", calibration=calibration, cache=False,
                             empirical_bias_correction=False)
    assert corrected.artifact.model_bytes == plain.artifact.model_bytes
