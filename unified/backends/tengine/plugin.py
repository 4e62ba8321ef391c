"""The tengine backend's hooks: Tengine's uint8 per-tensor scheme on the integer engine.

Options (Tengine's own keep Tengine's meaning under both profiles):
  profile          "best" (default): unified's most accurate choices within Tengine's scheme;
                   "toolkit": quant_tool_uint8 as it is; the additions below default off and
                   cannot be switched on
  algorithm        "minmax" (default) | "kl" | "aciq"  (quant_tool_uint8's -a 0 / 1 / 2)
  activation_ranges  "mse" (addition, default under best unless `algorithm` is given): each
                   activation's range minimizes its expected quantization MSE; "calibrated": the
                   algorithm's ranges
  weight_ranges    "mse" (addition, default under best): each layer's one weight range shrunk to
                   minimize its weights' squared rounding error (a per-tensor scale is otherwise set
                   by the largest weight); "minmax": Tengine's own
  mean, scale      Tengine's -w / -s preprocessing, (pixel - mean) * scale (default: the model's own)
  bias_correction  addition, on under best: correct biases for weight rounding from fp32 channel means
  empirical_bias_correction  addition, on under best: after lowering, run the calibration images
                   through the integer graph layer after layer and let each conv's int32 bias absorb
                   its mean pre-activation error against fp32 (upstream errors included)
  equalization     addition, off by default: cross-layer equalization where it keeps the float model exact
  stream_equalization  addition, off by default: rescale each linear residual stream's channels to one
                   range (exact in float; `unified/quant/stream_equalization.py`)
  rounding         "adaptive" (addition, default under best): each weight rounded up or down to keep
                   its layer's output (AdaRound's objective); "nearest": Tengine's own round-to-nearest
  calibrated_softmax  addition, on under best: a Softmax inside the graph (attention) takes its
                   calibrated range instead of Tengine's fixed 1/255
  scale_file       build from a `<tensor> <scale> <zero_point>` table instead of calibrating
  float_fallback   op types to run in float even where the engine could run them
  strict           False (default): what the engine cannot express runs in float (`qm.float_nodes`);
                   True: refuse it, naming every such node in one message

Like a Tengine application, `quantize_input` turns the normalized float input into uint8 with
the input tensor's scale and zero point, `u8 = clip(round(x / s + z), 0, 255)`, and
`dequantize_output` returns `(u8 - z) * s`; `run_quantized` takes and gives raw uint8 NCHW buffers.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import onnx

from unified.backends.tengine.scheme import TengineScheme, format_scale
from unified.core.backend_spec import option_bool, option_choice, option_names, reject_unknown_options
from unified.core.errors import InputError
from unified.core.hookspecs import hookimpl
from unified.core.profile import Profile
from unified.engine.backend_hooks import IntegerBackendHooks, integer_backend_spec
from unified.engine.integer_artifact import IntegerArtifact
from unified.engine.scale_table import read_scale_table, write_scale_table
from unified.inputs.calibration import CalibrationSet
from unified.inputs.preprocess import Preprocess
from unified.quant.pipeline import BuildOptions, build_from_qdq, build_integer_graph

NAME = "tengine"
#: quant_tool_uint8's algorithms, as its source computes them (`quant/tengine_ranges.py`)
ALGORITHMS = {"minmax": "minmax", "kl": "kl_tengine", "aciq": "aciq_tengine"}
KNOWN_OPTIONS = {"mode", "profile", "calibrated_softmax", "activation_ranges", "weight_ranges", "algorithm", "mean", "scale", "bias_correction", "empirical_bias_correction", "stream_equalization", "equalization", "rounding", "scale_file",
                 "float_fallback", "strict"}


def _needs_calibration(mode: str, options: Mapping[str, Any]) -> bool:
    """A scale file replaces calibration, unless a weight option needs fp32 statistics."""
    profile = Profile.read(NAME, options)
    weights_need_data = (_bias_correction(profile) or profile.rounding() == "adaptive"
                         or _empirical_bias(profile))
    return not (options.get("scale_file") and not weights_need_data)


def _bias_correction(profile: Profile) -> bool:
    return profile.addition("bias_correction", best=True, toolkit=False)


def _empirical_bias(profile: Profile) -> bool:
    return profile.addition("empirical_bias_correction", best=True, toolkit=False)


@hookimpl
def unified_register_backends(register) -> None:
    register(integer_backend_spec(
        NAME, "Tengine uint8 emulated: u8 asym per-tensor, truncated zero points", "uint8", "NCHW",
        calibration_rule=_needs_calibration,
        thresholds={"top1_agreement": 0.5, "min_cosine": 0.6},  # measured: 58-68% top-1, min cos 0.69
    ))


@hookimpl
def unified_quantize(backend: str, model: onnx.ModelProto, calibration: CalibrationSet | None,
                     options: Mapping[str, Any], preprocess: Preprocess, imported: Any) -> IntegerArtifact | None:
    reject_unknown_options(NAME, options, KNOWN_OPTIONS)  # routing sends only our own name here
    profile = Profile.read(NAME, options)
    algorithm = option_choice(NAME, options, "algorithm", ALGORITHMS, "minmax")
    rounding = profile.rounding()
    scale_file = options.get("scale_file")
    given = read_scale_table(scale_file) if scale_file else None
    ranges = profile.activation_ranges("algorithm")
    weights = profile.addition_choice("weight_ranges", ("mse", "minmax"), best="mse", toolkit="minmax")
    build = BuildOptions(range_method="mse" if ranges == "mse" else ALGORITHMS[algorithm], weight_method=weights,
                         bias_correction=_bias_correction(profile),
                         empirical_bias=_empirical_bias(profile),
                         equalization=profile.addition("equalization", best=False, toolkit=False),
                         adaptive_rounding=rounding == "adaptive",
                         # opt-in everywhere (see the README); on tengine per-tensor weights also pay in
                         # the readers' rescaled columns (Lite0 cosine up, Lite1 even, Lite2 down)
                         stream_equalization=profile.addition("stream_equalization", best=False, toolkit=False),
                         calibrated_softmax=profile.addition("calibrated_softmax", best=True, toolkit=False),
                         clamp_fixes_range=algorithm == "minmax",
                         fold_pads=not profile.toolkit,
                         float_fallback=option_names(NAME, options, "float_fallback"),
                         strict=option_bool(NAME, options, "strict", False))
    scale = options.get("scale")  # Tengine's -s multiplies: std is its inverse
    pre = preprocess.with_normalization(options.get("mean"), None if scale is None else 1.0 / np.asarray(scale, np.float64))
    # Tengine calibrates the input tensor like any other (preprocess=None: no folding)
    extra: dict[str, Any] = {"preprocess": pre.to_json(), "profile": profile.name, "algorithm": algorithm,
                             "activation_ranges": ranges, "weight_ranges": weights, "rounding": rounding}
    # Tengine's runtime pads with the raw byte 0 whatever the zero point (toolkit); best folds zero
    # pads into the convs, which pad with the true zero
    scheme = TengineScheme(symmetric=algorithm == "aciq", raw_pads=profile.toolkit)
    if imported is not None:  # an already quantized QDQ model: adopt its params
        graph, extra["import_report"] = build_from_qdq(imported, calibration, scheme, build)
    else:
        graph = build_integer_graph(model, calibration, scheme, build, None, given)
    return IntegerArtifact(graph, pre.layout, extra, model_layout=pre.layout)


def write_scale_file(artifact: IntegerArtifact, path: str | os.PathLike) -> None:
    """Write the model's activation table as Tengine prints it (`%f` scales, integer zero points)."""
    g = artifact.graph
    constants = {o for n in g.nodes if n.op == "const" for o in n.outputs}
    write_scale_table(path, {k: v for k, v in g.tensors.items() if k not in constants}, format_scale)


@hookimpl
def unified_quantize_input(backend: str, artifact: IntegerArtifact, batch: np.ndarray) -> np.ndarray | None:
    if backend != NAME:
        return None
    if isinstance(batch, dict):  # several inputs: each in the model's own space
        return artifact.quantize_float(batch)
    if batch.dtype == np.uint8:
        raise InputError("tengine: quantize_input takes the normalized float tensor ((pixel - mean) * scale), "
                         "not uint8 pixels; pass raw uint8 tensors to run_quantized")
    return artifact.quantize_float(batch)


# Running the integer graph, dequantizing and per-layer tensors are the engine's, bound to our name.
(unified_infer, unified_dequantize_output, unified_layer_outputs,
 unified_export_qdq) = IntegerBackendHooks(NAME).hooks()


@hookimpl
def unified_export_toolkit(backend: str, artifact: IntegerArtifact, directory: str) -> list[str] | None:
    """Tengine's scale table (`model.scale`, as `quant_tool_uint8` writes it)."""
    if backend != NAME:
        return None
    from pathlib import Path

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.scale"
    write_scale_file(artifact, path)
    return [str(path)]
