"""unified.compare and `unified compare`: figures, JSON, PNG, per-layer analysis."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import unified

PRE16 = unified.Preprocess(resize=16, crop=16)


def test_compare_on_tiny_model(tiny_model, tiny_calibration, tiny_batch) -> None:
    batch = np.concatenate([tiny_batch, tiny_batch[::-1] * 0.5])
    report = unified.compare(tiny_model, batch, backends=["ort", "rknn", ("tengine", {"algorithm": "minmax"}, "teng")],
                             calibration=tiny_calibration, preprocess=PRE16, layer_images=4)
    assert [b.label for b in report.backends] == ["ort", "rknn", "teng"]
    assert report.images == 8 and report.layer_images == 4
    for b in report.backends:
        assert 0 <= b.top1_agreement <= 1 and 0 <= b.top5_overlap <= 1
        assert -1 <= b.min_cosine <= b.mean_cosine <= 1 + 1e-9
        assert b.max_abs_error >= 0
    ort, rknn, teng = report.backends
    assert ort.layers == []                          # no internals exposed: output-level figures only
    assert [l.tensor for l in rknn.layers] == ["r1", "r2", "gap", "flat", "logits"]  # graph order; conv outputs fused
    for layer in rknn.layers + teng.layers:
        assert layer.single_sqnr_db is not None and layer.single_sqnr_db >= layer.entire_sqnr_db - 3
        assert layer.entire_sqnr_db > 10, layer
    assert rknn.worst_layers(1)[0].tensor in {"r1", "r2", "gap", "flat", "logits"}


def test_image_folder_input(tmp_path, tiny_model, tiny_calibration) -> None:
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    report = unified.compare(tiny_model, str(tmp_path), backends=["rknn"], calibration=tiny_calibration,
                             preprocess=PRE16, layer_images=1)
    assert report.images == 3 and report.layer_images == 1 and len(report.backends[0].layers) == 5


def test_unknown_backend_in_compare(tiny_model) -> None:
    with pytest.raises(unified.BackendNotFoundError, match="npu42"):
        unified.compare(tiny_model, np.zeros((1, 3, 16, 16), np.float32), backends=["npu42"], preprocess=PRE16)


@pytest.mark.lite0
def test_cli_compare_on_defaults_writes_json_and_png(tmp_path) -> None:
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    proc = subprocess.run([sys.executable, "-m", "unified.cli", "compare", "--layer-images", "2",
                           "--json", str(out_json), "--plot", str(out_png)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning" not in proc.stderr  # the zoo model's normalization is known: nothing to announce
    assert "top-1" in proc.stdout and "rknn" in proc.stdout and "tengine" in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines() if "%" in line) <= 100   # fits a terminal
    data = json.loads(out_json.read_text())
    assert data["images"] == 50 and data["model"] == "efficientnet_lite0"
    labels = [b["label"] for b in data["backends"]]
    assert labels == ["ort", "rknn", "tengine"]
    for b in data["backends"]:
        assert set(b) >= {"top1_agreement", "top5_overlap", "mean_cosine", "min_cosine", "max_abs_error", "layers", "worst_layers"}
    rknn = data["backends"][1]
    assert len(rknn["layers"]) == 61 and len(rknn["worst_layers"]) == 5
    assert set(rknn["layers"][0]) == {"tensor", "entire_cosine", "entire_sqnr_db", "single_cosine", "single_sqnr_db"}
    with Image.open(out_png) as im:
        assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 400


@pytest.mark.lite0
def test_per_layer_analysis_names_where_layer_weights_lose(eval_batch) -> None:
    report = unified.compare("efficientnet_lite0", eval_batch[:16], layer_images=4, backends=[
        ("rknn", {"quantized_algorithm": "normal", "bias_correction": False, "rounding": "nearest"}, "rknn-channel"),
        ("rknn", {"quantized_algorithm": "normal", "bias_correction": False, "rounding": "nearest",
                  "quantized_method": "layer"}, "rknn-layer")])
    channel, layer = report.backends
    gaps = sorted(((c.single_sqnr_db - l.single_sqnr_db, c.tensor, c.single_sqnr_db, l.single_sqnr_db)
                   for c, l in zip(channel.layers, layer.layers)), reverse=True)
    print("\nwhere per-tensor (layer) weights lose most against per-channel (single SQNR, dB):")
    for gap, tensor, c, l in gaps[:5]:
        print(f"  {tensor}: channel {c:.1f} dB, layer {l:.1f} dB (-{gap:.1f})")
    print("layer worst (single):", [(w.tensor, round(w.single_sqnr_db, 1)) for w in layer.worst_layers(5)])
    assert layer.top1_agreement < channel.top1_agreement
    assert gaps[0][0] > 10  # per-tensor weights cost some layer over 10 dB
    assert np.mean([g[0] for g in gaps]) > 0
