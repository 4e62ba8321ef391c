"""The build pipeline every emulated NPU backend shares, parameterized by its `Scheme`.

prepare (fold BN/Pad/constants) -> optional bias correction against the scheme's own weight
rounding -> calibrate activation statistics with ORT -> lower to an `IntegerGraph`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx

from unified.core.errors import CalibrationError, ModelError, ScaleFileError
from unified.core.quant_params import QuantParams
from unified.engine.integer_graph import IntegerGraph
from unified.engine.lowering import RangeSource, lower
from unified.engine.scale_table import check_names
from unified.engine.scheme import Scheme
from unified.graph.onnx_model import from_weight_rows, weight_rows
from unified.graph.prepare import prepare
from unified.graph.qdq_import import ImportedQdq
from unified.inputs.calibration import CalibrationSet
from unified.inputs.preprocess import Preprocess
from unified.quant.bias_correction import correct_biases
from unified.quant.empirical_bias import correct_biases_empirically
from unified.quant.calibrate import TensorStats, collect
from unified.quant.equalization import equalize
from unified.quant.ranges import ESTIMATORS, weight_ranges
from unified.quant.stream_equalization import equalize_streams
from unified.quant.weight_rounding import WeightGrid, round_weights


@dataclass(frozen=True)
class BuildOptions:
    range_method: str = "minmax"        # activation range estimator (ranges.ESTIMATORS)
    weight_method: str = "minmax"       # "minmax" | "mse"
    bias_correction: bool = False
    equalization: bool = False
    adaptive_rounding: bool = False     # output-aware up/down rounding of weights (weight_rounding)
    float_fallback: tuple[str, ...] = ()  # op types to run in float whatever the engine supports
    strict: bool = False                  # refuse (rather than run in float) what the engine cannot express
    calibrated_softmax: bool = False      # an internal Softmax (attention) takes its calibrated range from 0
    clamp_fixes_range: bool = True        # a fused ReLU6 output is exactly [0, 6] (else calibrated, narrowed)
    fold_pads: bool = True                # fold zero Pads into the Conv after them (False: the runtime pads)
    empirical_bias: bool = False          # correct int32 biases on the integer graph, layer after layer
    stream_equalization: bool = False     # rescale linear residual streams' channels (exact in float)


def weight_grid(scheme: Scheme, weight_method: str, w: np.ndarray) -> WeightGrid:
    """The grid the scheme quantizes `w` on (output channels along axis 0), and its own rounding."""
    lo, hi = weight_ranges(w, scheme.per_channel_weights, weight_method, 256)
    scale, zp = scheme.weight_params(lo, hi)
    if not scheme.per_channel_weights:
        scale, zp = np.full(w.shape[0], float(scale[0])), np.full(w.shape[0], int(zp[0]))
    return WeightGrid(np.asarray(scale, np.float64), np.asarray(zp, np.int64), scheme.wmin, scheme.wmax,
                      scheme.quantize_weight(w, scale, zp))


def fake_quantizer(scheme: Scheme, weight_method: str):
    """The scheme's weight rounding as float -> float, for bias correction to compensate exactly."""
    def quantize(w: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
        rows = weight_rows(node, w.astype(np.float64))
        grid = weight_grid(scheme, weight_method, rows)
        real = (grid.nearest - grid.zero_point[:, None]) * grid.scale[:, None]
        return from_weight_rows(node, real, w.shape).astype(np.float32)
    return quantize


def is_image_input(model: onnx.ModelProto, preprocess: Preprocess) -> bool:
    """One 4-D input with 1, 3 or 4 channels where `preprocess.layout` puts them: only then is
    the input 8-bit pixels under mean/std (a sequence or feature input is calibrated instead)."""
    from unified.graph.onnx_model import graph_inputs

    inputs = graph_inputs(model)
    if len(inputs) != 1:
        return False
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        return False
    channels = dims[3] if preprocess.layout == "NHWC" else dims[1]
    return channels.HasField("dim_value") and channels.dim_value in (1, 3, 4)


def input_range(preprocess: Preprocess) -> tuple[float, float]:
    """The normalized range of 8-bit pixels: folding mean/std into the integer input."""
    mean = np.asarray(preprocess.mean, np.float64)
    std = np.asarray(preprocess.std, np.float64)
    return float(((0 - mean) / std).min()), float(((255 - mean) / std).max())


def range_source(scheme: Scheme, options: BuildOptions, stats: TensorStats | None) -> RangeSource:
    """The ranges lowering applies: the chosen estimator over each tensor's histogram, and the
    chosen weight-range method per channel or per tensor as the scheme quantizes weights."""
    estimate = ESTIMATORS.get(options.range_method, ESTIMATORS["minmax"])

    def activation(name: str) -> tuple[float, float]:
        assert stats is not None
        if name not in stats.histograms:
            raise ModelError(f"tensor {name!r} has no calibration statistics")
        return estimate(stats.histograms[name], 256)

    def weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return weight_ranges(w, scheme.per_channel_weights, options.weight_method, 256)

    return RangeSource(activation if stats is not None else None, weight,
                       calibrated_softmax=options.calibrated_softmax, clamp_fixes_range=options.clamp_fixes_range)


def build_integer_graph(model: onnx.ModelProto, calibration: CalibrationSet | None, scheme: Scheme,
                        options: BuildOptions, preprocess: Preprocess | None,
                        given: dict[str, tuple[float, int]] | None = None) -> IntegerGraph:
    """prepare -> [equalize] -> [stream equalization] -> [adaptive rounding] -> [bias correction] ->
    calibrate (unless a scale table is `given`) -> lower -> [empirical bias correction on the
    integer graph].

    `preprocess` set: the input range is that of 8-bit pixels under its mean/std (folded into the
    integer input); None: the input range is calibrated like any tensor.
    """
    if given is None and (calibration is None or len(calibration) == 0):
        raise CalibrationError(f"{scheme.name}: quantization needs calibration data (or a scale table)")
    prepared = prepare(model, fold_pads=options.fold_pads)
    if given is not None:
        known = {i.name for i in prepared.graph.input} | {o for n in prepared.graph.node for o in n.output}
        check_names(given, known, "scale table")
    if options.equalization:
        prepared, _ = equalize(prepared)
    if options.stream_equalization and given is None:  # (without `given`, calibration was checked above)
        # a given scale table names ranges of the tensors as they are: rescaling would void it
        prepared, _ = equalize_streams(prepared, calibration)
    unrounded = prepared
    if options.adaptive_rounding:
        if calibration is None:
            raise CalibrationError(f"{scheme.name}: adaptive rounding needs calibration data")
        prepared = round_weights(prepared, calibration, lambda rows, node: weight_grid(scheme, options.weight_method, rows),
                                 centered=options.bias_correction, per_channel=scheme.per_channel_weights)
    if options.bias_correction:
        if calibration is None:
            raise CalibrationError(f"{scheme.name}: bias correction needs calibration data")
        prepared = correct_biases(prepared, calibration, fake_quantizer(scheme, options.weight_method), unrounded)
    stats = collect(prepared, calibration, options.range_method) if given is None else None
    given_params = {name: scheme.params(scale, zp) for name, (scale, zp) in given.items()} if given else None
    graph = lower(prepared, scheme, range_source(scheme, options, stats),
                  input_range(preprocess) if preprocess is not None and is_image_input(prepared, preprocess) else None,
                  set(options.float_fallback), given_params,
                  strict=options.strict)
    if options.empirical_bias:
        if calibration is None:
            raise CalibrationError(f"{scheme.name}: empirical bias correction needs calibration data")
        correct_biases_empirically(graph, unrounded, calibration)
    return graph


def build_from_qdq(imported: ImportedQdq, calibration: CalibrationSet | None, scheme: Scheme,
                   options: BuildOptions) -> tuple[IntegerGraph, list[str]]:
    """An already quantized QDQ model on this scheme: its params adopted where the scheme can express
    them exactly, the rest re-fitted (from `calibration` if given), and a report line for each
    tensor not adopted.

    8-bit activations of either signedness map exactly (same scale, zero point shifted by 128);
    weights are adopted when their granularity fits (per-channel params on a per-tensor scheme
    are re-fitted from the on-grid float weights). Bias correction and adaptive rounding are off:
    the weights are the QDQ model's.
    """
    report: list[str] = []
    given: dict[str, QuantParams] = {}
    for name, p in imported.activations.items():
        if p.per_channel or p.dtype not in ("int8", "uint8"):
            report.append(f"{name}: re-fit ({p.dtype}{', per channel' if p.per_channel else ''} activation)")
            continue
        shift = scheme.qmin - int(np.iinfo(p.dtype).min)
        given[name] = scheme.params(float(p.scale.reshape(-1)[0]), int(p.zero_point.reshape(-1)[0]) + shift)
    weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, p in imported.weights.items():
        if p.per_channel and not scheme.per_channel_weights:
            report.append(f"{name}: re-fit per channel -> per tensor ({scheme.name} quantizes weights per tensor)")
            continue
        shift = scheme.wmin - int(np.iinfo(p.dtype).min)
        weights[name] = (p.scale.reshape(-1), p.zero_point.reshape(-1) + shift)
    prepared = prepare(imported.float_model)
    stats = collect(prepared, calibration, options.range_method) if calibration is not None else None
    ranges = replace(range_source(scheme, options, stats), given_weights=weights)
    try:
        graph = lower(prepared, scheme, ranges, None, set(options.float_fallback), given, strict=options.strict,
                      given_input=True)
    except ScaleFileError as exc:
        raise CalibrationError(f"{scheme.name}: the QDQ model carries no params for some tensors "
                               f"({str(exc).split(': ', 1)[-1][:300]}); pass calibration data to fit them") from None
    constants = {o for n in graph.nodes if n.op == "const" for o in n.outputs}
    report += [f"{name}: calibrated (no params in the QDQ model)" for name in graph.tensors
               if name not in given and name not in constants]
    return graph, report
