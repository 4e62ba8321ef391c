"""The ort backend's hook implementations: registered exactly as a third-party plugin would be."""
from __future__ import annotations

import threading
from typing import Any, Mapping

import numpy as np
import onnx
import onnxruntime as ort

from unified.core.backend_spec import BackendSpec, reject_unknown_options
from unified.core.batching import run_in_chunks
from unified.core.errors import BackendError, InputError
from unified.core.hookspecs import hookimpl
from unified.core.quant_params import QuantParams
from unified.inputs.calibration import CalibrationSet

NAME = "ort"
CHUNK_SAMPLES = 32
MODES = ("fp32", "static", "dynamic")
#: the options each mode reads; an option of another mode is refused, naming the mode
MODE_OPTIONS: dict[str, set[str]] = {
    "fp32": set(),
    "dynamic": {"weight_type"},
    "static": {"calibrate_method", "activation_type", "weight_type", "per_channel", "nodes_to_exclude",
               "reduce_range", "bias_correction", "empirical_bias_correction", "stream_equalization", "calibrated_softmax", "rounding", "activation_ranges", "profile"},
}


class OrtArtifact:
    """A (possibly quantized) ONNX model and its lazily created, thread-safe session."""

    input_quant: QuantParams | None = None
    output_quant: QuantParams | None = None

    def __init__(self, model_bytes: bytes, mode: str) -> None:
        self.model_bytes = model_bytes
        self.mode = mode
        self._session: ort.InferenceSession | None = None
        self._lock = threading.Lock()

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    from unified.graph.ort_session import make_session

                    self._session = make_session(self.model_bytes)
                    self._input_name = self._session.get_inputs()[0].name
        return self._session

    @property
    def fixed_batch(self) -> int | None:
        batch = self.session.get_inputs()[0].shape[0]
        return batch if isinstance(batch, int) and batch > 0 else None

    def run(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        """A batch larger than `CHUNK_SAMPLES` runs in pieces: the session's arena keeps the
        buffers of the largest batch it ever ran for the session's life (a 200-image Lite0 batch:
        over a gigabyte), and per image a 32-batch is as fast as any larger one."""
        return run_in_chunks(self._run, x, CHUNK_SAMPLES)

    def _run(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        session = self.session
        try:
            outputs = session.run(None, x if isinstance(x, dict) else {self._input_name: x})
            if len(outputs) == 1:
                return outputs[0]
            return {o.name: v for o, v in zip(session.get_outputs(), outputs)}
        except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ort.capi.onnxruntime_pybind11_state.Fail) as exc:
            expected = ", ".join(f"{i.name!r} {i.shape} {i.type}" for i in session.get_inputs())
            given = ({k: f"shape {v.shape} {v.dtype}" for k, v in x.items()} if isinstance(x, dict)
                     else f"shape {x.shape} dtype {x.dtype}")
            raise InputError(f"ort: input of {given} does not fit the model's inputs {expected}: "
                             f"{str(exc).splitlines()[0]}") from exc

    def to_files(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        return {"model.onnx": self.model_bytes}, {"mode": self.mode}


def _load_artifact(blobs: dict[str, bytes], meta: dict[str, Any]) -> OrtArtifact:
    onnx.checker.check_model(onnx.load_from_string(blobs["model.onnx"]))
    return OrtArtifact(blobs["model.onnx"], meta["mode"])


@hookimpl
def unified_register_backends(register) -> None:
    register(BackendSpec(
        name=NAME,
        description="ONNX Runtime: static QDQ (u8 act, s8/channel weights), dynamic, fp32",
        io="float", input_dtype="float32", output_dtype="float32", input_layout="NCHW",
        load_artifact=_load_artifact, modes=MODES, default_mode="static",
        calibration_free_modes=("dynamic", "fp32"),
        thresholds={"top1_agreement": 0.8, "min_cosine": 0.85},  # measured: 91-94% top-1, min cos 0.90 on 300 crops;
        # 83% top-1 on the 24 conformance crops on a CPU without VNNI (reduce_range)
    ))


@hookimpl
def unified_quantize(backend: str, model: onnx.ModelProto, calibration: CalibrationSet | None,
                     options: Mapping[str, Any], imported: Any) -> OrtArtifact | None:
    if backend != NAME:
        return None
    from unified.backends.ort import quantizer

    opts = dict(options)
    mode = opts.pop("mode", "static")
    reject_unknown_options(NAME, opts, set().union(*MODE_OPTIONS.values()))
    foreign = sorted(set(opts) - MODE_OPTIONS.get(mode, set()))
    if foreign:
        raise BackendError(f"ort: option(s) {', '.join(foreign)} do not apply to mode {mode!r} "
                           f"(its options: {', '.join(sorted(MODE_OPTIONS[mode])) or 'none'})")
    if imported is not None:  # an already quantized QDQ model: ORT runs it as it is
        if mode == "static":
            return OrtArtifact(model.SerializeToString(), mode)
        model = imported.float_model
    if mode == "fp32":
        return OrtArtifact(model.SerializeToString(), mode)
    if mode == "dynamic":
        return OrtArtifact(quantizer.quantize_dynamic_uint8(model, opts), mode)
    if mode == "static":
        if calibration is None:
            raise BackendError("ort: static quantization needs calibration data")
        return OrtArtifact(quantizer.quantize_static_qdq(model, calibration, opts), mode)
    raise BackendError(f"ort has no mode {mode!r}")


@hookimpl
def unified_export_qdq(backend: str, artifact: OrtArtifact) -> onnx.ModelProto | None:
    """ort's static model is already a QDQ model on float I/O (fp32 and dynamic are not QDQ)."""
    if backend != NAME:
        return None
    if artifact.mode != "static":
        raise BackendError(f"ort: only mode 'static' is a QDQ model; this one is {artifact.mode!r}")
    return onnx.load_from_string(artifact.model_bytes)


@hookimpl
def unified_quantize_input(backend: str, artifact: OrtArtifact, batch):
    if backend != NAME:
        return None
    if isinstance(batch, dict):
        return {name: np.ascontiguousarray(v, dtype=np.float32) for name, v in batch.items()}
    return np.ascontiguousarray(batch, dtype=np.float32)


@hookimpl
def unified_infer(backend: str, artifact: OrtArtifact, inputs: np.ndarray) -> np.ndarray | None:
    return artifact.run(inputs) if backend == NAME else None


@hookimpl
def unified_dequantize_output(backend: str, artifact: OrtArtifact, outputs):
    return outputs if backend == NAME else None
