"""`QuantizedModel`: a backend's artifact plus everything needed to feed it photos.

The path of one batch is visible here in one place:
``quantize_input -> infer -> dequantize_output``, each a firstresult hook answered by the backend
that owns the artifact, so hook wrappers (profilers, the consistency harness) observe every call.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from unified.core import plugins
from unified.core.artifact import QuantizedArtifact
from unified.core.backend_spec import BackendSpec
from unified.core.errors import BackendError, InputError, SavedModelError, public_api
from unified.core.quant_params import QuantParams
from unified.core.result import InferenceResult
from unified.core.saved_model import container_bytes, read_container, read_container_bytes, write_container
from unified.inputs.images import ImageLike
from unified.core.batching import batch_size, run_in_chunks
from unified.inputs.preprocess import Preprocess, as_input_batch


class QuantizedModel:
    """A model quantized for one backend: run it float in, float out, or integer in, integer out."""

    def __init__(
        self,
        backend: str,
        artifact: QuantizedArtifact,
        preprocess: Preprocess,
        model_name: str = "model",
        mode: str = "default",
        options: dict[str, Any] | None = None,
        input_names: Sequence[str] | None = None,
        input_rank: int | None = None,
    ) -> None:
        self.backend = backend
        self.artifact = artifact
        self.preprocess = preprocess
        self.model_name = model_name
        self.mode = mode
        self.options = dict(options or {})
        #: the model's inputs in graph order (a tuple given to `run` follows this order)
        self.input_names = list(input_names or [])
        #: rank of a single input (a 3-D array is a batch for a rank-3 model, one image for rank 4)
        self.input_rank = input_rank
        #: True when `unified.quantize` reused a cached build instead of building again
        self.from_cache = False

    # -- the I/O contract -------------------------------------------------------------------
    @property
    def spec(self) -> BackendSpec:
        return plugins.get_backend(self.backend)

    @property
    def input_quant(self) -> QuantParams | None:
        """Scale, zero point, dtype and layout of the native integer input (None: float input)."""
        return self.artifact.input_quant

    @property
    def output_quant(self) -> QuantParams | None:
        return self.artifact.output_quant

    @property
    def import_report(self) -> list[str]:
        """For an imported QDQ model: each tensor whose params were not adopted as given, and why
        ([] when everything was adopted, or the model was not imported)."""
        extra = getattr(self.artifact, "extra", None) or {}
        return list(extra.get("import_report", []))

    @property
    def float_nodes(self) -> dict[str, str]:
        """Nodes this backend runs in float (hybrid execution), each with the reason; {} when the
        whole model runs on the backend's own scheme."""
        return dict(getattr(self.artifact, "float_nodes", None) or {})

    # -- running ----------------------------------------------------------------------------
    @public_api
    def quantize_input(self, batch: np.ndarray) -> np.ndarray:
        """Float batch (model space) -> the backend's native input (identity for float backends)."""
        check_batch(batch)
        return self._quantize_input(batch)

    @public_api
    def run_quantized(self, native_input: np.ndarray) -> np.ndarray:
        """Expert path: the backend's native input in, its native output out (no (de)quantization)."""
        return self._infer(native_input)

    @public_api
    def dequantize_output(self, native_output: Any) -> np.ndarray | dict[str, np.ndarray]:
        return self._dequantize_output(native_output)

    # the three hooks, routed to the backend; `run` checks its input once and calls these directly
    def _quantize_input(self, batch: Any) -> Any:
        return plugins.call(self.backend, "unified_quantize_input", artifact=self.artifact, batch=batch)

    def _infer(self, native_input: Any) -> Any:
        return plugins.call(self.backend, "unified_infer", artifact=self.artifact, inputs=native_input)

    def _dequantize_output(self, native_output: Any) -> np.ndarray | dict[str, np.ndarray]:
        out = plugins.call(self.backend, "unified_dequantize_output", artifact=self.artifact, outputs=native_output)
        if isinstance(out, dict):
            return {name: np.asarray(v, dtype=np.float32) for name, v in out.items()}
        return np.asarray(out, dtype=np.float32)

    @public_api
    def run(self, batch: np.ndarray | Sequence[ImageLike] | ImageLike) -> np.ndarray | dict[str, np.ndarray]:
        """Float in, float out: a float batch in the model's input space and layout (or images)
        -> float32 outputs: one array for a single-output model, a dict output name -> array
        otherwise."""
        x = as_input_batch(batch, self.preprocess, self.input_names, self.input_rank)
        check_batch(x)
        fixed, n = self.fixed_batch, batch_size(x)
        if fixed and n != fixed:
            if n % fixed:
                raise InputError(f"{self.model_name} on {self.backend} was built for batches of {fixed}; "
                                 f"got {n}, which is not a multiple of it")
            # A fixed-size model (as NPU toolkits compile them) runs a larger batch in pieces;
            # the result is exactly that of the single runs.
            return run_in_chunks(self._run_native, x, fixed)
        return self._run_native(x)

    def _run_native(self, x: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        return self._dequantize_output(self._infer(self._quantize_input(x)))

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the backend's model was built for, or None when any batch runs."""
        return getattr(self.artifact, "fixed_batch", None)

    @public_api
    def infer(self, image: ImageLike) -> InferenceResult:
        """One image: load -> preprocess -> quantize_input -> infer -> dequantize_output -> top-5."""
        x = as_input_batch(image, self.preprocess, self.input_names, self.input_rank)
        if batch_size(x) != 1:
            raise InputError(f"infer takes one image; got a batch of {batch_size(x)} (use run() for batches)")
        out = self.run(x)
        outputs = {name: v[0] for name, v in out.items()} if isinstance(out, dict) else {"output": out[0]}
        return InferenceResult(outputs=outputs, backend=self.backend, mode=self.mode)

    @public_api
    def export_qdq(self, path: str | os.PathLike) -> None:
        """Write the model as a standard ONNX QDQ model on float I/O with exactly this backend's
        scales and zero points (checked by onnx.checker, runnable by ONNX Runtime); atomic."""
        import onnx

        from unified.core.paths import atomic_write

        model = plugins.call(self.backend, "unified_export_qdq", artifact=self.artifact)
        onnx.checker.check_model(model)
        with atomic_write(path) as tmp:
            tmp.write_bytes(model.SerializeToString())

    @public_api
    def export_toolkit(self, directory: str | os.PathLike) -> list[str]:
        """Write the model in the real toolkit's own files into `directory` (rknn: float ONNX and
        hybrid-quantization table; tengine: scale table) and return their paths."""
        paths = plugins.call_optional(self.backend, "unified_export_toolkit", artifact=self.artifact,
                                      directory=str(directory))
        if not paths:
            raise BackendError(f"backend {self.backend!r} has no toolkit format to export")
        return list(paths)

    # -- persistence ------------------------------------------------------------------------
    def _manifest_and_blobs(self) -> tuple[dict[str, Any], dict[str, bytes]]:
        blobs, meta = self.artifact.to_files()
        manifest = {
            "backend": self.backend,
            "mode": self.mode,
            "model_name": self.model_name,
            "options": _jsonable(self.options),
            "input_names": self.input_names,
            "input_rank": self.input_rank,
            "preprocess": self.preprocess.to_json(),
            "artifact": meta,
        }
        return manifest, blobs

    @public_api
    def save(self, path: str | os.PathLike) -> None:
        """One file, written atomically; `unified.load` restores it without torch."""
        manifest, blobs = self._manifest_and_blobs()
        write_container(path, manifest, blobs)

    @public_api
    def to_bytes(self) -> bytes:
        """The saved file's exact bytes, without touching disk (how models travel to workers)."""
        manifest, blobs = self._manifest_and_blobs()
        return container_bytes(manifest, blobs)

    @classmethod
    def load(cls, path: str | os.PathLike, max_bytes: int | None = None) -> "QuantizedModel":
        """Restore a saved model, treating the file as untrusted (see `core/saved_model.py`)."""
        manifest, blobs = read_container(path, max_bytes)
        return cls._restore(manifest, blobs, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, label: str = "<bytes>", max_bytes: int | None = None) -> "QuantizedModel":
        """`load` on the bytes `to_bytes` gave, with the same checks."""
        manifest, blobs = read_container_bytes(data, label, max_bytes)
        return cls._restore(manifest, blobs, label)

    @classmethod
    def _restore(cls, manifest: dict[str, Any], blobs: dict[str, bytes], path: str) -> "QuantizedModel":
        backend = manifest["backend"]
        specs = plugins.backend_specs()
        if backend not in specs:
            raise SavedModelError(
                f"{path} was saved by backend {backend!r}, which is not installed (installed: {', '.join(sorted(specs))})"
            )
        try:
            artifact = specs[backend].load_artifact(blobs, manifest["artifact"])
            preprocess = Preprocess.from_json(manifest["preprocess"])
        except SavedModelError as exc:
            raise SavedModelError(f"{path}: {exc}") from exc
        except Exception as exc:  # whatever a backend's parser raises, the caller sees one error type
            raise SavedModelError(f"{path}: backend {backend!r} cannot restore it: "
                                  f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        return cls(backend, artifact, preprocess, manifest["model_name"], manifest["mode"], manifest["options"],
                   manifest.get("input_names"), manifest.get("input_rank"))

    def __repr__(self) -> str:
        return f"QuantizedModel(backend={self.backend!r}, mode={self.mode!r}, model={self.model_name!r})"


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in options.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(i, (int, float, str)) for i in v):
            out[k] = list(v)
        else:
            out[k] = repr(v)
    return out


def check_batch(x: np.ndarray | dict[str, np.ndarray]) -> None:
    """The same answer on every backend: an empty batch or a NaN/Inf value is an `InputError`
    (a float backend would return NaN, a quantizing one finite nonsense). The check reads the
    input once: 10 us, about 0.1% of an ORT fp32 run of EfficientNet-Lite0 at batch 1."""
    for name, v in (x.items() if isinstance(x, dict) else [("input", x)]):
        if len(v) == 0:
            raise InputError(f"{name}: empty batch (shape {v.shape}); give at least one sample")
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            bad = "NaN" if np.isnan(v).any() else "Inf"
            raise InputError(f"{name}: the batch contains {bad} values (first at index "
                             f"{tuple(int(i) for i in np.argwhere(~np.isfinite(v))[0])})")
