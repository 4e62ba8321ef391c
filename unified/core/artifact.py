"""What a backend's `unified_quantize` returns, and how it is stored.

The artifact is opaque to `core` except for this small protocol: its integer I/O description and a
way to serialize itself into named byte blobs plus JSON metadata. `core` packs those into one file
(see `saved_model`), so no backend ever needs pickle.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from unified.core.quant_params import QuantParams


@runtime_checkable
class QuantizedArtifact(Protocol):
    """A backend's quantized model."""

    #: scale/zero point of the native input, or None when the backend takes float input
    input_quant: QuantParams | None
    #: scale/zero point of the native output, or None when the backend returns float output
    output_quant: QuantParams | None

    def to_files(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        """Return (named blobs, JSON-able metadata) that `BackendSpec.load_artifact` reverses."""
        ...
