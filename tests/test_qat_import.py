"""A PyTorch QAT model (fake-quant modules, exported by torch.onnx as QDQ) imported on every backend
without calibration keeps the QAT model's own accuracy within one point."""
from __future__ import annotations

import onnx
import pytest

import unified

from tests.qat_shapes import qat_model_and_onnx, shapes


@pytest.fixture(scope="module")
def qat() -> tuple:
    import torch

    net, data = qat_model_and_onnx(steps=300)
    x, y = shapes(400, seed=7)
    with torch.no_grad():
        own = float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    return onnx.load_from_string(data), x, y, own


def test_the_export_is_qdq_with_per_channel_weights(qat) -> None:
    model, _, _, own = qat
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 8 and ops.count("DequantizeLinear") >= 8
    assert own >= 0.9          # the training worked: the comparison below means something


@pytest.mark.parametrize("backend", ["ort", "rknn", "tengine"])
def test_qat_model_keeps_its_accuracy_on_every_backend(qat, backend) -> None:
    model, x, y, own = qat
    qm = unified.quantize(model, backend=backend)          # no calibration: the QDQ params are adopted
    accuracy = float((qm.run(x).argmax(1) == y).mean())
    print(f"\n{backend}: QAT model {own:.2%}, imported {accuracy:.2%}; re-fitted: {len(qm.import_report)}")
    assert abs(accuracy - own) <= 0.01
    if backend == "rknn":
        assert qm.import_report == []                      # every param expressible: adopted as given
    if backend == "tengine":                               # per-channel weights re-fitted per tensor, said so
        assert len(qm.import_report) == 4 and all("per channel -> per tensor" in r for r in qm.import_report)
