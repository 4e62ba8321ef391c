"""Fixed-point requantization: TFLite's multiplier encoding, one rounding by the backend's policy.

A real multiplier M > 0 is stored as TFLite's `QuantizeMultiplier` does: an int32
`quantized_multiplier` m in [2^30, 2^31) (a Q0.31 fraction) and a power-of-two `shift`, so that
M = m * 2^(shift - 31). Applying it to an int32 accumulator a is

    y = round_policy(a * m / 2^(31 - shift))

computed exactly in int64 (|a| < 2^31 and m < 2^31, so a * m < 2^62) and rounded *once* by the
backend's `RoundingPolicy`. gemmlowp's SaturatingRoundingDoublingHighMul + RoundingDivideByPOT
round twice (first at bit 31, ties toward +inf, then at the shift, ties away from zero); a single
rounding is what a float-requantizing runtime like Tengine's computes and lets the policy mean
exactly what its name says. The two differ by at most one step, on rare double-rounding cases.
"""
from __future__ import annotations

import numpy as np

from unified.core.rounding import RoundingPolicy

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def quantize_multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """TFLite `QuantizeMultiplier`: real -> (int32 multiplier in [2^30, 2^31), shift)."""
    real = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if np.any(real < 0) or not np.all(np.isfinite(real)):
        raise ValueError("requantization multipliers must be finite and non-negative")
    mantissa, exponent = np.frexp(real)  # real = mantissa * 2^exponent, mantissa in [0.5, 1)
    q = np.round(mantissa * (1 << 31)).astype(np.int64)  # std::round: ties away (positive here)
    overflow = q == (1 << 31)
    q = np.where(overflow, q // 2, q)
    exponent = np.where(overflow, exponent + 1, exponent)
    # zero, and multipliers too small for a 62-bit product shift, flush to zero as TFLite does
    flush = (real == 0) | (exponent < -31)
    q = np.where(flush, 0, q)
    exponent = np.where(flush, 0, exponent)
    if np.any(exponent > 30):
        raise ValueError("requantization multiplier too large (>= 2^30)")
    return q.astype(np.int64), exponent.astype(np.int64)


def multiply_by_quantized_multiplier(
    x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, policy: RoundingPolicy
) -> np.ndarray:
    """The readable reference: x * m / 2^(31 - shift), rounded once by `policy` (x saturated to int32)."""
    x = np.clip(np.asarray(x, dtype=np.int64), INT32_MIN + 1, INT32_MAX)
    product = x * np.asarray(multiplier, dtype=np.int64)
    return policy.divide_by_pot(product, 31 - np.asarray(shift, dtype=np.int64))


def requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, policy: RoundingPolicy) -> np.ndarray:
    """`multiply_by_quantized_multiplier` in few in-place int64 passes; bit-identical (tested).

    Works on magnitudes (every policy is symmetric), with k = 31 - shift >= 1:
        ties away : (|a| m + 2^(k-1)) >> k
        ties even : (|a| m + 2^(k-1) - 1 + ((|a| m >> k) & 1)) >> k
        truncate  : (|a| m) >> k
    """
    a = np.clip(np.asarray(acc, dtype=np.int64), INT32_MIN + 1, INT32_MAX)
    k = 31 - np.asarray(shift, dtype=np.int64)
    neg = a < 0
    mag = np.abs(a)
    mag *= np.asarray(multiplier, dtype=np.int64)
    if policy is RoundingPolicy.TIES_AWAY:
        mag += np.left_shift(np.int64(1), k - 1)
    elif policy is RoundingPolicy.TIES_TO_EVEN:
        odd = mag >> k
        odd &= 1
        mag += np.left_shift(np.int64(1), k - 1) - 1
        mag += odd
    mag >>= k
    np.negative(mag, out=mag, where=neg)
    return mag


def float64_carrier_exact(w_shifted: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, xmax: int) -> bool:
    """Whether every output channel's |acc + bias| * multiplier stays below 2^53, so the float64
    carrier of `kernels._requant_f64` computes the requantization exactly (|x - zx| <= xmax)."""
    rows = np.abs(np.asarray(w_shifted, dtype=np.int64)).reshape(len(w_shifted), -1).sum(axis=1)
    bound = rows * xmax + np.abs(np.asarray(bias, dtype=np.int64))
    return bool(np.all(bound.astype(np.float64) * multiplier < 2.0**53))
