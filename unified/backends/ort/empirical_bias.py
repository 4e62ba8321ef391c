"""Empirical bias correction of ONNX Runtime's QDQ model, measured layer after layer on unified's
integer engine.

`quantize_static` writes each Conv/Gemm bias as an int32 initializer at scale s_in * s_w. The
correction (Nagel et al. 2019, section 4.2, empirical form; `quant/empirical_bias.py`) must run
layer after layer: a layer's mean shift includes what arrives from upstream, so correcting every
layer from one run counts upstream shifts twice (tried: it wrecked Lite0). ORT runs a graph whole,
so the QDQ model is imported, with its own scales and zero points, onto the integer engine (its
uint8 activations as int8 with the zero point moved by 128, its symmetric per-channel int8 weights
as they are: the same integers, see `graph/qdq_import.py`), corrected there, and the change of
each int32 bias is written back into the QDQ model. The engine's fixed-point requantization differs
from ORT's float one by a rounding now and then, which does not move a channel's mean.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import numpy_helper

from unified.core.errors import UnifiedError
from unified.core.quant_params import QuantParams
from unified.core.rounding import RoundingPolicy
from unified.engine.scheme import Scheme
from unified.graph.float_stats import channel_means
from unified.graph.qdq_import import split_qdq
from unified.inputs.calibration import CalibrationSet
from unified.quant.empirical_bias import _correctable, correct_biases_empirically, measurement_set
from unified.quant.pipeline import BuildOptions, build_from_qdq

#: the suffix `quantize_static` gives a tensor it renames in front of a QuantizeLinear (graph outputs)
_QUANTIZE_INPUT = "_QuantizeLinear_Input"


class OrtQdqScheme(Scheme):
    """ORT's static QDQ arithmetic on the engine: 8-bit asymmetric activations (carried as int8),
    symmetric int8 weights per channel, int32 biases, ties to even. Every tensor's params come
    from the QDQ model itself; the formulas below only serve tensors it carries none for."""

    name = "ort-qdq"
    activation_dtype = "int8"
    weight_dtype = "int8"
    rounding = RoundingPolicy.TIES_TO_EVEN
    per_channel_weights = True

    def activation_params(self, lo: float, hi: float) -> QuantParams:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / 255.0 if hi > lo else 1.0
        return self.params(scale, int(np.clip(-128 - np.rint(lo / scale), -128, 127)))

    def weight_params(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        amax = np.maximum(np.abs(lo), np.abs(hi))
        return np.where(amax > 0, amax / 127.0, 1.0), np.zeros(len(amax), np.int64)


def _fp32_name(name: str, producer: dict[str, onnx.NodeProto]) -> str | None:
    """The fp32 model's name for a pre-activation tensor of the QDQ model: `quantize_static` drops
    a Relu/Clip after a Conv (the output range clamps instead) and gives the Conv the activation's
    output name, and renames a graph output's producer to `<name>_QuantizeLinear_Input`."""
    if name not in producer and name.endswith(_QUANTIZE_INPUT):
        name = name[: -len(_QUANTIZE_INPUT)]
    if name not in producer:
        return None
    node = producer[name]
    return node.input[0] if node.op_type in ("Relu", "Clip") else name


def _bias_initializers(qdq: onnx.ModelProto) -> dict[str, str]:
    """Conv/Gemm output name -> its int32 bias initializer, where `quantize_static` quantized it."""
    inits = {t.name: t for t in qdq.graph.initializer}
    dequantized = {n.output[0]: n for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    found = {}
    for node in qdq.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] in dequantized:
            bias = dequantized[node.input[2]].input[0]
            if bias in inits and inits[bias].data_type == onnx.TensorProto.INT32:
                found[node.output[0]] = bias
    return found


class BiasCorrectionSkippedWarning(UserWarning):
    """ORT's QDQ model could not be imported onto the engine, so its biases were not corrected."""


def correct_qdq_biases(qdq: onnx.ModelProto, reference: onnx.ModelProto, calibration: CalibrationSet) -> int:
    """Correct, in place, the int32 biases of `qdq` (ORT's static QDQ model of `reference`, the
    fp32 model it was quantized from) so that each Conv/Gemm's mean pre-activation per channel on
    the calibration images matches fp32's. Returns how many layers moved."""
    biases = _bias_initializers(qdq)
    if not biases or len(calibration) == 0:
        return 0
    try:  # every tensor's params from the QDQ model itself: no calibration pass
        graph, _ = build_from_qdq(split_qdq(qdq), None, OrtQdqScheme(), BuildOptions())
    except UnifiedError as exc:  # a graph the engine cannot take as it is: ORT's model stays as written
        warnings.warn(f"ort: empirical bias correction skipped, the integer engine cannot take this QDQ model "
                      f"({str(exc)[:200]}); its biases stay as quantize_static wrote them "
                      f"(empirical_bias_correction=False silences this)", BiasCorrectionSkippedWarning, stacklevel=2)
        return 0
    producer = {o: n for n in reference.graph.node for o in n.output}
    layers = [n for n in graph.nodes if _correctable(n) and n.attrs["preact"] in biases]
    names = {n.attrs["preact"]: _fp32_name(n.attrs["preact"], producer) for n in layers}
    names = {k: v for k, v in names.items() if v is not None}
    if not names:
        return 0
    fp32 = channel_means(reference, sorted(set(names.values())), measurement_set(calibration))
    before = {n.name: n.arrays["bias"].copy() for n in layers}
    correct_biases_empirically(graph, None, calibration, targets={k: fp32[v] for k, v in names.items()})
    inits = {t.name: t for t in qdq.graph.initializer}
    moved = 0
    for node in layers:
        delta = node.arrays["bias"].astype(np.int64) - before[node.name].astype(np.int64)
        if not np.any(delta):
            continue
        name = biases[node.attrs["preact"]]
        q = numpy_helper.to_array(inits[name]).astype(np.int64) + delta.reshape(-1)
        inits[name].CopyFrom(numpy_helper.from_array(np.clip(q, -(2**31), 2**31 - 1).astype(np.int32), name))
        moved += 1
    return moved
