"""Fused requantization, compiled by numba: multiply, bias, rounding, zero point, clamp and cast in
one pass over the accumulator instead of numpy's six.

The arithmetic is the float64 carrier of `kernels._requant_f64`, operation for operation (numba
keeps IEEE semantics: no fast-math, no contraction into FMA), so results are bit-identical; the
engine's exactness tests run the int64 reference against this path. numba is optional: without it
(or with `UNIFIED_FUSED=0`) the numpy path runs. The kernels release the GIL, so the samples of a
batch requantize in parallel on the engine's threads.

Profile that chose this (EfficientNet-Lite0 on rknn, batch 1): 21.7 ms per image, of which 17.5 in
the 49 convs, and 8.5 of those in numpy's requantization passes.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, Callable

import numpy as np

POLICIES = {"ties_to_even": 0, "ties_away_from_zero": 1, "truncate": 2}


@lru_cache(maxsize=1)
def _kernels() -> Any:
    """The compiled kernels' module, or None without numba (or with UNIFIED_FUSED=0)."""
    if os.environ.get("UNIFIED_FUSED", "1") in ("0", "false"):
        return None
    try:
        from unified.engine import _fused_kernels
    except ImportError:
        return None
    return _fused_kernels


def _kernel() -> Callable[..., None] | None:
    k = _kernels()
    return None if k is None else k.requant_f64


def _add_kernel() -> Callable[..., None] | None:
    k = _kernels()
    return None if k is None else k.add


def add(x1: np.ndarray, x2: np.ndarray, attrs: dict[str, Any], arrays: dict[str, np.ndarray], policy: str,
        dtype: Any) -> np.ndarray | None:
    """The integer Add (two rescaled inputs, summed, rescaled to the output) in one pass, for
    same-shape inputs with per-tensor multipliers; None otherwise (the caller runs numpy).
    `attrs` carries the clamp bounds as "lo" and "hi"."""
    if not PreparedAdd.applies(arrays):
        return None
    return PreparedAdd(attrs, arrays, attrs["lo"], attrs["hi"], policy, dtype)(x1, x2)


ADD_PARAMS = ("m1", "s1", "m2", "s2", "mo", "so")


class PreparedAdd:
    """`add` of one node with its integer parameters read once (per-tensor multipliers only)."""

    __slots__ = ("kernel", "args", "dtype", "source")

    def __init__(self, attrs: dict[str, Any], arrays: dict[str, np.ndarray], lo: int, hi: int, policy: str,
                 dtype: Any) -> None:
        self.kernel = _add_kernel()
        first = {name: int(arrays[name].reshape(-1)[0]) for name in ADD_PARAMS}
        self.args = (int(attrs["z1"]), int(attrs["z2"]), int(attrs["left_shift"]), first["m1"], 31 - first["s1"],
                     first["m2"], 31 - first["s2"], first["mo"], 31 - first["so"], int(attrs["zo"]), int(lo), int(hi),
                     POLICIES[policy])
        self.dtype = np.dtype(dtype)
        self.source = (attrs, *(arrays[k] for k in ADD_PARAMS))

    @staticmethod
    def applies(arrays: dict[str, np.ndarray]) -> bool:
        return _add_kernel() is not None and all(arrays[k].size == 1 for k in ADD_PARAMS)

    def fresh_for(self, node: Any) -> bool:
        """Whether the node still holds the objects this was prepared from (see PreparedRequant)."""
        return self.source[0] is node.attrs and all(
            a is node.arrays.get(k) for a, k in zip(self.source[1:], ADD_PARAMS))

    def __call__(self, x1: np.ndarray, x2: np.ndarray) -> np.ndarray | None:
        """None for inputs of different shapes (the caller broadcasts in numpy)."""
        if x1.shape != x2.shape:
            return None
        out = np.empty(x1.shape, dtype=self.dtype)
        self.kernel(np.ascontiguousarray(x1).reshape(-1), np.ascontiguousarray(x2).reshape(-1), *self.args,
                    out.reshape(-1))
        return out


def _int_kernel() -> Callable[..., None] | None:
    k = _kernels()
    return None if k is None else k.requant_int


def _layout(acc: np.ndarray, channel_axis: int, box_offsets: np.ndarray | None
            ) -> tuple[np.ndarray, int, tuple[int, ...], np.ndarray, bool]:
    """(acc as contiguous (outer, channels[+1], inner), output channels, output shape, offsets, use_box).

    With `box_offsets` the accumulator's last channel is the box sum of `ort_accumulate`'s
    ConvInteger and channel c is read as acc_c - offsets[c] * box."""
    shape = acc.shape
    outer = int(np.prod(shape[:channel_axis], dtype=np.int64))
    inner = int(np.prod(shape[channel_axis + 1:], dtype=np.int64))
    acc3 = np.ascontiguousarray(acc).reshape(outer, shape[channel_axis], inner)
    channels = shape[channel_axis] - (box_offsets is not None)
    out_shape = shape[:channel_axis] + (channels,) + shape[channel_axis + 1:]
    offsets = np.zeros(1, np.int64) if box_offsets is None else np.ascontiguousarray(box_offsets, dtype=np.int64)
    return acc3, channels, out_shape, offsets, box_offsets is not None


def requant_int(acc: np.ndarray, bias: np.ndarray | None, mult: np.ndarray, shift: np.ndarray, zo: int, lo: int,
                hi: int, policy: str, dtype: Any, channel_axis: int,
                box_offsets: np.ndarray | None = None) -> np.ndarray | None:
    """`fixed_point.requantize` of an exact integer accumulator (int64, int32, or integer-valued
    float32) plus an optional per-channel bias, with zero point and clamp, in one pass; None
    without numba. `box_offsets`: see `_layout`."""
    kernel = _int_kernel()
    if kernel is None:
        return None
    acc3, channels, out_shape, offsets, use_box = _layout(acc, channel_axis, box_offsets)

    def per_channel(values: np.ndarray | None, default: int) -> np.ndarray:
        if values is None:
            return np.full(channels, default, dtype=np.int64)
        values = np.asarray(values, dtype=np.int64).reshape(-1)
        return np.full(channels, values[0], dtype=np.int64) if values.size == 1 else np.ascontiguousarray(values)

    out = np.empty((acc3.shape[0], channels, acc3.shape[2]), dtype=dtype)
    kernel(acc3, per_channel(bias, 0), per_channel(mult, 0), 31 - per_channel(shift, 0), int(zo), int(lo), int(hi),
           POLICIES[policy], offsets, use_box, out)
    return out.reshape(out_shape)


def quantize(x: np.ndarray, q: Any, to_nhwc: bool = False) -> np.ndarray | None:
    """`q.quantize(x)` (a per-tensor `QuantParams`) in one pass, or None without numba or with
    per-channel scales; with `to_nhwc`, an NCHW batch comes out NHWC in the same pass. The model
    input of every engine run goes through it (Lite0: 150k values, 0.4 ms in numpy's six passes,
    and 0.13 ms more for numpy's NCHW -> NHWC copy)."""
    k = _kernels()
    if k is None or np.ndim(q.scale) != 0 or np.ndim(q.zero_point) != 0 or (to_nhwc and x.ndim != 4):
        return None
    x = np.ascontiguousarray(x)
    args = (float(q.scale), float(q.zero_point), bool(q.zero_point_inside_round), POLICIES[q.rounding.value],
            float(q.qmin), float(q.qmax))
    out = np.empty(x.shape, dtype=q.dtype)
    k.quantize(x.reshape(-1), *args, out.reshape(-1))
    if not to_nhwc:
        return out
    n, c, h, w = x.shape
    nhwc = np.empty((n, h, w, c), dtype=q.dtype)
    k.nchw_to_nhwc(out.reshape(n, c, h * w), nhwc.reshape(n, h * w, c))
    return nhwc


def available() -> bool:
    return _kernel() is not None


class PreparedRequant:
    """`requant_f64` of one node with everything but the accumulator computed once, when the
    interpreter starts: per-channel float64 multipliers and biases, clamp bounds, policy, box
    offsets. A call is then one reshape, one allocation and the kernel (about 10 us of Python per
    layer less, 0.3-0.5 ms per Lite0 image). Channel axis 1; any trailing shape."""

    __slots__ = ("kernel", "real", "bias", "use_bias", "zo", "lo", "hi", "policy", "coef", "use_box", "dtype",
                 "channels", "source")

    def __init__(self, real: np.ndarray, bias_real: np.ndarray | None, zo: int, lo: int, hi: int, policy: str,
                 dtype: Any, box_offsets: np.ndarray | None, source: tuple[Any, ...] = ()) -> None:
        #: the node's own objects it was prepared from (`fresh_for`)
        self.source = source
        self.kernel = _kernel()
        self.real = np.ascontiguousarray(real, dtype=np.float64).reshape(-1)
        self.channels = self.real.size
        self.use_bias = bias_real is not None
        self.bias = (np.zeros(self.channels) if bias_real is None
                     else np.ascontiguousarray(bias_real, dtype=np.float64).reshape(-1))
        self.zo, self.lo, self.hi = float(zo), float(lo), float(hi)
        self.policy = POLICIES[policy]
        self.use_box = box_offsets is not None
        self.coef = np.zeros(1, np.int64) if box_offsets is None else np.ascontiguousarray(box_offsets, dtype=np.int64)
        self.dtype = np.dtype(dtype)

    @staticmethod
    def source_of(node: Any) -> tuple[Any, ...]:
        return (node.attrs, node.arrays.get("bias"), node.arrays.get("mult"), node.arrays.get("shift"))

    def fresh_for(self, node: Any) -> bool:
        """Whether the node still holds the very objects this was prepared from. A build step that
        replaces a bias (the empirical bias correction runs the kernels while it corrects) makes
        the kernel fall back to the unprepared path for that node."""
        return all(a is b for a, b in zip(self.source, self.source_of(node)))

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        """acc (N, channels [+1 box channel], ...) -> requantized (N, channels, ...)."""
        n = acc.shape[0]
        acc3 = acc.reshape(n, acc.shape[1], -1)
        out = np.empty((n, self.channels, acc3.shape[2]), self.dtype)
        self.kernel(acc3, self.real, self.bias, self.use_bias, self.zo, self.lo, self.hi, self.policy, self.coef,
                    self.use_box, out)
        return out.reshape((n, self.channels) + acc.shape[2:])


def requant_f64(acc: np.ndarray, real: np.ndarray, bias_real: np.ndarray | None, zo: int, lo: int, hi: int,
                policy: str, dtype: Any, channel_axis: int, box_offsets: np.ndarray | None = None) -> np.ndarray | None:
    """The fused requantization of `acc` (per-channel `real` multipliers along `channel_axis`), or
    None when numba is not there (the caller then runs numpy). `box_offsets`: see `_layout`."""
    kernel = _kernel()
    if kernel is None:
        return None
    acc3, channels, out_shape, offsets, use_box = _layout(acc, channel_axis, box_offsets)
    out = np.empty((acc3.shape[0], channels, acc3.shape[2]), dtype=dtype)
    real = np.ascontiguousarray(real, dtype=np.float64).reshape(-1)
    if real.size == 1 and channels != 1:
        real = np.full(channels, real[0])
    bias = np.zeros(channels) if bias_real is None else np.ascontiguousarray(bias_real, dtype=np.float64).reshape(-1)
    kernel(acc3, real, bias, bias_real is not None, float(zo), float(lo), float(hi), POLICIES[policy], offsets,
           use_box, out)
    return out.reshape(out_shape)
