"""refeval: a complete third-party unified backend in one module.

It runs models with `onnx.reference.ReferenceEvaluator`, ONNX's pure-Python reference
implementation: float in, float out, no quantization. Useful as a ground truth independent of
ONNX Runtime, and as the template for a real backend. Install with
`pip install ./examples/unified-refeval`; then `unified backends` lists it and
`pytest --unified-backend refeval` runs the conformance suite against it.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

import unified

NAME = "refeval"


class RefEvalModel:
    """The artifact: the model bytes and an evaluator (runs are serialized: the evaluator is not re-entrant)."""

    input_quant = None
    output_quant = None

    def __init__(self, model_bytes: bytes) -> None:
        self.model_bytes = model_bytes
        model = onnx.load_from_string(model_bytes)
        self.input_name = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}][0]
        self.evaluator = ReferenceEvaluator(model)
        self._lock = threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            return np.asarray(self.evaluator.run(None, {self.input_name: x})[0], dtype=np.float32)

    def to_files(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        return {"model.onnx": self.model_bytes}, {}

    @classmethod
    def from_files(cls, blobs: dict[str, bytes], meta: dict[str, Any]) -> "RefEvalModel":
        return cls(blobs["model.onnx"])


@unified.hookimpl
def unified_register_backends(register) -> None:
    register(unified.BackendSpec(
        name=NAME, description="ONNX reference evaluator (pure Python), fp32", io="float",
        input_dtype="float32", output_dtype="float32", input_layout="NCHW",
        load_artifact=RefEvalModel.from_files, calibration_free_modes=("default",),
        thresholds={"top1_agreement": 0.99, "min_cosine": 0.9999},
    ))


@unified.hookimpl
def unified_quantize(backend, model, calibration, options):
    return RefEvalModel(model.SerializeToString()) if backend == NAME else None


@unified.hookimpl
def unified_quantize_input(backend, artifact, batch):
    return np.ascontiguousarray(batch, dtype=np.float32) if backend == NAME else None


@unified.hookimpl
def unified_infer(backend, artifact, inputs):
    return artifact.run(inputs) if backend == NAME else None


@unified.hookimpl
def unified_dequantize_output(backend, artifact, outputs):
    return outputs if backend == NAME else None
