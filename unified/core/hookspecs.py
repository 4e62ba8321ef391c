"""The hook contract every backend implements, built-in or third-party (pluggy project "unified").

A backend is a plugin module (or object) with `@unified.hookimpl` functions. It declares itself in
`unified_register_backends`; unified then routes every per-backend call for that name to that
plugin alone (plus hook wrappers, which observe every backend), so a plugin can never answer for
another's name. Per-backend hooks are `firstresult`: the owner's first non-None answer is the result.

The path of one batch through a quantized model is always
``quantize_input -> infer -> dequantize_output`` (see `QuantizedModel.run`); ORT-like backends
make the first and last the identity, NPU-like backends quantize and dequantize with the I/O
tensors' scale and zero point.

Observers (profilers, the consistency harness) implement any hook with
``@unified.hookimpl(wrapper=True)`` and ``out = yield``; they see the calls of every backend.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import pluggy

if TYPE_CHECKING:  # imports for annotations only: the hook module must stay import-light
    import numpy as np
    import onnx

    from unified.core.artifact import QuantizedArtifact
    from unified.core.backend_spec import BackendSpec
    from unified.graph.qdq_import import ImportedQdq
    from unified.inputs.calibration import CalibrationSet
    from unified.inputs.preprocess import Preprocess

hookspec = pluggy.HookspecMarker("unified")
hookimpl = pluggy.HookimplMarker("unified")


# -- registration ------------------------------------------------------------------------------

@hookspec
def unified_register_backends(register: Callable[[BackendSpec], None]) -> None:
    """Declare the backends this plugin offers.

    :param register: call ``register(unified.BackendSpec(...))`` once per backend.
    :return: nothing.

    Called once per plugin, when unified admits it (built-ins first, then entry-point plugins, then
    plugins registered by hand). A name already registered, or an exception raised here, disables
    this plugin only; it is listed in ``unified backends`` with the reason.
    """


# -- quantizing a model ------------------------------------------------------------------------

@hookspec(firstresult=True)
def unified_quantize(
    backend: str,
    model: onnx.ModelProto,
    calibration: CalibrationSet | None,
    options: Mapping[str, Any],
    preprocess: Preprocess,
    imported: ImportedQdq | None,
) -> QuantizedArtifact | None:
    """Quantize a checked float ONNX model for `backend`.

    :param backend: the name of one of your registered backends.
    :param model: the float model, already loaded and checked by `onnx.checker`.
    :param calibration: float tensors in the model's own input space (already preprocessed); None
        only when your `BackendSpec.needs_calibration(mode, options)` said it needs none.
    :param options: the keyword arguments the user passed to `unified.quantize`, plus ``mode``.
        Reject unknown names (`reject_unknown_options`), so a typo fails loudly.
    :param preprocess: how images become the model's input (mean/std in pixel units), for NPU
        backends that fold normalization into their integer input.
    :param imported: set when the user gave an already quantized QDQ model (then `model` is that
        QDQ model as given): its float graph and the params it carries, to adopt where your scheme
        can express them; `calibration` is then None unless the user passed some anyway.
    :return: your artifact (see `QuantizedArtifact`): it is saved, loaded and passed back to you.

    Called by `unified.quantize` (and `infer`/`compare`, which quantize first), once per build.
    """


# -- running a batch: quantize_input -> infer -> dequantize_output -----------------------------

@hookspec(firstresult=True)
def unified_quantize_input(backend: str, artifact: QuantizedArtifact, batch: np.ndarray) -> np.ndarray | None:
    """Turn a float input batch into the backend's native input tensor.

    :param artifact: what your `unified_quantize` returned (or your `load_artifact` restored).
    :param batch: float32 in the model's own input space and layout (after preprocessing), or a
        dict input name -> array for a model with several inputs.
    :return: the native input: the same floats for float backends, or integers quantized with the
        input tensor's scale and zero point, in your declared layout, for integer backends (a dict
        by input name for several inputs).

    Called by `QuantizedModel.run` and `.quantize_input`, once per batch, before `unified_infer`.
    """


@hookspec(firstresult=True)
def unified_infer(backend: str, artifact: QuantizedArtifact, inputs: np.ndarray) -> np.ndarray | None:
    """Run the quantized model on native inputs.

    :param inputs: a native input as `unified_quantize_input` makes it (experts may pass their own,
        e.g. raw uint8 buffers, through `QuantizedModel.run_quantized`).
    :return: the native output, possibly integer (a dict output name -> array for a model with
        several outputs). Must not keep state between calls: one artifact serves several threads.

    Called by `QuantizedModel.run` and `.run_quantized`, once per batch. Wrappers of this hook
    observe (and may time) every backend's inference.
    """


@hookspec(firstresult=True)
def unified_dequantize_output(backend: str, artifact: QuantizedArtifact, outputs: np.ndarray) -> np.ndarray | None:
    """Turn the backend's native output into float32 values.

    :param outputs: what `unified_infer` returned.
    :return: float values, ``(q - zero_point) * scale`` for integer backends, identity otherwise.

    Called by `QuantizedModel.run` and `.dequantize_output`, once per batch, after `unified_infer`.
    """


# -- optional: interchange ------------------------------------------------------------------------

@hookspec(firstresult=True)
def unified_export_qdq(backend: str, artifact: QuantizedArtifact) -> onnx.ModelProto | None:
    """Optional: the quantized model as a standard ONNX QDQ model on float I/O, carrying exactly
    the backend's scales and zero points, runnable by ONNX Runtime.

    Called by `QuantizedModel.export_qdq` (and `unified quantize --export-qdq`). Return None (or
    do not implement it) when the backend cannot express its model that way.
    """


@hookspec(firstresult=True)
def unified_export_toolkit(backend: str, artifact: QuantizedArtifact, directory: str) -> list[str] | None:
    """Optional: write the quantized model in the files of the real toolkit the backend emulates,
    into `directory`, and return their paths (rknn: a float ONNX model and the quantization table
    of RKNN-Toolkit2's hybrid quantization; tengine: the scale table of Tengine's quant tool).

    Called by `QuantizedModel.export_toolkit` (and `unified quantize --export-toolkit`).
    """


# -- optional: internals for per-layer analysis ------------------------------------------------

@hookspec(firstresult=True)
def unified_layer_outputs(
    backend: str, artifact: QuantizedArtifact, inputs: np.ndarray, reference: Mapping[str, np.ndarray] | None
) -> dict[str, dict[str, np.ndarray]] | None:
    """Optional: dequantized intermediate tensors, keyed by the prepared float model's tensor names.

    :param inputs: native inputs (from `unified_quantize_input`).
    :param reference: fp32 tensors of the same images by name, or None.
    :return: ``{"entire": {name: float array}, "single": {name: float array}}``: "entire" from the
        quantized run on `inputs` (errors accumulated along the graph), "single" from each layer fed
        the quantized fp32 `reference` tensors (its own error only). Return None (or do not
        implement it) when your backend has no internals to show.

    Called by `unified.compare` on a few images per backend, for the per-layer table and plot.
    """
