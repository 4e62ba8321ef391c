"""The public operations: `quantize`, `infer`, `load`, `backends`.

`core` stays backend-agnostic: it resolves the model and calibration data, then asks the plugin
manager; whichever backend owns the name answers.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import logging
import zipfile
from pathlib import Path
from typing import Any

from unified.core import plugins
from unified.core.backend_spec import BackendSpec
from unified.core.errors import BackendError, SavedModelError, public_api
from unified.core.paths import cache_dir
from unified.core.quantized_model import QuantizedModel
from unified.core.result import InferenceResult
from unified.graph.onnx_model import fingerprint, input_signature
from unified.inputs.calibration import (
    CalibrationSet,
    default_calibration,
    make_calibration_set,
)
from unified.inputs.images import ImageLike
from unified.inputs.model_source import resolve_model
from unified.inputs.preprocess import Preprocess
from unified.terminal.progress import scope as progress_scope

log = logging.getLogger("unified")

#: Bump when a change makes previously cached quantized models stale.
QUANT_CACHE_VERSION = 1


@public_api
def backends() -> list[BackendSpec]:
    """Installed backends, built-in and third-party, with their I/O contracts."""
    return list(plugins.backend_specs().values())


@public_api
def load(path: str | os.PathLike, max_bytes: int | None = None) -> QuantizedModel:
    """Load a model saved with `QuantizedModel.save` (no torch needed). The file is untrusted input:
    sizes are capped (`max_bytes`, default 2 GiB, or `UNIFIED_MAX_LOAD_BYTES`), one digest covers
    manifest and blobs, and every value is validated; any problem is a `SavedModelError`."""
    return QuantizedModel.load(path, max_bytes)


def _resolve_mode(spec: BackendSpec, mode: str | None) -> str:
    mode = mode or spec.default_mode
    if mode not in spec.modes:
        raise BackendError(f"backend {spec.name!r} has no mode {mode!r}; its modes: {', '.join(spec.modes)}")
    return mode


@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """A hash of unified's own source: a cached quantized model is stale when the code changes."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _cache_path(model_fp: str, backend: str, mode: str, options: dict[str, Any], preprocess: Preprocess,
                calibration: str = "default") -> Path:
    """Where the build of this model, backend, mode, options, preprocessing and calibration content
    (the hash of its tensors, or "default") with this version of unified's code is cached."""
    key = json.dumps({"model": model_fp, "backend": backend, "mode": mode, "options": options,
                      "preprocess": preprocess.to_json(), "calibration": calibration,
                      "v": QUANT_CACHE_VERSION, "code": _code_fingerprint()}, sort_keys=True, default=repr)
    return cache_dir() / "quantized" / f"{backend}-{mode}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.uqm"


@public_api
def quantize(
    model: Any = None,
    backend: str = "ort",
    calibration: Any = None,
    mode: str | None = None,
    preprocess: Preprocess | None = None,
    cache: bool = True,
    **options: Any,
) -> QuantizedModel:
    """Quantize `model` for `backend`.

    model: zoo name | .onnx path | onnx.ModelProto | torch.nn.Module (None: EfficientNet-Lite0).
    calibration: folder | dataset.txt | list/iterable of images or arrays | CalibrationSet; None
    uses crops of the built-in offline photos, and then (with `cache=True`) the result is cached,
    since the same inputs always give the same quantized model.
    options: backend-specific settings (e.g. `calibrate_method` for ort, `quantized_algorithm` for rknn).
    """
    spec = plugins.get_backend(backend)
    mode = _resolve_mode(spec, mode)
    source = resolve_model(model, preprocess)
    cal: CalibrationSet | None = None
    cached_at: Path | None = None
    if source.imported is not None:  # an already quantized model: its params replace calibration
        if calibration is not None:
            cal = make_calibration_set(calibration, source.preprocess,
                                       inputs=input_signature(source.imported.float_model))
    elif spec.needs_calibration(mode, options):
        if calibration is not None:
            cal = make_calibration_set(calibration, source.preprocess, inputs=input_signature(source.proto))
            _check_calibration_shape(cal, source.proto)
        if cache:  # the same model, options and calibration content always give the same build
            cached_at = _cache_path(fingerprint(source.proto), backend, mode, options, source.preprocess,
                                    "default" if cal is None else cal.fingerprint())
            reused = _reuse(cached_at)
            if reused is not None:
                return reused
        if cal is None:
            cal = default_calibration(source.preprocess)
            _check_calibration_shape(cal, source.proto)
    with progress_scope(backend):
        artifact = plugins.call(backend, "unified_quantize", model=source.proto, calibration=cal,
                                options=dict(options, mode=mode), preprocess=source.preprocess,
                                imported=source.imported)
    signature = input_signature(source.proto)
    qm = QuantizedModel(backend, artifact, source.preprocess, source.name, mode, options,
                        [name for name, _ in signature], signature[0][1] if len(signature) == 1 else None)
    if cached_at is not None:
        qm.save(cached_at)
    return qm


def _reuse(cached_at: Path) -> QuantizedModel | None:
    if not cached_at.exists():
        return None
    try:
        qm = QuantizedModel.load(cached_at)
    except SavedModelError:
        cached_at.unlink(missing_ok=True)  # stale or damaged cache entry: rebuild
        return None
    qm.from_cache = True
    log.info("%s: reusing the cached build %s (same model, options and calibration)", qm.backend, cached_at.name)
    return qm


def _check_calibration_shape(cal: CalibrationSet, model) -> None:
    from unified.core.errors import CalibrationError
    from unified.graph.onnx_model import input_shape, input_signature

    first = cal.tensors[0]
    for index, (name, _) in enumerate(input_signature(model)):
        expected = input_shape(model, index)
        got = first[name].shape if isinstance(first, dict) else first.shape
        if len(expected) != len(got) or any(isinstance(e, int) and e > 0 and e != g for e, g in zip(expected[1:], got[1:])):
            raise CalibrationError(f"calibration tensors for input {name!r} have shape {got}, the model's input is "
                                   f"{expected} (pass preprocess=unified.Preprocess(resize, crop, mean, std, layout) "
                                   "to match it)")


def looks_saved(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike)) and Path(model).is_file() and zipfile.is_zipfile(model)


@public_api
def infer(
    model: Any,
    image: ImageLike,
    backend: str = "ort",
    mode: str | None = None,
    calibration: Any = None,
    **options: Any,
) -> InferenceResult:
    """Classify one image with `model` on `backend` and return its float logits and top-5.

    `model` may also be a `QuantizedModel` or the path of a saved one; then `backend` is ignored.
    """
    if isinstance(model, QuantizedModel):
        return model.infer(image)
    if looks_saved(model):
        return load(model).infer(image)
    return quantize(model, backend=backend, calibration=calibration, mode=mode, **options).infer(image)
