"""Export to the real toolkits' own files: RKNN-Toolkit2's hybrid-quantization table (with the float
model it belongs to) and Tengine's scale table."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import unified
from unified.backends.rknn.toolkit_export import merge_tables

PRE16 = unified.Preprocess(resize=16, crop=16)

TOOLKIT_TABLE = """custom_quantize_layers: {}
quantize_parameters:
    a:
        qtype: asym
        qmethod: layer
        dtype: int8
        min:
        -   -1.0
        max:
        -   3.0
        scale:
        -   0.01568627450980392
        zero_point:
        -   -64
        ori_min:
        -   -1.0
        ori_max:
        -   3.0
    b_mm:
        qtype: asym
        qmethod: layer
        dtype: int8
        min:
        -   -2.0
        max:
        -   2.0
        scale:
        -   0.01568627450980392
        zero_point:
        -   0
        ori_min:
        -   -2.0
        ori_max:
        -   2.0
"""


def _entries(text: str) -> dict[str, dict[str, float]]:
    out, current, lines = {}, None, text.splitlines()
    for i, line in enumerate(lines):
        key = re.match(r"^    ([^ ].*):$", line)
        if key:
            current = key.group(1)
            out[current] = {}
        elif current and re.match(r"^        (min|max|scale|zero_point):$", line):
            out[current][line.strip()[:-1]] = float(lines[i + 1].split()[-1])
    return out


def test_merge_keeps_the_toolkit_fields_and_writes_unified_ranges() -> None:
    ours = TOOLKIT_TABLE.replace("-   -1.0", "-   0.0").replace("-   3.0", "-   6.0")  # a: [0, 6]
    ours = ours[:ours.index("    b_mm:")]
    merged, missing = merge_tables(TOOLKIT_TABLE, ours)
    entries = _entries(merged)
    assert entries["a"] == {"min": 0.0, "max": 6.0, "scale": 0.01568627450980392, "zero_point": -64.0}
    assert entries["b_mm"]["min"] == -2.0                     # not named by unified: the toolkit's own
    assert missing == ["b_mm"]
    assert "ori_min:\n        -   -1.0" in merged             # the toolkit's record of its own calibration stays


def test_rknn_export_toolkit_writes_a_float_model_and_a_table_of_its_params(tiny_model, tiny_calibration, tiny_batch,
                                                                            tmp_path) -> None:
    qm = unified.quantize(tiny_model, backend="rknn", calibration=tiny_calibration, preprocess=PRE16)
    paths = qm.export_toolkit(tmp_path / "out")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["model.onnx", "model.quantization.cfg"]
    model = onnx.load(paths[0])
    onnx.checker.check_model(model)
    assert model.opset_import[0].version <= 19                # what RKNN-Toolkit2 2.5 loads
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in model.graph.node}
    table = _entries((tmp_path / "out" / "model.quantization.cfg").read_text())
    names = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    graph = qm.artifact.graph
    checked = 0
    for name, e in table.items():
        base = name[:-len("_int8")] if name.endswith("_int8") else name
        assert base in names, name
        if "scale" in e:                                      # min/max encode unified's params exactly
            assert e["scale"] == pytest.approx((e["max"] - e["min"]) / 255, rel=1e-12)
            assert -128 - round(e["min"] / e["scale"]) == e["zero_point"]
            if base in graph.tensors:
                assert e["scale"] == pytest.approx(graph.tensors[base].scale, rel=1e-6)
                assert e["zero_point"] == graph.tensors[base].zero_point
                checked += 1
    assert checked >= 4
    # the float model carries unified's effective weights: it computes what the rknn model approximates
    session = ort.InferenceSession(paths[0], providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: tiny_batch})[0]
    q = qm.run(tiny_batch)
    cosine = (out * q).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(q, axis=1)
    assert cosine.min() > 0.999


def test_tengine_exports_its_scale_table_and_ort_has_no_toolkit_format(tiny_model, tiny_calibration, tmp_path) -> None:
    from unified.engine.scale_table import read_scale_table

    qm = unified.quantize(tiny_model, backend="tengine", calibration=tiny_calibration, preprocess=PRE16)
    (path,) = qm.export_toolkit(tmp_path)
    table = read_scale_table(path)
    for name, (scale, zp) in table.items():
        assert scale == pytest.approx(qm.artifact.graph.tensors[name].scale, abs=5e-7)   # printed with %f
        assert zp == qm.artifact.graph.tensors[name].zero_point
    fp32 = unified.quantize(tiny_model, backend="ort", mode="fp32")
    with pytest.raises(unified.BackendError, match="no toolkit format"):
        fp32.export_toolkit(tmp_path)


def test_cli_exports_and_merges(tiny_model, tiny_calibration, tmp_path) -> None:
    onnx.save(tiny_model, tmp_path / "tiny.onnx")
    for i, sample in enumerate(tiny_calibration):
        np.save(tmp_path / f"{i}.npy", sample)
    (tmp_path / "dataset.txt").write_text("".join(f"{i}.npy\n" for i in range(len(tiny_calibration))))
    run = lambda *a: subprocess.run([sys.executable, "-m", "unified.cli", *a], capture_output=True, text=True)  # noqa: E731
    proc = run("quantize", "--model", str(tmp_path / "tiny.onnx"), "--backend", "rknn", "--calibration", str(tmp_path / "dataset.txt"),
               "--size", "16", "--resize", "16", "--mean", "0.5", "--std", "0.5", "-o", str(tmp_path / "m.uqm"),
               "--export-toolkit", str(tmp_path / "tk"))
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "model.quantization.cfg" in proc.stdout
    ours = (tmp_path / "tk" / "model.quantization.cfg").read_text()
    first = next(iter(_entries(ours)))
    toolkit = TOOLKIT_TABLE.replace("    a:", f"    {first}:")
    (tmp_path / "step1.cfg").write_text(toolkit)
    proc = run("rknn-table", str(tmp_path / "step1.cfg"), str(tmp_path / "tk" / "model.quantization.cfg"))
    assert proc.returncode == 0, proc.stderr[-1500:]
    merged = _entries((tmp_path / "step1.cfg").read_text())
    assert merged[first]["min"] == _entries(ours)[first]["min"] and merged[first]["scale"] == 0.01568627450980392
    assert "b_mm" in proc.stdout
    proc = run("rknn-table", str(tmp_path / "nope.cfg"), str(tmp_path / "step1.cfg"))
    assert proc.returncode == 2 and "nope.cfg" in proc.stderr
