"""RKNN-Toolkit2's w8a8 scheme (`quantized_dtype='w8a8'`), exactly.

* Activations: int8, asymmetric, per tensor: ``scale = (max - min) / 255``,
  ``zero_point = -128 - round(min / scale)``.
* Weights: int8, asymmetric, per output channel (`quantized_method='channel'`, default) or per
  tensor (`'layer'`), by the same formula on each channel's range (zero points may be nonzero).
* Bias: int32, symmetric, scale ``s_in * s_w[c]``.
* Rounding: ties to even (RKNN-Toolkit2 quantizes with numpy/Python rounding), everywhere,
  including the final shift of fixed-point requantization.
"""
from __future__ import annotations

import numpy as np

from unified.core.quant_params import QuantParams
from unified.core.rounding import RoundingPolicy
from unified.engine.scheme import Scheme


def _asym_int8(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    scale = (hi - lo) / 255.0
    scale = np.where(scale > 0, scale, 1.0)
    zero_point = np.clip(-128 - np.rint(lo / scale), -128, 127).astype(np.int64)
    return scale, zero_point


class RknnScheme(Scheme):
    name = "rknn"
    activation_dtype = "int8"
    weight_dtype = "int8"
    rounding = RoundingPolicy.TIES_TO_EVEN

    def __init__(self, quantized_method: str = "channel", fuse_conv_add: bool = False) -> None:
        self.per_channel_weights = quantized_method == "channel"
        self.quantized_method = quantized_method
        #: RKNN fuses a conv with the residual Add after it (one rounding; `kernels.conv_add`)
        self.fuse_conv_add = fuse_conv_add

    def activation_params(self, lo: float, hi: float) -> QuantParams:
        scale, zp = _asym_int8(np.array([lo]), np.array([hi]))
        return self.params(float(scale[0]), int(zp[0]))

    def weight_params(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _asym_int8(lo, hi)

    def softmax_output(self) -> QuantParams:
        return self.activation_params(0.0, 1.0)

    def describe(self) -> dict:
        return dict(super().describe(), quantized_method=self.quantized_method, fuse_conv_add=self.fuse_conv_add)
