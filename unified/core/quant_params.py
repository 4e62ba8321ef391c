"""`QuantParams`: how a float tensor maps to an integer one, `real = scale * (q - zero_point)`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_DTYPE_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-(2**31), 2**31 - 1)}


@dataclass(frozen=True)
class QuantParams:
    """Scale and zero point of one tensor, with the integer dtype and memory layout it lives in.

    Per-tensor parameters have a scalar scale; per-channel ones carry one scale per channel along
    `axis`. `layout` matters for model inputs, whose native layout may differ from ONNX's NCHW
    (RKNN feeds NHWC images).
    """

    scale: float | tuple[float, ...]
    zero_point: int | tuple[int, ...]
    dtype: str
    layout: str = "NCHW"
    axis: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPE_RANGES:
            raise ValueError(f"unsupported integer dtype {self.dtype!r}")

    @property
    def qmin(self) -> int:
        return _DTYPE_RANGES[self.dtype][0]

    @property
    def qmax(self) -> int:
        return _DTYPE_RANGES[self.dtype][1]

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Round to nearest (ties to even, numpy's rule) and saturate: what a runtime does on input."""
        q = np.rint(np.asarray(x, dtype=np.float64) / np.asarray(self.scale)) + np.asarray(self.zero_point)
        return np.clip(q, self.qmin, self.qmax).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return ((np.asarray(q, dtype=np.float64) - np.asarray(self.zero_point)) * np.asarray(self.scale)).astype(np.float32)

    def __str__(self) -> str:
        scale = f"{self.scale:.6g}" if isinstance(self.scale, float) else f"{len(self.scale)} scales"
        return f"{self.dtype} {self.layout} scale={scale} zero_point={self.zero_point}"
