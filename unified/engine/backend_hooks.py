"""The hooks every engine-based backend answers the same way, bound to one backend name.

An emulated NPU backend differs from another in its scheme, its options and its input
conventions (quantize / quantize_input); running the integer graph, dequantizing its output and
exposing per-layer tensors are the engine's job. A backend module binds these to its name:

    unified_infer, unified_dequantize_output, unified_layer_outputs = IntegerBackendHooks(NAME).hooks()
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from unified.core.backend_spec import BackendSpec
from unified.core.hookspecs import hookimpl
from unified.engine.integer_artifact import IntegerArtifact


def integer_backend_spec(name: str, description: str, dtype: str, layout: str, **extra: Any) -> BackendSpec:
    """The `BackendSpec` of an engine-based backend: integer I/O in `dtype`, saved as an IntegerArtifact."""
    return BackendSpec(name=name, description=description, io="integer", input_dtype=dtype, output_dtype=dtype,
                       input_layout=layout, load_artifact=IntegerArtifact.from_files, **extra)


class IntegerBackendHooks:
    """The engine's hooks bound to one backend name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def hooks(self) -> tuple[Callable[..., Any], ...]:
        """(unified_infer, unified_dequantize_output, unified_layer_outputs, unified_export_qdq),
        for a plugin module."""
        return self.unified_infer, self.unified_dequantize_output, self.unified_layer_outputs, self.unified_export_qdq

    @hookimpl
    def unified_infer(self, backend: str, artifact: IntegerArtifact, inputs: np.ndarray) -> np.ndarray | None:
        return artifact.run(inputs) if backend == self.name else None

    @hookimpl
    def unified_dequantize_output(self, backend: str, artifact: IntegerArtifact, outputs: np.ndarray) -> np.ndarray | None:
        return artifact.dequantize(outputs) if backend == self.name else None

    @hookimpl
    def unified_export_qdq(self, backend: str, artifact: IntegerArtifact):
        if backend != self.name:
            return None
        from unified.engine.qdq_export import export_qdq_float_io

        return export_qdq_float_io(artifact.graph)

    @hookimpl
    def unified_layer_outputs(self, backend: str, artifact: IntegerArtifact, inputs: np.ndarray,
                              reference: Mapping[str, np.ndarray] | None):
        if backend != self.name:
            return None
        from unified.engine.layer_taps import layer_outputs

        return layer_outputs(artifact, inputs, reference)
