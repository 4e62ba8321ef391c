"""The rknn backend's hooks: RKNN-Toolkit2's w8a8 scheme on the integer engine.

Options (RKNN's `config()` names where they exist, with the toolkit's meaning under both profiles):
  profile              "best" (default): unified's most accurate choices within RKNN's scheme;
                       "toolkit": RKNN-Toolkit2 as it is (its defaults, nothing added); unified's
                       additions below default off and cannot be switched on
  quantized_algorithm  "mmse" (default under best; unified's own fast MSE, not the toolkit's) |
                       "normal" (min-max; the toolkit profile's default) | "kl_divergence"
  quantized_method     "channel" (default) | "layer"
  mean_values, std_values   pixel-unit normalization folded into the int8 input
                            (default: the model's own preprocessing)
  bias_correction      addition, on under best: correct biases for weight rounding (Nagel et al. 2019)
  empirical_bias_correction  addition, on under best: correct int32 biases on the integer graph,
                       layer after layer, against fp32 means (halves 1 - cosine on EfficientNet-Lite0/1/2)
  stream_equalization  addition, off by default: rescale each linear residual stream's channels to
                       one range, exact in float (`unified/quant/stream_equalization.py`)
  rounding             "adaptive" (addition, default under best): each weight rounded up or down to
                       keep its layer's output (AdaRound's objective) on RKNN's per-channel grid;
                       "nearest": the toolkit's own rounding
  calibrated_softmax   addition, on under best: a Softmax inside the graph (attention) takes its
                       calibrated range instead of [0, 1]
  fuse_residual_add    a conv fused with the residual Add after it, as the real toolkit does (the
                       conv's output is not rounded to int8 before the Add): on under toolkit, off
                       under best (rounding between them measured more accurate)
  float_fallback       op types to run in float on the CPU even where the engine could run them
  strict               False (default): what the engine cannot express runs in float, recorded in
                       `qm.float_nodes`; True: refuse it, naming every such node in one message

`normal` is RKNN's min-max. `kl_divergence` follows the KL thresholds of the toolkit's own
quantizer (`quant/ranges.kl_rknn`; 96.5% top-1 agreement with the real simulator on Lite0).
`mmse` here is unified's own fast variant: activation ranges that
minimize expected squared error over a 2048-bin histogram and per-channel weight ranges shrunk to
minimize weight MSE, plus bias correction: it builds in seconds where RKNN-Toolkit2's `mmse`
takes minutes, and keeps more of fp32's decisions (see README for the measured figures).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import onnx

from unified.backends.rknn.scheme import RknnScheme
from unified.core.backend_spec import option_bool, option_choice, option_names, reject_unknown_options
from unified.core.errors import InputError
from unified.core.hookspecs import hookimpl
from unified.core.profile import Profile
from unified.engine.backend_hooks import IntegerBackendHooks, integer_backend_spec
from unified.engine.integer_artifact import IntegerArtifact
from unified.inputs.calibration import CalibrationSet
from unified.inputs.preprocess import Preprocess
from unified.quant.pipeline import BuildOptions, build_from_qdq, build_integer_graph

NAME = "rknn"
ALGORITHMS = {
    "normal": ("minmax", "minmax"),
    "mmse": ("mse", "mse"),
    "kl_divergence": ("kl_rknn", "minmax"),
}
KNOWN_OPTIONS = {"mode", "profile", "rounding", "calibrated_softmax", "quantized_algorithm", "quantized_method", "mean_values", "std_values",
                 "bias_correction", "empirical_bias_correction", "stream_equalization", "fuse_residual_add", "float_fallback", "strict"}


@hookimpl
def unified_register_backends(register) -> None:
    register(integer_backend_spec(
        NAME, "RKNN-Toolkit2 w8a8 emulated: int8 asym, per-channel weights", "int8", "NHWC",
        thresholds={"top1_agreement": 0.9, "min_cosine": 0.95},  # measured: 95-96% top-1, min cos 0.993
    ))


@hookimpl
def unified_quantize(backend: str, model: onnx.ModelProto, calibration: CalibrationSet | None,
                     options: Mapping[str, Any], preprocess: Preprocess, imported: Any) -> IntegerArtifact | None:
    reject_unknown_options(NAME, options, KNOWN_OPTIONS)  # routing sends only our own name here
    profile = Profile.read(NAME, options)
    algorithm = profile.toolkit_choice("quantized_algorithm", ALGORITHMS, best="mmse", toolkit="normal",
                                       reproduced=("normal", "kl_divergence"))
    method = option_choice(NAME, options, "quantized_method", ("channel", "layer"), "channel")
    range_method, weight_method = ALGORITHMS[algorithm]
    build = BuildOptions(range_method=range_method, weight_method=weight_method,
                         bias_correction=profile.addition("bias_correction", best=True, toolkit=False),
                         empirical_bias=profile.addition("empirical_bias_correction", best=True, toolkit=False),
                         adaptive_rounding=profile.rounding() == "adaptive",
                         # off under best: it lifted Lite0/1/2 a little but broke EfficientNet-B0 (see README)
                         stream_equalization=profile.addition("stream_equalization", best=False, toolkit=False),
                         calibrated_softmax=profile.addition("calibrated_softmax", best=True, toolkit=False),
                         float_fallback=option_names(NAME, options, "float_fallback"),
                         strict=option_bool(NAME, options, "strict", False),
                         # the toolkit's KL runs on a fused ReLU6's own output too (a [0, 6] tensor
                         # gets 5.9970703125, a sparse one less); min-max and mmse keep [0, 6]
                         clamp_fixes_range=algorithm != "kl_divergence")
    fuse = profile.addition("fuse_residual_add", best=False, toolkit=True)
    pre = preprocess.with_normalization(options.get("mean_values"), options.get("std_values"))
    scheme = RknnScheme(method, fuse_conv_add=fuse)
    extra: dict[str, Any] = {"preprocess": pre.to_json(), "profile": profile.name, "quantized_algorithm": algorithm,
                             "quantized_method": method}
    if imported is not None:  # an already quantized QDQ model: adopt its params
        graph, extra["import_report"] = build_from_qdq(imported, calibration, scheme, build)
    else:
        graph = build_integer_graph(model, calibration, scheme, build, pre)
    return IntegerArtifact(graph, "NHWC", extra, model_layout=pre.layout)


@hookimpl
def unified_quantize_input(backend: str, artifact: IntegerArtifact, batch: np.ndarray) -> np.ndarray | None:
    """uint8 NHWC RGB pixels (RKNN's native camera input) or a float batch in the model's layout
    -> int8 NHWC. Pixels are normalized in float64, so the folded mean/std quantize exactly."""
    if backend != NAME:
        return None
    if isinstance(batch, dict):  # several inputs: each in the model's own space
        return artifact.quantize_float(batch)
    if batch.dtype == np.uint8:
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise InputError(f"rknn: uint8 input must be NHWC RGB pixels, got shape {batch.shape}")
        batch = Preprocess.from_json(artifact.extra["preprocess"]).normalize(batch, np.float64)
    return artifact.quantize_float(batch)


# Running the integer graph, dequantizing and per-layer tensors are the engine's, bound to our name.
(unified_infer, unified_dequantize_output, unified_layer_outputs,
 unified_export_qdq) = IntegerBackendHooks(NAME).hooks()


@hookimpl
def unified_export_toolkit(backend: str, artifact: IntegerArtifact, directory: str) -> list[str] | None:
    """RKNN-Toolkit2's hybrid quantization files: see `toolkit_export.py`."""
    if backend != NAME:
        return None
    from unified.backends.rknn.toolkit_export import export_toolkit

    return [str(p) for p in export_toolkit(artifact, directory)]
