"""A process-wide memo of float-model statistics that several backends' builds compute alike.

`unified infer` and `unified compare` build the same model for ort, rknn and tengine in one
process. Their best builds sample the *same* float statistics: layer input moments for adaptive
rounding (about half of a build) and per-channel means for bias correction, over the same
prepared float graph and calibration set. Keyed by the model's bytes, the calibration content and
the call's arguments, a second build reuses the first one's result instead of tapping the model
again. Only the two most recent results of each kind are kept, and only small ones, so memory
stays bounded.
"""
from __future__ import annotations

import hashlib
import threading
from typing import Any, Callable

import numpy as np
import onnx

from unified.inputs.calibration import CalibrationSet

#: results larger than this are not kept (a ResNet-50's moments run to a gigabyte)
MAX_BYTES = 128 * 2**20

_lock = threading.Lock()
KEEP = 2  # results kept per kind (bias correction asks for two sets of channel means per build)
_last: dict[str, list[tuple[str, Any]]] = {}  # kind -> [(key, result)], newest last


def model_digest(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def _nbytes(result: Any) -> int:
    if isinstance(result, np.ndarray):
        return result.nbytes
    if isinstance(result, dict):
        return sum(_nbytes(v) for v in result.values())
    return 0


def memoized(kind: str, model: onnx.ModelProto, calibration: CalibrationSet, arguments: Any,
             compute: Callable[[], Any]) -> Any:
    """`compute()`, or the kept result of the same call (same kind, model bytes, calibration
    content and arguments). Results are shared, read-only: callers must not modify them."""
    key = hashlib.sha256(repr((model_digest(model), calibration.fingerprint(), arguments)).encode()).hexdigest()
    with _lock:
        for kept_key, kept in _last.get(kind, []):
            if kept_key == key:
                return kept
    result = compute()
    if _nbytes(result) <= MAX_BYTES:
        with _lock:
            entries = [e for e in _last.get(kind, []) if e[0] != key] + [(key, result)]
            _last[kind] = entries[-KEEP:]
    return result


def clear() -> None:
    with _lock:
        _last.clear()
