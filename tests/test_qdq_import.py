"""Already quantized ONNX models (QDQ) run on every backend without calibration, adopting their params."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest

import unified

PRE16 = unified.Preprocess(resize=16, crop=16)


def _ort_qdq(tiny_model, tiny_calibration, per_channel: bool, activation: str, tmp_path) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": t} for t in tiny_calibration])

        def get_next(self):
            return next(self.items, None)

    onnx.save(tiny_model, tmp_path / "f.onnx")
    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8)
    return onnx.load(tmp_path / "q.onnx")


@pytest.mark.parametrize("per_channel, activation", [(True, "uint8"), (False, "uint8"), (True, "int8")])
def test_ort_static_output_runs_on_rknn_exactly_as_ort(per_channel, activation, tiny_model, tiny_calibration,
                                                      tiny_batch, tmp_path) -> None:
    qdq = _ort_qdq(tiny_model, tiny_calibration, per_channel, activation, tmp_path)
    ort = unified.quantize(qdq, backend="ort")
    rknn = unified.quantize(qdq, backend="rknn")  # no calibration: the QDQ model's params are adopted
    assert rknn.import_report == []
    scale = rknn.output_quant.scale
    assert np.abs(rknn.run(tiny_batch) - ort.run(tiny_batch)).max() <= scale * 1.001  # ORT rounds in float
    from unified.graph.qdq_import import split_qdq

    given = split_qdq(qdq).activations["input"]  # adopted exactly: same scale, uint8 zero point - 128
    assert rknn.input_quant.scale == pytest.approx(float(given.scale), rel=1e-7)
    assert rknn.input_quant.zero_point == int(given.zero_point) - (128 if activation == "uint8" else 0)


def test_tengine_adopts_per_tensor_and_refits_per_channel_with_a_report(tiny_model, tiny_calibration, tiny_batch,
                                                                        tmp_path) -> None:
    per_tensor = unified.quantize(_ort_qdq(tiny_model, tiny_calibration, False, "uint8", tmp_path), backend="tengine")
    assert per_tensor.import_report == []
    per_channel = unified.quantize(_ort_qdq(tiny_model, tiny_calibration, True, "uint8", tmp_path), backend="tengine")
    assert len(per_channel.import_report) == 3
    assert all("re-fit per channel -> per tensor" in line for line in per_channel.import_report)
    ref = unified.quantize(tiny_model, backend="ort", mode="fp32").run(tiny_batch)
    for qm in (per_tensor, per_channel):
        assert np.abs(qm.run(tiny_batch) - ref).max() < 0.1


@pytest.mark.parametrize("backend", ["rknn", "tengine"])
def test_unified_export_imports_back_identically(backend, tiny_model, tiny_calibration, tiny_batch, tmp_path) -> None:
    original = unified.quantize(tiny_model, backend=backend, calibration=tiny_calibration, preprocess=PRE16,
                                **({"rounding": "nearest"} if backend == "tengine" else {}))
    original.export_qdq(tmp_path / "m.onnx")
    again = unified.quantize(str(tmp_path / "m.onnx"), backend=backend, preprocess=PRE16)
    assert again.import_report == []
    native = original.quantize_input(tiny_batch)
    np.testing.assert_array_equal(again.quantize_input(tiny_batch), native)
    np.testing.assert_array_equal(again.run_quantized(native), original.run_quantized(native))  # the same integers
    np.testing.assert_allclose(again.run(tiny_batch), original.run(tiny_batch), rtol=1e-6)  # scales stored as float32


def test_a_pytorch_fake_quant_model_runs_on_every_backend(tiny_batch) -> None:
    """A QAT-style torch model: per-channel fake-quantized weights, per-tensor fake-quantized
    activations, exported to ONNX (QuantizeLinear/DequantizeLinear pairs)."""
    import torch

    torch.manual_seed(0)

    class Qat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 10)
            # what a QAT observer leaves behind: fixed per-channel weight scales
            self.register_buffer("w_scale", (self.conv.weight.abs().amax(dim=(1, 2, 3)) / 127).detach())
            self.register_buffer("w_zero", torch.zeros(8, dtype=torch.int32))

        def forward(self, x):
            x = torch.fake_quantize_per_tensor_affine(x, 1 / 128, 128, 0, 255)
            w = torch.fake_quantize_per_channel_affine(self.conv.weight, self.w_scale, self.w_zero, 0, -128, 127)
            y = torch.relu(torch.nn.functional.conv2d(x, w, self.conv.bias, padding=1))
            y = torch.fake_quantize_per_tensor_affine(y, 0.02, 0, 0, 255)
            y = y.mean((2, 3))
            y = torch.fake_quantize_per_tensor_affine(y, 0.01, 0, 0, 255)
            return self.fc(y)

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Qat().eval(), torch.zeros(1, 3, 16, 16), buffer, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "N"}})
    model = onnx.load_from_string(buffer.getvalue())
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    x = np.clip(tiny_batch, -1, 0.99)
    fp32_of_qat = unified.quantize(model, backend="ort", mode="fp32", preprocess=PRE16).run(x)
    qat_calibration = [x[i:i + 1] for i in range(len(x))]  # the head (fc) has no fake-quant: fitted from data
    for backend in ("ort", "rknn", "tengine"):
        qm = unified.quantize(model, backend=backend, preprocess=PRE16,
                              calibration=None if backend == "ort" else qat_calibration)
        out = qm.run(x)
        cos = (out * fp32_of_qat).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(fp32_of_qat, axis=1)
        assert cos.min() > 0.99, (backend, cos)
        if backend == "rknn":
            assert any("calibrated (no params in the QDQ model)" in line for line in qm.import_report)


def test_missing_params_without_calibration_say_what_to_do(tiny_batch) -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    s = numpy_helper.from_array(np.float32(1 / 128), "s")
    z = numpy_helper.from_array(np.uint8(128), "z")
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["x"]),
             helper.make_node("Conv", ["x", "w"], ["out"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 16, 16])], [w, s, z])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(unified.CalibrationError, match="carries no params for some tensors.*out.*pass calibration"):
        unified.quantize(model, backend="rknn", preprocess=PRE16)


@pytest.mark.parametrize("bad", [0.0, -0.5])
def test_a_bad_scale_in_a_qdq_model_is_named(bad, tiny_model, tiny_calibration, tmp_path) -> None:
    qdq = _ort_qdq(tiny_model, tiny_calibration, False, "uint8", tmp_path)
    q = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear")
    scale = next(t for t in qdq.graph.initializer if t.name == q.input[1])
    scale.CopyFrom(onnx.numpy_helper.from_array(np.float32(bad), scale.name))
    with pytest.raises(unified.ModelError, match=f"scale \\[{bad}\\] must be finite and > 0"):
        unified.quantize(qdq, backend="rknn")
