"""`QuantParams`: how a float tensor maps to an integer one, `real = scale * (q - zero_point)`.

One type for every quantized tensor in unified: a model's documented I/O (`qm.input_quant`), every
tensor of the integer engine, and scale-table entries. It carries the backend's rounding rule, so
`params.quantize(x)` computes exactly what the backend computes (Tengine adds the zero point
before rounding ties away from zero; RKNN rounds ties to even, then adds it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unified.core.rounding import RoundingPolicy

#: The one table of integer ranges, by dtype name.
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
}


def integer_range(dtype: str) -> tuple[int, int]:
    """(qmin, qmax) of an integer dtype; a clear error for anything else."""
    try:
        return INTEGER_RANGES[dtype]
    except KeyError:
        raise ValueError(f"unsupported integer dtype {dtype!r}; known: {', '.join(INTEGER_RANGES)}") from None


class IntegerBound:
    """A `qmin`/`qmax` attribute read off the dtype another attribute names (one rule, every class)."""

    def __init__(self, dtype_attribute: str, index: int) -> None:
        self.dtype_attribute, self.index = dtype_attribute, index

    def __get__(self, obj: object, owner: type | None = None) -> int:
        if obj is None:
            return self  # type: ignore[return-value]
        return integer_range(getattr(obj, self.dtype_attribute))[self.index]


@dataclass(frozen=True)
class QuantParams:
    """Scale and zero point of one tensor, with its integer dtype, layout and rounding rule.

    Per-tensor parameters have a scalar scale; per-channel ones carry one scale per channel along
    `axis`. `layout` matters for model inputs, whose native layout may differ from ONNX's NCHW
    (RKNN feeds NHWC images). `zero_point_inside_round` is True for schemes that compute
    `round(x / s + z)` (Tengine) rather than `round(x / s) + z`; the two differ on ties.
    """

    scale: float | tuple[float, ...]
    zero_point: int | tuple[int, ...]
    dtype: str = "int8"
    layout: str = "NCHW"
    axis: int | None = None
    rounding: RoundingPolicy = RoundingPolicy.TIES_TO_EVEN
    zero_point_inside_round: bool = False

    def __post_init__(self) -> None:
        integer_range(self.dtype)
        object.__setattr__(self, "rounding", RoundingPolicy(self.rounding))

    qmin = IntegerBound("dtype", 0)
    qmax = IntegerBound("dtype", 1)

    def _broadcast(self, values: float | int | tuple, ndim: int) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim == 0 or self.axis is None:
            return arr
        shape = [1] * ndim
        shape[self.axis] = -1
        return arr.reshape(shape)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Round by the backend's rule and saturate: what the backend's runtime does on input."""
        v = np.asarray(x, dtype=np.float64)
        scale, zp = self._broadcast(self.scale, v.ndim), self._broadcast(self.zero_point, v.ndim)
        if self.zero_point_inside_round:
            q = self.rounding.round(v / scale + zp)
        else:
            q = self.rounding.round(v / scale) + zp
        return np.clip(q, self.qmin, self.qmax).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        v = np.asarray(q, dtype=np.float64)
        scale, zp = self._broadcast(self.scale, v.ndim), self._broadcast(self.zero_point, v.ndim)
        return ((v - zp) * scale).astype(np.float32)

    def to_json(self) -> list:
        """Compact form for saved models: [scale, zero_point] (the rest comes from the scheme)."""
        return [self.scale, self.zero_point]

    def __str__(self) -> str:
        scale = f"{self.scale:.6g}" if isinstance(self.scale, float) else f"{len(self.scale)} scales"
        return f"{self.dtype} {self.layout} scale={scale} zero_point={self.zero_point}"
