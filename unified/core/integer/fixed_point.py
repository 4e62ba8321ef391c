"""Fixed-point requantization as gemmlowp and TFLite define it, vectorized over numpy int64.

A real multiplier M in (0, 2^31) is stored as an int32 `quantized_multiplier` in [2^30, 2^31)
(a Q0.31 fraction) and a power-of-two `shift`, M = quantized_multiplier * 2^(shift - 31).
Applying it is `SaturatingRoundingDoublingHighMul` (the high 32 bits of 2*a*b, rounded) followed
by `RoundingDivideByPOT`, whose rounding follows the backend's `RoundingPolicy`.
"""
from __future__ import annotations

import numpy as np

from unified.core.integer.rounding import RoundingPolicy

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def quantize_multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """TFLite `QuantizeMultiplier`: real -> (int32 multiplier in [2^30, 2^31), shift)."""
    real = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if np.any(real < 0) or not np.all(np.isfinite(real)):
        raise ValueError("requantization multipliers must be finite and non-negative")
    mantissa, exponent = np.frexp(real)  # real = mantissa * 2^exponent, mantissa in [0.5, 1)
    q = np.round(mantissa * (1 << 31)).astype(np.int64)  # std::round: ties away, positive here
    overflow = q == (1 << 31)
    q = np.where(overflow, q // 2, q)
    exponent = np.where(overflow, exponent + 1, exponent)
    zero = real == 0
    q = np.where(zero, 0, q)
    exponent = np.where(zero, 0, exponent)
    # Shifts below -31 flush tiny multipliers to zero, as TFLite does.
    tiny = exponent < -31
    q = np.where(tiny, 0, q)
    exponent = np.where(tiny, 0, exponent)
    return q.astype(np.int64), exponent.astype(np.int64)


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp SRDHM: round(a*b / 2^31) with ties away from zero; a, b int32-ranged."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    total = ab + nudge
    # C++ signed division truncates toward zero.
    result = np.sign(total) * (np.abs(total) >> 31)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, INT32_MAX, result)


def multiply_by_quantized_multiplier(
    x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, policy: RoundingPolicy = RoundingPolicy.TIES_AWAY
) -> np.ndarray:
    """TFLite `MultiplyByQuantizedMultiplier` (x int32-ranged) with the final rounding by `policy`."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    scaled = x << left
    if np.any(np.abs(scaled) > INT32_MAX):
        scaled = np.clip(scaled, INT32_MIN, INT32_MAX)  # saturate, as int32 hardware does
    return policy.divide_by_pot(saturating_rounding_doubling_high_mul(scaled, multiplier), right)


def requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, policy: RoundingPolicy) -> np.ndarray:
    """`multiply_by_quantized_multiplier` fused into few in-place passes, bit-identical to it.

    For multipliers below 1 (shift <= 0, every conv/gemm/pool here) and m > 0, SRDHM followed by
    the rounding right shift reduces to operations on |acc|:
        T   = (|a| * m + 2^30 - [a < 0]) >> 31                  (gemmlowp SRDHM, sign restored later)
        out = round_e(T / 2^e)                                   (e = -shift, by `policy`)
    and for ties-away the two shifts merge, floor(floor(X / 2^31) + h) / 2^e) = floor((X + h 2^31) / 2^(31+e)).
    A test checks equality with the step-by-step reference on random and edge values.
    """
    shift = np.asarray(shift, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    if np.any(shift > 0):
        return multiply_by_quantized_multiplier(acc, multiplier, shift, policy)
    e = -shift
    a = np.asarray(acc, dtype=np.int64)
    if np.any(np.abs(a) > INT32_MAX):
        a = np.clip(a, INT32_MIN + 1, INT32_MAX)
    neg = a < 0
    mag = np.abs(a)
    mag *= multiplier
    mag -= neg
    if policy is RoundingPolicy.TIES_AWAY:
        half = np.where(e > 0, np.left_shift(np.int64(1), np.maximum(e - 1, 0)), 0)
        mag += (np.int64(1) << 30) + (half << 31)
        mag >>= 31 + e
    else:
        mag += np.int64(1) << 30
        mag >>= 31
        if policy is RoundingPolicy.TRUNCATE:
            mag >>= e
        else:  # ties to even: (T + half - 1 + ((T >> e) & 1)) >> e, for e >= 1
            active = (e > 0).astype(np.int64)
            bias = np.where(e > 0, np.left_shift(np.int64(1), np.maximum(e - 1, 0)) - 1, 0)
            odd = mag >> e
            odd &= active
            mag += bias
            mag += odd
            mag >>= e
    np.negative(mag, out=mag, where=neg)
    return mag
