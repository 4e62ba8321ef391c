"""Quantizing with `onnxruntime.quantization`: pre-processing, static QDQ, dynamic.

Static QDQ is the default: per-channel int8 weights and uint8 activations. Measured on this
x86 (AVX512-VNNI) CPU, uint8 activations run about twice as fast as fp32 at batch 1 while int8
activations are barely faster (see benchmarks/ort_overhead.py), so uint8 is the default.
Dynamic quantization (`quantize_dynamic`, QUInt8 weights) is kept because the original tutorial
used it; on CNNs it turns every Conv into ConvInteger with activations quantized at run time,
which is slower than fp32 here and loses accuracy.

Under `profile="best"` (the default) static quantization adds, before `quantize_static` writes
the model: adaptive weight rounding onto ORT's own per-channel grid, bias correction, activation
ranges that minimize each tensor's quantization MSE (passed as `TensorQuantOverrides`; an explicit
`calibrate_method` keeps ORT's own), and calibrated ranges for internal Softmax outputs; after it,
the empirical bias correction of the written QDQ model (`empirical_bias.py`).
`profile="toolkit"` is plain `quantize_static`.
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from unified.core.backend_spec import option_bool, option_choice, option_names
from unified.core.profile import Profile
from unified.graph.float_stats import tensor_maxima
from unified.graph.onnx_model import graph_inputs, output_channel_axis
from unified.graph.prepare import prepare
from unified.inputs.calibration import CalibrationSet
from unified.quant.bias_correction import correct_biases
from unified.quant.ranges import ESTIMATORS
from unified.quant.stream_equalization import equalize_streams
from unified.quant.weight_rounding import WeightGrid, round_weights

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
QUANT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


class _Reader(CalibrationDataReader):
    """Feeds the calibration tensors one at a time under the model's input name."""

    def __init__(self, input_name: str, calibration: CalibrationSet) -> None:
        self._input_name = input_name
        self._tensors: Iterator[np.ndarray] = iter(calibration)

    def get_next(self) -> dict[str, np.ndarray] | None:
        tensor = next(self._tensors, None)
        if tensor is None:
            return None
        return tensor if isinstance(tensor, dict) else {self._input_name: tensor}


def _choice(options: dict[str, Any], key: str, table: dict[str, Any], default: str) -> Any:
    return table[option_choice("ort", options, key, table, default)]


@functools.lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (AVX512-VNNI or AVX-VNNI); unknown (not Linux) counts as yes.

    Without VNNI, ORT's uint8 x int8 kernels use VPMADDUBSW, which sums pairs of products into
    int16 with saturation; with full 8-bit weights that loses accuracy badly (EfficientNet-Lite0:
    57% of fp32 top-1 instead of 91%). ORT's remedy is `reduce_range` (7-bit weights)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    if "flags" not in flags or not any(f in flags for f in ("avx2", "avx512")):
        return True  # not an x86 CPU that ORT would run VPMADDUBSW on
    return "avx512_vnni" in flags or "avx_vnni" in flags


def fake_quantize_symmetric_int8(w: np.ndarray, node: onnx.NodeProto, qmax: int = 127) -> np.ndarray:
    """ORT's per-channel weight quantization: symmetric int8 in [-qmax, qmax] (127, or 64 with
    reduce_range), round half to even."""
    axis = output_channel_axis(node)
    reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
    absmax = np.abs(w.astype(np.float64)).max(axis=reduce_axes, keepdims=True)
    scale = np.where(absmax > 0, absmax / qmax, 1.0)
    return (np.clip(np.rint(w / scale), -qmax, qmax) * scale).astype(np.float32)


def internal_softmax_overrides(model: onnx.ModelProto, calibration: CalibrationSet) -> dict[str, list[dict]]:
    """`TensorQuantOverrides` giving each Softmax inside the graph (attention) its calibrated
    range [0, max] instead of the [0, 1] ORT forces on every Softmax: over T tokens the
    probabilities are near 1/T, which ORT's 1/255 step rounds to zero. A graph output keeps [0, 1]."""
    outputs = {o.name for o in model.graph.output}
    names = [n.output[0] for n in model.graph.node if n.op_type == "Softmax" and n.output[0] not in outputs]
    if not names:
        return {}
    maxima = tensor_maxima(model, names, calibration)
    return {name: [{"rmin": np.float32(0.0), "rmax": np.float32(min(max(hi, 1e-6), 1.0))}]
            for name, hi in maxima.items()}


def mse_range_overrides(model: onnx.ModelProto, calibration: CalibrationSet) -> dict[str, list[dict]]:
    """`TensorQuantOverrides` giving every activation the range that minimizes its expected
    squared quantization error (unified's `mse` estimator over a 2048-bin histogram) instead of
    its min-max. A tensor read only by a Relu/Clip takes that activation's range, as ORT's own
    range adjustment does."""
    from unified.quant.calibrate import collect

    stats = collect(model, calibration, "mse")
    estimate = ESTIMATORS["mse"]
    inits = {t.name for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    chosen = {name: estimate(h, 256) for name, h in stats.histograms.items() if name not in inits}
    for name in list(chosen):
        users = consumers.get(name, [])
        if len(users) == 1 and users[0].op_type in ("Relu", "Clip") and users[0].output[0] in chosen:
            chosen[name] = chosen[users[0].output[0]]
    return {name: [{"rmin": np.float32(min(lo, 0.0)), "rmax": np.float32(max(hi, 0.0))}]
            for name, (lo, hi) in chosen.items() if hi > lo}


def symmetric_int8_grid(qmax: int):
    """ORT's per-channel weight grid (rows = output channels): scale max|w| / qmax, zero point 0,
    round half to even; adaptive rounding moves weights onto it so `quantize_static`, which
    recomputes the same scales, lands on the chosen integers."""
    def grid(rows: np.ndarray, node: onnx.NodeProto) -> WeightGrid:
        absmax = np.abs(rows).max(axis=1)
        scale = np.where(absmax > 0, absmax / qmax, 1.0)
        nearest = np.clip(np.rint(rows / scale[:, None]), -qmax, qmax)
        return WeightGrid(scale, np.zeros(len(rows), np.int64), -qmax, qmax, nearest)
    return grid


def quantize_static_qdq(model: onnx.ModelProto, calibration: CalibrationSet, options: dict[str, Any]) -> bytes:
    # the float graph the integer backends quantize too (zero Pads folded into their Convs, no-ops
    # dropped): one QDQ node pair fewer per Pad, and the same float statistics as their builds
    model = prepare(model)
    profile = Profile.read("ort", options)
    method = _choice(options, "calibrate_method", CALIBRATION_METHODS, "minmax")
    activation = _choice(options, "activation_type", QUANT_TYPES, "uint8")
    weight = _choice(options, "weight_type", QUANT_TYPES, "int8")
    per_channel = option_bool("ort", options, "per_channel", True)
    exclude = list(option_names("ort", options, "nodes_to_exclude"))
    reduce_range = option_bool("ort", options, "reduce_range", not cpu_has_vnni())
    correct = profile.addition("bias_correction", best=True, toolkit=False)
    extra: dict[str, Any] = {"CalibTensorRangeSymmetric": False}
    if profile.addition("calibrated_softmax", best=True, toolkit=False):
        extra["TensorQuantOverrides"] = internal_softmax_overrides(model, calibration)
    adaptive = profile.rounding()
    ranges = profile.activation_ranges("calibrate_method")
    empirical = profile.addition("empirical_bias_correction", best=True, toolkit=False)
    if profile.addition("stream_equalization", best=False, toolkit=False):  # opt-in: see the README
        model, _ = equalize_streams(model, calibration)
    unrounded = model
    if per_channel and weight == QuantType.QInt8 and (correct or adaptive == "adaptive"):
        qmax = 64 if reduce_range else 127
        if adaptive == "adaptive":
            model = round_weights(model, calibration, symmetric_int8_grid(qmax), centered=correct, per_channel=True)
        if correct:
            model = correct_biases(model, calibration, lambda w, node: fake_quantize_symmetric_int8(w, node, qmax),
                                   unrounded)
    with tempfile.TemporaryDirectory(prefix="unified-ort-") as tmp:
        src, pre, out = Path(tmp, "in.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "out.onnx")
        onnx.save(model, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if ranges == "mse":
            extra["TensorQuantOverrides"] = {**mse_range_overrides(onnx.load(str(pre)), calibration),
                                             **extra.get("TensorQuantOverrides", {})}
        quantize_static(
            str(pre), str(out), _Reader(graph_inputs(model)[0].name, calibration),
            quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
            activation_type=activation, weight_type=weight, calibrate_method=method,
            nodes_to_exclude=exclude, extra_options=extra,
        )
        if not empirical:
            return out.read_bytes()
        from unified.backends.ort.empirical_bias import correct_qdq_biases

        quantized = onnx.load(str(out))
        correct_qdq_biases(quantized, unrounded, calibration)
        return quantized.SerializeToString()


def quantize_dynamic_uint8(model: onnx.ModelProto, options: dict[str, Any]) -> bytes:
    weight = _choice(options, "weight_type", QUANT_TYPES, "uint8")
    with tempfile.TemporaryDirectory(prefix="unified-ort-") as tmp:
        src, pre, out = Path(tmp, "in.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "out.onnx")
        onnx.save(model, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(out), weight_type=weight)
        return out.read_bytes()
