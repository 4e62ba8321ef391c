"""The build pipeline every emulated NPU backend shares, parameterized by its `Scheme`.

prepare (fold BN/Pad/constants) -> optional bias correction against the scheme's own weight
rounding -> calibrate activation statistics with ORT -> lower to an `IntegerGraph`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx

from unified.core.bias_correction import correct_biases
from unified.core.calibration import CalibrationSet
from unified.core.errors import CalibrationError
from unified.core.integer.calibrate import collect
from unified.core.integer.integer_graph import IntegerGraph
from unified.core.integer.lowering import lower
from unified.core.integer.prepare import prepare
from unified.core.integer.ranges import weight_ranges
from unified.core.integer.scheme import Scheme
from unified.core.preprocess import Preprocess


@dataclass(frozen=True)
class BuildOptions:
    range_method: str = "minmax"        # activation range estimator (ranges.ESTIMATORS)
    weight_method: str = "minmax"       # "minmax" | "mse"
    bias_correction: bool = False
    float_fallback: tuple[str, ...] = ()


def fake_quantizer(scheme: Scheme, weight_method: str):
    """The scheme's weight rounding as float -> float, for bias correction to compensate exactly."""
    def quantize(w: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
        w64 = w.astype(np.float64)
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
            return quantize(w64.T, _FakeConv).T  # per output channel = columns
        lo, hi = weight_ranges(w64, scheme.per_channel_weights, weight_method, 256)
        scale, zp = scheme.weight_params(lo, hi)
        if not scheme.per_channel_weights:
            scale, zp = np.full(w.shape[0], float(scale[0])), np.full(w.shape[0], int(zp[0]))
        q = scheme.quantize_weight(w64, scale, zp)
        shape = (-1,) + (1,) * (w.ndim - 1)
        return ((q - zp.reshape(shape)) * scale.reshape(shape)).astype(np.float32)
    return quantize


class _FakeConv:
    op_type = "Conv"
    attribute: list = []


def input_range(preprocess: Preprocess) -> tuple[float, float]:
    """The normalized range of 8-bit pixels: folding mean/std into the integer input."""
    mean = np.asarray(preprocess.mean, np.float64)
    std = np.asarray(preprocess.std, np.float64)
    return float(((0 - mean) / std).min()), float(((255 - mean) / std).max())


def build_integer_graph(model: onnx.ModelProto, calibration: CalibrationSet | None, scheme: Scheme,
                        options: BuildOptions, preprocess: Preprocess | None,
                        corrected_model: onnx.ModelProto | None = None) -> IntegerGraph:
    if calibration is None or len(calibration) == 0:
        raise CalibrationError(f"{scheme.name}: quantization needs calibration data")
    prepared = prepare(model)
    if options.bias_correction:
        prepared = correct_biases(prepared, calibration, fake_quantizer(scheme, options.weight_method))
    stats = collect(prepared, calibration, options.range_method, mean_of=[])
    graph = lower(prepared, stats, scheme, options.range_method, options.weight_method,
                  input_range(preprocess) if preprocess is not None else None, set(options.float_fallback))
    return graph


def op_types(model: onnx.ModelProto) -> Iterable[str]:
    return {n.op_type for n in model.graph.node}
