"""The public API on tiny models with the ort backend: modes, save/load, bad input."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

import unified
from unified.backends.ort.quantizer import cpu_has_vnni
from unified.core.paths import cache_dir


def test_modes_differ_from_fp32_but_stay_close(tiny_model, tiny_batch, tiny_calibration) -> None:
    fp32 = unified.quantize(tiny_model, backend="ort", mode="fp32").run(tiny_batch)
    for mode in ("static", "dynamic"):
        out = unified.quantize(tiny_model, backend="ort", mode=mode, calibration=tiny_calibration).run(tiny_batch)
        assert out.dtype == np.float32 and out.shape == fp32.shape
        assert not np.array_equal(out, fp32), mode  # quantization really happened
        assert np.abs(out - fp32).max() < 0.05 * np.abs(fp32).max(), mode


def test_static_model_holds_qdq_with_per_channel_int8_weights(tiny_model, tiny_calibration) -> None:
    qm = unified.quantize(tiny_model, backend="ort", calibration=tiny_calibration)
    model = onnx.load_from_string(qm.artifact.model_bytes)
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    weight_q = [v for k, v in inits.items() if k.startswith("w1") and v.dtype == np.int8 and v.ndim == 4]
    assert len(weight_q) == 1 and weight_q[0].shape == (8, 3, 3, 3)
    # symmetric int8, full range used per channel (7-bit with reduce_range, on CPUs without VNNI)
    assert np.abs(weight_q[0]).max() == (127 if cpu_has_vnni() else 64)
    scales = [v for k, v in inits.items() if k.startswith("w1") and "scale" in k and v.ndim == 1]
    assert scales and scales[0].shape == (8,)  # one scale per output channel
    act_zp = [v for k, v in inits.items() if k.startswith("input") and "zero_point" in k]
    assert act_zp and act_zp[0].dtype == np.uint8  # uint8 activations by default


def test_dynamic_mode_uses_conv_integer(tiny_model) -> None:
    qm = unified.quantize(tiny_model, backend="ort", mode="dynamic")
    ops = {n.op_type for n in onnx.load_from_string(qm.artifact.model_bytes).graph.node}
    assert "ConvInteger" in ops


def test_save_load_round_trip(tmp_path, tiny_model, tiny_batch, tiny_calibration) -> None:
    qm = unified.quantize(tiny_model, backend="ort", calibration=tiny_calibration)
    path = tmp_path / "tiny.uqm"
    qm.save(path)
    loaded = unified.load(path)
    assert loaded.backend == "ort" and loaded.mode == "static"
    np.testing.assert_array_equal(loaded.run(tiny_batch), qm.run(tiny_batch))
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.uqm"]  # no temporaries left


def test_infer_accepts_paths_protos_and_saved_models(tmp_path, tiny_model, tiny_batch) -> None:
    onnx_path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model, onnx_path)
    a = unified.infer(str(onnx_path), tiny_batch[:1], backend="ort", mode="fp32")
    b = unified.infer(tiny_model, tiny_batch[:1], backend="ort", mode="fp32")
    np.testing.assert_array_equal(a.logits, b.logits)
    assert a.logits.shape == (10,) and len(a.top5) == 5
    assert a.top5[0][1] == f"class {a.top5[0][0]}"
    unified.quantize(tiny_model, backend="ort", mode="fp32").save(tmp_path / "saved.uqm")
    c = unified.infer(str(tmp_path / "saved.uqm"), tiny_batch[:1])
    np.testing.assert_array_equal(c.logits, a.logits)


def test_torch_module_is_exported_and_checked(tiny_batch) -> None:
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    pre = unified.Preprocess(resize=16, crop=16)
    result = unified.infer(net, tiny_batch[:1], backend="ort", mode="fp32", preprocess=pre)
    with torch.no_grad():
        expected = net(torch.from_numpy(tiny_batch[:1])).numpy()[0]
    np.testing.assert_allclose(result.logits, expected, rtol=1e-4, atol=1e-5)


# -- bad input ---------------------------------------------------------------------------------

def _listing(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_missing_model_file() -> None:
    with pytest.raises(unified.ModelError, match="not found: .*missing.onnx"):
        unified.quantize("missing.onnx", backend="ort", mode="fp32")


def test_corrupt_onnx_names_the_file(tmp_path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(unified.ModelError, match="corrupt.onnx"):
        unified.quantize(str(bad), backend="ort", mode="fp32")


def test_model_failing_checker(tiny_model) -> None:
    broken = onnx.ModelProto()
    broken.CopyFrom(tiny_model)
    broken.graph.node[1].input[0] = "does_not_exist"
    with pytest.raises(unified.ModelError, match="onnx.checker"):
        unified.quantize(broken, backend="ort", mode="fp32")


def test_non_image_file(tmp_path, tiny_model) -> None:
    fake = tmp_path / "photo.png"
    fake.write_text("hello")
    with pytest.raises(unified.ImageError, match="photo.png"):
        unified.infer(tiny_model, str(fake), backend="ort", mode="fp32")


def test_empty_calibration_writes_nothing(tmp_path, tiny_model) -> None:
    empty = tmp_path / "calib"
    empty.mkdir()
    before = _listing(cache_dir())
    with pytest.raises(unified.CalibrationError, match="empty"):
        unified.quantize(tiny_model, backend="ort", calibration=str(empty))
    with pytest.raises(unified.CalibrationError, match="empty"):
        unified.quantize(tiny_model, backend="ort", calibration=[])
    assert _listing(cache_dir()) == before


def test_nan_calibration_is_named(tiny_model, tiny_calibration) -> None:
    bad = [t.copy() for t in tiny_calibration[:3]]
    bad[2][0, 0, 0, 0] = np.nan
    with pytest.raises(unified.CalibrationError, match="item 2.*NaN"):
        unified.quantize(tiny_model, backend="ort", calibration=bad)


def test_failed_save_leaves_nothing(tmp_path, tiny_model, monkeypatch) -> None:
    qm = unified.quantize(tiny_model, backend="ort", mode="fp32")

    monkeypatch.setattr(qm.artifact, "to_files", lambda: ({"model.onnx": b"x"}, {"mode": object()}))
    with pytest.raises(unified.UnifiedError, match="TypeError") as info:  # one error type crosses the API
        qm.save(tmp_path / "out.uqm")
    assert isinstance(info.value.__cause__, TypeError)
    assert list(tmp_path.iterdir()) == []


def test_truncated_and_tampered_saved_files(tmp_path, tiny_model) -> None:
    qm = unified.quantize(tiny_model, backend="ort", mode="fp32")
    path = tmp_path / "m.uqm"
    qm.save(path)
    data = path.read_bytes()
    (tmp_path / "cut.uqm").write_bytes(data[: len(data) // 2])
    with pytest.raises(unified.SavedModelError, match="truncated or corrupt"):
        unified.load(tmp_path / "cut.uqm")
    import zipfile

    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "evil.uqm", "w") as dst:
        for item in src.infolist():
            payload = src.read(item)
            if item.filename.startswith("blobs/"):
                payload = payload[:-4] + b"\x00\x00\x00\x01"
            dst.writestr(item, payload)
    with pytest.raises(unified.SavedModelError, match="checksum"):
        unified.load(tmp_path / "evil.uqm")
    with pytest.raises(unified.SavedModelError, match="not found"):
        unified.load(tmp_path / "absent.uqm")


def test_wrong_input_shape_is_input_error(tiny_model) -> None:
    qm = unified.quantize(tiny_model, backend="ort", mode="fp32")
    with pytest.raises(unified.InputError, match="shape"):
        qm.run(np.zeros((1, 4, 16, 16), np.float32))


@pytest.mark.parametrize("backend", ["ort", "rknn", "tengine"])
def test_runtime_path_does_not_import_torch(tmp_path, tiny_model, tiny_calibration, tiny_batch, backend) -> None:
    path = tmp_path / "m.uqm"
    unified.quantize(tiny_model, backend=backend, calibration=tiny_calibration,
                     preprocess=unified.Preprocess(resize=16, crop=16)).save(path)
    np.save(tmp_path / "x.npy", tiny_batch)
    script = textwrap.dedent(f"""
        import sys, numpy as np, unified
        qm = unified.load({str(path)!r})
        out = qm.run(np.load({str(tmp_path / 'x.npy')!r}))
        assert out.shape == (4, 10)
        print("torch" in sys.modules, "torchvision" in sys.modules)
    """)
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert proc.stdout.split() == ["False", "False"]


def test_calibration_of_the_wrong_size_is_named(tiny_model) -> None:
    wrong = [np.zeros((1, 3, 224, 224), np.float32)]
    with pytest.raises(unified.CalibrationError, match=r"\(1, 3, 224, 224\).*\['N', 3, 16, 16\]|\(1, 3, 224, 224\)"):
        unified.quantize(tiny_model, backend="rknn", calibration=wrong)


def test_default_preprocessing_follows_the_model_input(tiny_model) -> None:
    from unified.inputs.model_source import resolve_model

    pre = resolve_model(tiny_model).preprocess
    assert (pre.resize, pre.crop) == (18, 16)
    assert resolve_model("efficientnet_lite0").preprocess.crop == 224
