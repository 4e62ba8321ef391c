"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", section 4.2), as a float-model transform.

Rounding weights shifts each output channel's expected value by ``(W_q - W) . E[x]``. Given the
backend's own weight quantizer (so the correction matches exactly the rounding it will apply) and
fp32 per-channel means of each layer's input, we subtract that shift from the bias before the
backend quantizes. Only float biases change; the quantization scheme itself is untouched.
(Zero padding at borders makes edge outputs see fewer inputs; the correction uses the interior
expectation, as the paper does.)
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from unified.graph.float_stats import channel_means
from unified.graph.onnx_model import gemm_weight_rows, node_attributes
from unified.inputs.calibration import CalibrationSet

#: fake-quantizes one weight tensor as the backend will: (weight, node) -> dequantized weight
WeightQuantizer = Callable[[np.ndarray, onnx.NodeProto], np.ndarray]


def weight_shift(node: onnx.NodeProto, w: np.ndarray, wq: np.ndarray, mean_in: np.ndarray) -> np.ndarray:
    """Expected output shift per output channel caused by replacing `w` with `wq`."""
    dw = (wq.astype(np.float64) - w.astype(np.float64))
    if node.op_type == "Conv":
        group = int(node_attributes(node).get("group", 1))
        c_out, c_in_g = dw.shape[0], dw.shape[1]
        per_tap = dw.reshape(c_out, c_in_g, -1).sum(axis=2)  # (C_out, C_in/g)
        out_group = np.arange(c_out) // (c_out // group)
        in_index = out_group[:, None] * c_in_g + np.arange(c_in_g)[None, :]
        return (per_tap * mean_in[in_index]).sum(axis=1)
    if node.op_type == "Gemm":
        mat = gemm_weight_rows(node, dw)  # (out, in)
        return mat @ mean_in
    raise ValueError(f"bias correction does not handle {node.op_type}")


def correct_biases(model: onnx.ModelProto, calibration: CalibrationSet, quantize_weight: WeightQuantizer,
                   reference: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """A copy of `model` whose Conv/Gemm biases absorb the expected weight-rounding shift.

    `reference` holds the float weights whose outputs the biases should restore, when `model`'s
    own weights were already moved towards the grid (adaptive rounding): the shift to undo is
    quantized minus *original* weights. Means are taken on the reference model's tensors.
    """
    reference = model if reference is None else reference
    originals = {t.name: t for t in reference.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    layers = [n for n in out.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1 and n.input[1] in inits]
    if not layers:
        return out
    means = channel_means(reference, sorted({n.input[0] for n in layers}), calibration)
    for node in layers:
        w = numpy_helper.to_array(inits[node.input[1]])
        original = numpy_helper.to_array(originals[node.input[1]])
        shift = weight_shift(node, original, quantize_weight(w, node), means[node.input[0]])
        c_out = shift.shape[0]
        if len(node.input) > 2 and node.input[2] in inits:
            b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
            inits[node.input[2]].CopyFrom(numpy_helper.from_array((b - shift).astype(np.float32), node.input[2]))
        else:
            bias_name = f"{node.name or node.output[0]}.corrected_bias"
            out.graph.initializer.append(numpy_helper.from_array((-shift).astype(np.float32), bias_name))
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = bias_name
        assert c_out == w.shape[0] or node.op_type == "Gemm"
    return out
