"""`Scheme`: how a platform chooses scales, zero points and rounding. Backends subclass it.

The engine asks the scheme, never decides itself: the same float graph lowered with RKNN's scheme
(int8, per-channel weights, ties to even) or Tengine's (uint8, per-tensor, truncated zero points,
ties away from zero) gives each platform's exact integer model.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from unified.core.rounding import RoundingPolicy

_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}


@dataclass(frozen=True)
class TensorQ:
    """Per-tensor activation parameters: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    def quantize(self, x: np.ndarray, policy: RoundingPolicy, qmin: int, qmax: int,
                 zero_point_inside_round: bool = False) -> np.ndarray:
        """round(x / s) + z, or round(x / s + z) for schemes that add the zero point first (Tengine)."""
        v = np.asarray(x, np.float64) / self.scale
        if zero_point_inside_round:
            return np.clip(policy.round(v + self.zero_point), qmin, qmax)
        return np.clip(policy.round(v) + self.zero_point, qmin, qmax)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, np.float64) - self.zero_point) * self.scale


class Scheme(abc.ABC):
    """A platform's quantization scheme."""

    #: a short name for messages and saved files
    name: str = "scheme"
    activation_dtype: str = "int8"
    weight_dtype: str = "int8"
    rounding: RoundingPolicy = RoundingPolicy.TIES_TO_EVEN
    per_channel_weights: bool = True

    @property
    def qmin(self) -> int:
        return _RANGES[self.activation_dtype][0]

    @property
    def qmax(self) -> int:
        return _RANGES[self.activation_dtype][1]

    @property
    def wmin(self) -> int:
        return _RANGES[self.weight_dtype][0]

    @property
    def wmax(self) -> int:
        return _RANGES[self.weight_dtype][1]

    @abc.abstractmethod
    def activation_params(self, lo: float, hi: float) -> TensorQ:
        """Scale and zero point for an activation whose calibrated range is [lo, hi]."""

    @abc.abstractmethod
    def weight_params(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scales and zero points for weight ranges (one entry per channel, or one per tensor)."""

    def quantize_weight(self, w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
        """Weights to integers: round(w / s) + z by the scheme's rounding, saturated."""
        shape = (-1,) + (1,) * (w.ndim - 1)
        q = self.rounding.round(w.astype(np.float64) / scale.reshape(shape)) + zero_point.reshape(shape)
        return np.clip(q, self.wmin, self.wmax).astype(np.int64)

    def bias_scale(self, input_scale: float, weight_scale: np.ndarray) -> np.ndarray:
        """int32 bias scale: input scale times each channel's weight scale."""
        return input_scale * weight_scale

    def softmax_output(self) -> TensorQ:
        """Fixed output parameters of a final Softmax (probabilities in [0, 1])."""
        return self.activation_params(0.0, 1.0)

    def describe(self) -> dict:
        return {"name": self.name, "activation_dtype": self.activation_dtype, "weight_dtype": self.weight_dtype,
                "rounding": self.rounding.value, "per_channel_weights": self.per_channel_weights}


def widen_to_zero(lo: float, hi: float) -> tuple[float, float]:
    """Every calibrated range contains 0, so that zero (padding, ReLU floor) is exact."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    return lo, hi
