"""The hooks every engine-based backend answers the same way, bound to one backend name.

An emulated NPU backend differs from another in its scheme, its options and its input
conventions (quantize / quantize_input); running the integer graph, dequantizing its output and
exposing per-layer tensors are the engine's job. A backend module binds these to its name:

    _engine = IntegerBackendHooks(NAME)
    unified_infer = _engine.unified_infer
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from unified.core.hookspecs import hookimpl
from unified.engine.integer_artifact import IntegerArtifact


class IntegerBackendHooks:
    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def unified_infer(self, backend: str, artifact: IntegerArtifact, inputs: np.ndarray) -> np.ndarray | None:
        return artifact.run(inputs) if backend == self.name else None

    @hookimpl
    def unified_dequantize_output(self, backend: str, artifact: IntegerArtifact, outputs: np.ndarray) -> np.ndarray | None:
        return artifact.dequantize(outputs) if backend == self.name else None

    @hookimpl
    def unified_layer_outputs(self, backend: str, artifact: IntegerArtifact, inputs: np.ndarray,
                              reference: Mapping[str, np.ndarray] | None):
        if backend != self.name:
            return None
        from unified.engine.layer_taps import layer_outputs

        return layer_outputs(artifact, inputs, reference)
