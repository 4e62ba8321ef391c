"""Every backend exports its model as a standard ONNX QDQ model on float I/O that ORT runs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import unified
from unified.graph.ort_session import make_session

PRE16 = unified.Preprocess(resize=16, crop=16)


@pytest.mark.parametrize("backend", ["ort", "rknn", "tengine"])
def test_export_qdq_runs_in_onnxruntime_and_matches_the_backend(backend, tiny_model, tiny_calibration, tiny_batch,
                                                              tmp_path) -> None:
    calibration = list(tiny_calibration) + [tiny_batch[i:i + 1] for i in range(4)]
    qm = unified.quantize(tiny_model, backend=backend, calibration=calibration, preprocess=PRE16)
    path = tmp_path / "m.qdq.onnx"
    qm.export_qdq(path)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    out = make_session(model.SerializeToString()).run(None, {model.graph.input[0].name: tiny_batch})[0]
    ours = qm.run(tiny_batch)
    step = qm.output_quant.scale if qm.output_quant is not None else np.abs(ours).max() / 127
    assert np.abs(out - ours).max() <= 4 * step
    if backend != "ort":  # the export carries exactly the backend's params
        params = {t.name: t for t in model.graph.initializer}
        iq = qm.input_quant
        name = model.graph.input[0].name
        assert float(onnx.numpy_helper.to_array(params[f"{name}__scale"])) == pytest.approx(iq.scale, rel=1e-7)
        assert int(onnx.numpy_helper.to_array(params[f"{name}__zero_point"])) == iq.zero_point


def test_fp32_has_no_qdq_form(tiny_model, tmp_path) -> None:
    qm = unified.quantize(tiny_model, backend="ort", mode="fp32")
    with pytest.raises(unified.BackendError, match="only mode 'static' is a QDQ model"):
        qm.export_qdq(tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_cli_quantize_exports_qdq(tiny_model, tiny_calibration, tmp_path, capsys) -> None:
    from unified.cli import main

    onnx.save(tiny_model, tmp_path / "tiny.onnx")
    np.save(tmp_path / "cal.npy", np.concatenate(tiny_calibration))
    lines = [f"{i}.npy" for i in range(4)]
    for i in range(4):
        np.save(tmp_path / f"{i}.npy", tiny_calibration[i])
    (tmp_path / "dataset.txt").write_text("\n".join(lines))
    code = main(["quantize", "--model", str(tmp_path / "tiny.onnx"), "--backend", "tengine", "--calibration",
                 str(tmp_path / "dataset.txt"), "--size", "16", "-o", str(tmp_path / "t.uqm"),
                 "--export-qdq", str(tmp_path / "t.onnx")])
    assert code == 0, capsys.readouterr().err
    assert "wrote the QDQ model" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(tmp_path / "t.onnx"))
