"""The `unified` command: quantize, infer, backends, error exits; and the progress bar."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import onnx
from PIL import Image

from unified.terminal import progress as progress_module


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unified.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ))


def test_quantize_then_infer_a_saved_model(tmp_path, tiny_model) -> None:
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_model, model)
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    out = tmp_path / "tiny.uqm"
    proc = _cli("quantize", "--model", str(model), "--backend", "rknn", "--calibration", str(calib),
                "-O", "quantized_algorithm=normal", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "saved rknn/default model" in proc.stdout and "int8 NHWC" in proc.stdout
    assert out.exists()
    proc = _cli("infer", str(calib / "0.png"), "--model", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "rank" in proc.stdout and "class " in proc.stdout   # 10-class model: labels are "class N"


def test_backends_lists_contracts() -> None:
    proc = _cli("backends")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:5] == ["backend", "io", "input", "output", "modes"]
    assert any(line.startswith("rknn") and "int8 NHWC" in line for line in lines)
    assert any(line.startswith("tengine") and "uint8 NCHW" in line for line in lines)


def test_errors_exit_2_with_a_message(tmp_path) -> None:
    proc = _cli("infer", str(tmp_path / "missing.jpg"), "--model", "nope.onnx", "--backend", "ort")
    assert proc.returncode == 2 and "unified: error:" in proc.stderr and "nope.onnx" in proc.stderr
    proc = _cli("quantize", "--backend", "tpu", "-o", str(tmp_path / "x.uqm"))
    assert proc.returncode == 2 and "unknown backend 'tpu'" in proc.stderr
    assert not (tmp_path / "x.uqm").exists()


def test_progress_bar_only_when_asked_or_on_a_terminal(monkeypatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("UNIFIED_PROGRESS", "0")
    assert list(progress_module.progress(range(3), 3, "work")) == [0, 1, 2]
    assert err.getvalue() == ""
    monkeypatch.setenv("UNIFIED_PROGRESS", "1")
    with progress_module.scope("rknn"):
        assert list(progress_module.progress(range(3), 3, "work")) == [0, 1, 2]
    assert "rknn: work" in err.getvalue() and "3/3" in err.getvalue()


def test_long_phases_log_one_line_when_not_drawing(monkeypatch, caplog) -> None:
    monkeypatch.setenv("UNIFIED_PROGRESS", "0")
    with caplog.at_level("INFO", logger="unified"), progress_module.scope("tengine"):
        assert list(progress_module.progress(range(49), 49, "weight rounding", "49 layers")) == list(range(49))
    assert [r.getMessage() for r in caplog.records] == ["tengine: weight rounding 49 layers"]


def test_ort_calibration_methods(tiny_model, tiny_calibration, tiny_batch) -> None:
    import pytest

    import unified

    outs = {}
    for method in ("minmax", "entropy", "percentile"):
        outs[method] = unified.quantize(tiny_model, backend="ort", calibration=tiny_calibration,
                                        calibrate_method=method).run(tiny_batch)
    assert not np.array_equal(outs["minmax"], outs["percentile"])  # the method really changes the ranges
    with pytest.raises(unified.BackendError, match="calibrate_method='kl'"):
        unified.quantize(tiny_model, backend="ort", calibration=tiny_calibration, calibrate_method="kl")
