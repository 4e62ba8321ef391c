"""The hook contract every backend implements, built-in or third-party (pluggy project "unified").

A backend is a plugin module (or object) with `@unified.hookimpl` functions. It declares itself in
`unified_register_backends`, then answers the four operations for its own name and returns None for
any other name; every operation hook is `firstresult`, so exactly one backend answers.

The path of one batch through a quantized model is always
``quantize_input -> infer -> dequantize_output``; ORT-like backends make the first and last the
identity, NPU-like backends quantize and dequantize with the I/O tensors' scale and zero point.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import pluggy

if TYPE_CHECKING:  # imports for annotations only: the hook module must stay import-light
    import numpy as np
    import onnx

    from unified.core.artifact import QuantizedArtifact
    from unified.core.backend_spec import BackendSpec
    from unified.inputs.calibration import CalibrationSet
    from unified.inputs.preprocess import Preprocess

hookspec = pluggy.HookspecMarker("unified")
hookimpl = pluggy.HookimplMarker("unified")


@hookspec
def unified_register_backends(register: Callable[[BackendSpec], None]) -> None:
    """Declare backends: call ``register(BackendSpec(...))`` once per backend this plugin offers."""


@hookspec(firstresult=True)
def unified_quantize(
    backend: str,
    model: onnx.ModelProto,
    calibration: CalibrationSet | None,
    options: Mapping[str, Any],
    preprocess: Preprocess,
) -> QuantizedArtifact | None:
    """Quantize a checked float ONNX `model` for `backend`; return None if `backend` is not yours.

    `preprocess` says how images become the model's input (mean/std in pixel units), which NPU
    backends need to fold normalization into the model's integer input.
    `calibration` yields float NCHW tensors in the model's own input space (already preprocessed);
    it is None only when the backend's `BackendSpec.needs_calibration(options)` said so.
    `options` are the backend-specific keyword arguments the user passed to `unified.quantize`.
    """


@hookspec(firstresult=True)
def unified_quantize_input(backend: str, artifact: QuantizedArtifact, batch: np.ndarray) -> np.ndarray | None:
    """Turn a float input batch (NCHW, model space) into the backend's native input tensor."""


@hookspec(firstresult=True)
def unified_infer(backend: str, artifact: QuantizedArtifact, inputs: np.ndarray) -> np.ndarray | None:
    """Run the quantized model on native inputs and return its native (possibly integer) output."""


@hookspec(firstresult=True)
def unified_dequantize_output(backend: str, artifact: QuantizedArtifact, outputs: np.ndarray) -> np.ndarray | None:
    """Turn the backend's native output into float32 logits."""


# -- optional: internals for per-layer analysis -------------------------------------------------

@hookspec(firstresult=True)
def unified_layer_outputs(
    backend: str, artifact: QuantizedArtifact, inputs: np.ndarray, reference: Mapping[str, np.ndarray] | None
) -> dict[str, dict[str, np.ndarray]] | None:
    """Optional: dequantized intermediate tensors, keyed by the prepared float model's tensor names.

    Return ``{"entire": {name: float array}, "single": {name: float array}}``: "entire" from the
    quantized run on `inputs` (errors accumulated along the graph), "single" from each layer fed
    the quantized fp32 `reference` tensors (its own error only). Backends without internals skip it.
    """
