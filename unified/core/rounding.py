"""Rounding policies, named and explicit, one per backend.

Every place the engine turns a real (or a wider integer) into a narrower integer uses the policy
of its backend: quantizing weights and inputs, and the final right shift of fixed-point
requantization. They differ only on ties (x.5) or, for truncation, on every fraction:

    value            -2.5  -1.5  -0.5   0.5   1.5   2.5
    TIES_TO_EVEN      -2    -2    -0     0     2     2     numpy.rint, Python round (RKNN-Toolkit2)
    TIES_AWAY         -3    -2    -1     1     2     3     C round(), gemmlowp/TFLite (Tengine)
    TRUNCATE          -2    -1    -0     0     1     2     C integer conversion toward zero
"""
from __future__ import annotations

import enum

import numpy as np


class RoundingPolicy(str, enum.Enum):
    TIES_TO_EVEN = "ties_to_even"
    TIES_AWAY = "ties_away_from_zero"
    TRUNCATE = "truncate"

    def round(self, x: np.ndarray | float) -> np.ndarray:
        """Round reals to integer-valued float64 by this policy."""
        v = np.asarray(x, dtype=np.float64)
        if self is RoundingPolicy.TIES_TO_EVEN:
            return np.rint(v)
        if self is RoundingPolicy.TIES_AWAY:
            return np.sign(v) * np.floor(np.abs(v) + 0.5)
        return np.trunc(v)

    def divide_by_pot(self, x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
        """Integer x / 2**exponent rounded by this policy, exactly, in int64 (exponent >= 0)."""
        x = np.asarray(x, dtype=np.int64)
        e = np.asarray(exponent, dtype=np.int64)
        if not np.any(e):
            return x
        magnitude = np.abs(x)
        floor_div = magnitude >> e
        if self is RoundingPolicy.TRUNCATE:
            return np.sign(x) * floor_div
        remainder = magnitude - (floor_div << e)
        half = np.where(e > 0, np.left_shift(np.int64(1), np.maximum(e - 1, 0)), 0)
        if self is RoundingPolicy.TIES_AWAY:
            up = remainder >= half
        else:  # ties to even: up if above half, or exactly half and the floor is odd
            up = (remainder > half) | ((remainder == half) & ((floor_div & 1) == 1))
        up &= e > 0
        return np.sign(x) * (floor_div + up)
