"""`BackendSpec`: what a backend declares about itself in `unified_register_backends`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from unified.core.artifact import QuantizedArtifact


@dataclass(frozen=True)
class BackendSpec:
    """A backend's name, its I/O contract, and how to restore its saved artifacts.

    `io` is "float" when the backend runs float in, float out (its quantize_input/dequantize_output
    are the identity, like ONNX Runtime), or "integer" when the application must quantize the input
    and dequantize the output with the I/O tensors' scale and zero point (RKNN, Tengine).
    """

    name: str
    description: str
    io: str  # "float" | "integer"
    input_dtype: str
    output_dtype: str
    input_layout: str
    load_artifact: Callable[[dict[str, bytes], dict[str, Any]], QuantizedArtifact]
    modes: tuple[str, ...] = ("default",)
    default_mode: str = "default"
    #: modes that run without calibration data (e.g. fp32, dynamic quantization)
    calibration_free_modes: tuple[str, ...] = ()
    #: the consistency thresholds this backend promises against fp32 (used by the conformance suite)
    thresholds: Mapping[str, float] = field(default_factory=dict)
    plugin: str = ""
    #: optional finer rule: (mode, options) -> whether calibration data is needed
    calibration_rule: Callable[[str, Mapping[str, Any]], bool] | None = None

    def __post_init__(self) -> None:
        if self.io not in ("float", "integer"):
            raise ValueError(f"BackendSpec.io must be 'float' or 'integer', not {self.io!r}")

    def needs_calibration(self, mode: str, options: Mapping[str, Any] | None = None) -> bool:
        if self.calibration_rule is not None:
            return self.calibration_rule(mode, options or {})
        return mode not in self.calibration_free_modes


def option_choice(backend: str, options: Mapping[str, Any], key: str, allowed: Iterable[str], default: str) -> str:
    """The value of option `key` (case-insensitive), which must be one of `allowed`."""
    from unified.core.errors import BackendError

    allowed = list(allowed)
    value = str(options.get(key, default)).lower()
    if value not in allowed:
        raise BackendError(f"{backend}: {key}={value!r} is not one of {', '.join(allowed)}")
    return value


_TRUE, _FALSE = {"true", "1"}, {"false", "0"}


def option_bool(backend: str, options: Mapping[str, Any], key: str, default: bool) -> bool:
    """A boolean option: True/False, 1/0, or the strings true/false/1/0 in any case (the CLI's
    `-O per_channel=False`); anything else is refused rather than taken as truthy."""
    from unified.core.errors import BackendError

    value = options.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise BackendError(f"{backend}: {key}={value!r} is not a boolean (use true/false or 1/0)")


def option_names(backend: str, options: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """A list-of-names option (op types, node names): one string is one name, not its letters."""
    from unified.core.errors import BackendError

    value = options.get(key, ())
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple, set)) or not all(isinstance(v, str) for v in value):
        raise BackendError(f"{backend}: {key}={value!r} must be a name or a list of names")
    return tuple(v.strip() for v in value)


def reject_unknown_options(backend: str, options: Mapping[str, Any], known: set[str]) -> None:
    """A typo in an option name must fail loudly, naming the option and what the backend knows."""
    from unified.core.errors import BackendError

    unknown = set(options) - known - {"mode"}
    if unknown:
        raise BackendError(f"{backend}: unknown options {sorted(unknown)}; known: {sorted(known - {'mode'})}")
