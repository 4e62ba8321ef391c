"""The conformance checks. Each takes a backend name (and what it needs) and asserts one property."""
from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import unified
from unified.consistency.tiny_models import tiny_classifier
from unified.core import plugins

PRE16 = unified.Preprocess(resize=16, crop=16)


@dataclass
class ConformanceModel:
    """A tiny classifier with its calibration and test batches (fast enough for every backend)."""

    model: object
    calibration: list[np.ndarray]
    batch: np.ndarray


def conformance_model(seed: int = 0) -> ConformanceModel:
    rng = np.random.default_rng(seed)
    calibration = [rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(16)]
    batch = rng.uniform(-1, 1, (4, 3, 16, 16)).astype(np.float32)
    return ConformanceModel(tiny_classifier(seed), calibration, batch)


def _quantize(backend: str, cm: ConformanceModel):
    return unified.quantize(cm.model, backend=backend, calibration=cm.calibration, preprocess=PRE16)


def check_hook_contract(backend: str, cm: ConformanceModel) -> None:
    """All four hooks answer for `backend`, and `run` equals the three steps done by hand."""
    qm = _quantize(backend, cm)
    native_in = plugins.call_optional(backend, "unified_quantize_input", artifact=qm.artifact, batch=cm.batch)
    assert native_in is not None, f"{backend}: unified_quantize_input did not answer"
    native_out = plugins.call_optional(backend, "unified_infer", artifact=qm.artifact, inputs=native_in)
    assert native_out is not None, f"{backend}: unified_infer did not answer"
    logits = plugins.call_optional(backend, "unified_dequantize_output", artifact=qm.artifact, outputs=native_out)
    assert logits is not None, f"{backend}: unified_dequantize_output did not answer"
    np.testing.assert_array_equal(np.asarray(logits, np.float32), qm.run(cm.batch),
                                  err_msg=f"{backend}: run() differs from its three hooks called by hand")
    assert qm.run(cm.batch).shape == (4, 10), f"{backend}: logits shape {qm.run(cm.batch).shape}, expected (4, 10)"


def check_io_contract(backend: str, cm: ConformanceModel) -> None:
    """The native I/O has the dtype, layout and (for integer backends) quantization it declares."""
    spec = plugins.get_backend(backend)
    qm = _quantize(backend, cm)
    native_in = qm.quantize_input(cm.batch)
    native_out = qm.run_quantized(native_in)
    assert native_in.dtype == np.dtype(spec.input_dtype), f"{backend}: input dtype {native_in.dtype}, declared {spec.input_dtype}"
    assert native_out.dtype == np.dtype(spec.output_dtype), f"{backend}: output dtype {native_out.dtype}, declared {spec.output_dtype}"
    expected = {"NCHW": (4, 3, 16, 16), "NHWC": (4, 16, 16, 3)}[spec.input_layout]
    assert native_in.shape == expected, f"{backend}: native input shape {native_in.shape}, layout {spec.input_layout} means {expected}"
    if spec.io == "float":
        assert qm.input_quant is None and qm.output_quant is None, f"{backend}: float I/O must not declare quantization"
    else:
        assert qm.input_quant is not None and qm.output_quant is not None, f"{backend}: integer I/O needs input/output quant"
        assert qm.input_quant.dtype == spec.input_dtype and qm.input_quant.layout == spec.input_layout


def check_quantize_roundtrip(backend: str, cm: ConformanceModel) -> None:
    """quantize_input then dequantizing with the input's parameters returns the input within half a step."""
    qm = _quantize(backend, cm)
    q = qm.quantize_input(cm.batch)
    iq = qm.input_quant
    if iq is None:
        np.testing.assert_array_equal(q, cm.batch, err_msg=f"{backend}: float quantize_input must be the identity")
        return
    back = iq.dequantize(q)
    if iq.layout == "NHWC":
        back = back.transpose(0, 3, 1, 2)
    lo, hi = (iq.qmin - iq.zero_point) * iq.scale, (iq.qmax - iq.zero_point) * iq.scale
    inside = (cm.batch >= lo) & (cm.batch <= hi)
    err = np.abs(back - cm.batch)[inside].max()
    assert err <= iq.scale / 2 + 1e-6, f"{backend}: round trip error {err:.3g} exceeds half a step {iq.scale / 2:.3g}"


def check_determinism(backend: str, cm: ConformanceModel) -> None:
    qm = _quantize(backend, cm)
    again = _quantize(backend, cm)
    np.testing.assert_array_equal(qm.run(cm.batch), qm.run(cm.batch), err_msg=f"{backend}: two runs differ")
    np.testing.assert_array_equal(qm.run(cm.batch), again.run(cm.batch), err_msg=f"{backend}: two quantizations differ")


def check_thread_safety(backend: str, cm: ConformanceModel, threads: int = 4, repeats: int = 5) -> None:
    """4 threads sharing one loaded model get the single-threaded results."""
    qm = _quantize(backend, cm)
    expected = qm.run(cm.batch)
    errors: list[str] = []

    def work() -> None:
        for _ in range(repeats):
            out = qm.run(cm.batch)
            if not np.array_equal(out, expected):
                errors.append(f"max diff {np.abs(out - expected).max()}")

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, f"{backend}: results differ across {threads} threads: {errors[:3]}"


def check_save_load(backend: str, cm: ConformanceModel) -> None:
    qm = _quantize(backend, cm)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"model.{backend}.uqm"
        qm.save(path)
        loaded = unified.load(path)
        assert loaded.backend == backend
        np.testing.assert_array_equal(loaded.run(cm.batch), qm.run(cm.batch),
                                      err_msg=f"{backend}: loaded model differs from the saved one")
        assert os.listdir(tmp) == [path.name], f"{backend}: save left extra files: {os.listdir(tmp)}"


def check_fp32_consistency(backend: str, images: int = 24) -> dict[str, float]:
    """On the built-in EfficientNet-Lite0 and photo crops, within the thresholds the backend declares."""
    from unified.consistency.compare import compare
    from unified.inputs.sample_images import random_crops

    spec = plugins.get_backend(backend)
    report = compare("efficientnet_lite0", random_crops(images, seed=0), backends=[backend], layer_images=0)
    b = report.backends[0]
    figures = {"top1_agreement": b.top1_agreement, "min_cosine": b.min_cosine}
    for key, threshold in spec.thresholds.items():
        assert figures[key] >= threshold, f"{backend}: {key} {figures[key]:.4f} < declared {threshold} on {images} crops"
    return figures
