"""`Scheme`: how a platform chooses scales, zero points and rounding. Backends subclass it.

The engine asks the scheme, never decides itself: the same float graph lowered with RKNN's scheme
(int8, per-channel weights, ties to even) or Tengine's (uint8, per-tensor, truncated zero points,
ties away from zero) gives each platform's exact integer model.
"""
from __future__ import annotations

import abc

import numpy as np

from unified.core.quant_params import IntegerBound, QuantParams
from unified.core.rounding import RoundingPolicy


class Scheme(abc.ABC):
    """A platform's quantization scheme."""

    #: a short name for messages and saved files
    name: str = "scheme"
    activation_dtype: str = "int8"
    weight_dtype: str = "int8"
    rounding: RoundingPolicy = RoundingPolicy.TIES_TO_EVEN
    per_channel_weights: bool = True
    #: True where the platform computes round(x / s + z) rather than round(x / s) + z (Tengine)
    zero_point_inside_round: bool = False
    #: the runtime's Pad writes its constant as a raw integer (Tengine: the float value cast to
    #: uint8, 0, whatever the zero point) and copies the input bytes into an output with its own
    #: parameters; False: the pad value is quantized and the output shares the input's parameters
    raw_pad_value: bool = False

    qmin = IntegerBound("activation_dtype", 0)
    qmax = IntegerBound("activation_dtype", 1)
    wmin = IntegerBound("weight_dtype", 0)
    wmax = IntegerBound("weight_dtype", 1)

    def params(self, scale: float, zero_point: int) -> QuantParams:
        """An activation tensor's parameters under this scheme (dtype and rounding included). The
        scale is kept as a float32 value: what RKNN and Tengine store, and what a QDQ export
        writes, so an exported model imports back to the same integers."""
        return QuantParams(float(np.float32(scale)), int(zero_point), self.activation_dtype, rounding=self.rounding,
                           zero_point_inside_round=self.zero_point_inside_round)

    @abc.abstractmethod
    def activation_params(self, lo: float, hi: float) -> QuantParams:
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

    def softmax_output(self) -> QuantParams:
        """Fixed output parameters of a final Softmax (probabilities in [0, 1])."""
        return self.activation_params(0.0, 1.0)

    def describe(self) -> dict:
        return {"name": self.name, "activation_dtype": self.activation_dtype, "weight_dtype": self.weight_dtype,
                "rounding": self.rounding.value, "per_channel_weights": self.per_channel_weights,
                "zero_point_inside_round": self.zero_point_inside_round}


def widen_to_zero(lo: float, hi: float) -> tuple[float, float]:
    """Every calibrated range contains 0, so that zero (padding, ReLU floor) is exact."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    return lo, hi
