"""One exception hierarchy for everything `unified` raises on bad input.

Callers catch `UnifiedError` to handle any problem we diagnose; the subclasses say which input
was wrong so a CLI or a service can map them to messages or exit codes without parsing text.
"""
from __future__ import annotations


class UnifiedError(Exception):
    """Base class of every error `unified` raises on purpose."""


class ModelError(UnifiedError):
    """A model could not be read, checked or understood (missing file, corrupt ONNX, ...)."""


class UnsupportedOperatorError(ModelError):
    """A graph holds an operator that a backend cannot run; the message names the op and node."""


class ImageError(UnifiedError):
    """An image could not be read or has a shape/dtype/mode we cannot turn into a tensor."""


class InputError(UnifiedError):
    """An input tensor has the wrong shape, dtype or values for the model it is fed to."""


class CalibrationError(UnifiedError):
    """Calibration data is missing, empty, or holds values (NaN, Inf) that cannot set ranges."""


class BackendNotFoundError(UnifiedError, LookupError):
    """No installed backend has the requested name; the message lists the installed ones."""


class BackendError(UnifiedError):
    """A backend was asked for something it does not offer (an unknown mode or option)."""


class PluginError(UnifiedError):
    """A plugin could not be admitted (bad hooks, failing registration, a taken backend name)."""


class SavedModelError(UnifiedError):
    """A saved quantized model is missing, truncated, tampered with or from an unknown backend."""


class ScaleFileError(UnifiedError):
    """A scale file (`<tensor> <scale> <zero_point>` per line) is malformed or does not fit the model."""


def as_unified_error(exc: Exception) -> UnifiedError:
    """A library's exception as the `UnifiedError` that says which input was at fault (the original
    stays as `__cause__`): ONNX Runtime -> BackendError, onnx -> ModelError, PIL -> ImageError,
    zip damage -> SavedModelError, anything else -> UnifiedError naming its type."""
    if isinstance(exc, UnifiedError):
        return exc
    module = type(exc).__module__ or ""
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
    if module.startswith("onnxruntime"):
        return BackendError(f"onnxruntime failed: {text}")
    if module.startswith("onnx"):
        return ModelError(f"onnx rejected the model: {text}")
    if module.startswith("PIL"):
        return ImageError(f"PIL cannot use the image: {text}")
    if module.startswith("zipfile"):
        return SavedModelError(f"damaged saved model: {text}")
    if isinstance(exc, OSError):
        return UnifiedError(f"a file operation failed: {text}")
    return UnifiedError(f"unexpected error ({text})")


def public_api(fn):
    """Every exception crossing the public API is a `UnifiedError` (KeyboardInterrupt and
    SystemExit pass through)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UnifiedError:
            raise
        except Exception as exc:
            raise as_unified_error(exc) from exc

    return wrapper
