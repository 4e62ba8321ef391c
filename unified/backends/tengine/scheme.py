"""Tengine's `quant_tool_uint8` scheme with `TENGINE_MODE_UINT8`, exactly.

* Activations and weights: uint8, asymmetric, per tensor. ``scale = (max - min) / 255``;
  ``zero_point = int(-min / scale)`` - C truncation toward zero, not rounding.
* Weights: ``clip(round(w / s + z), 0, 255)`` with C ``round()``: ties away from zero, the zero
  point added *before* rounding. Inputs are quantized the same way by the application.
* Bias: int32, ``round(b / (s_in * s_w))``.
* Softmax output fixed at scale 1/255, zero point 0.
* ACIQ calibration is symmetric in Tengine: every tensor gets the range [-a, a], zero point 127.
* The scale table prints scales with 6 decimals (``%f``); the uint8 model is built from the
  printed values, so a model read back from its own table is identical.
Rounding policy: ties away from zero, everywhere (requantization included).
"""
from __future__ import annotations

import numpy as np

from unified.core.quant_params import QuantParams
from unified.core.rounding import RoundingPolicy
from unified.engine.scheme import Scheme


def printed_scale(scale: float) -> float:
    """The scale as Tengine's table prints it (%f); tiny scales that would print 0 keep 6 significant digits."""
    text = f"{scale:f}"
    return float(text) if float(text) > 0 else float(f"{scale:.6e}")


def format_scale(scale: float) -> str:
    text = f"{scale:f}"
    return text if float(text) > 0 else f"{scale:.6e}"


class TengineScheme(Scheme):
    name = "tengine"
    activation_dtype = "uint8"
    weight_dtype = "uint8"
    rounding = RoundingPolicy.TIES_AWAY
    per_channel_weights = False
    zero_point_inside_round = True

    def __init__(self, symmetric: bool = False, raw_pads: bool = False) -> None:
        self.symmetric = symmetric
        self.raw_pad_value = raw_pads

    def _params(self, lo: np.ndarray, hi: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
        """scale = (max - min) / 255, zero point int(-min / scale): C truncation, not rounding."""
        lo = np.minimum(np.asarray(lo, np.float64), 0.0)
        hi = np.maximum(np.asarray(hi, np.float64), 0.0)
        if symmetric:
            a = np.maximum(-lo, hi)
            lo, hi = -a, a
        scale = (hi - lo) / 255.0
        scale = np.where(scale > 0, scale, 1.0)
        return scale, np.clip(np.trunc(-lo / scale), 0, 255).astype(np.int64)

    def activation_params(self, lo: float, hi: float) -> QuantParams:
        scale, zp = self._params(np.array([lo]), np.array([hi]), self.symmetric)
        return self.params(printed_scale(float(scale[0])), int(zp[0]))  # the table's printed value

    def weight_params(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # weights are never symmetric in quant_tool_uint8, whatever the activation algorithm
        return self._params(lo, hi, symmetric=False)

    def quantize_weight(self, w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
        shape = (-1,) + (1,) * (w.ndim - 1)
        q = self.rounding.round(w.astype(np.float64) / scale.reshape(shape) + zero_point.reshape(shape))
        return np.clip(q, 0, 255).astype(np.int64)

    def softmax_output(self) -> QuantParams:
        return self.params(1.0 / 255.0, 0)

    def describe(self) -> dict:
        return dict(super().describe(), symmetric=self.symmetric, raw_pad_value=self.raw_pad_value)
