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
