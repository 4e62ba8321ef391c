"""Integer kernels: a table from kernel name to function, numpy-vectorized.

Inputs and outputs are 8-bit integer arrays (NCHW). Accumulation is exact integer arithmetic:
products of zero-point-shifted 8-bit values are summed by BLAS in float32 when lowering proved
every partial sum is an integer below 2^24 (so no rounding can occur), else in float64 (exact
below 2^53), then converted to int64 accumulators; requantization is fixed point
(an int32 multiplier and shift, one rounding by the backend's policy), then saturation.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from unified.engine import fused
from unified.engine.fixed_point import requantize
from unified.engine.fixed_point import requantize as mbqm
from unified.engine.integer_graph import IntegerGraph, IntNode

Tap = Callable[[str, str, np.ndarray], None] | None  # (node name, kind, array); None: nobody listens

Kernel = Callable[[IntNode, list[np.ndarray], IntegerGraph, Tap], list[np.ndarray]]


def _out(values: np.ndarray, g: IntegerGraph, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    lo = g.qmin if lo is None else lo
    hi = g.qmax if hi is None else hi
    return np.clip(values, lo, hi).astype(g.dtype)


CHUNK = 1 << 17  # elements per requantization block: int64 temporaries stay in L2


def _round_in_place(v: np.ndarray, policy: str) -> None:
    if policy == "ties_to_even":
        np.rint(v, out=v)
    elif policy == "ties_away_from_zero":
        sign = np.sign(v)
        np.abs(v, out=v)
        v += 0.5
        np.floor(v, out=v)
        v *= sign
    else:
        np.trunc(v, out=v)


def requant_reals(node: IntNode, add_bias: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The float64 multipliers m * 2^(shift - 31) per channel, and the bias times them (or None)."""
    real = node.arrays["mult"].astype(np.float64) * np.exp2(node.arrays["shift"].astype(np.float64) - 31)
    if real.size == 1:
        real = np.full(node.arrays["bias"].size if add_bias else 1, real.reshape(-1)[0])
    bias_real = node.arrays["bias"].astype(np.float64).reshape(-1) * real if add_bias else None
    return real.reshape(-1), bias_real


def _requant_f64(acc: np.ndarray, node: IntNode, g: IntegerGraph, channel_axis: int, add_bias: bool,
                 box_offsets: np.ndarray | None = None) -> np.ndarray:
    """The same integer result as `requantize`, carried in float64 where lowering proved it exact.

    With |acc| * m < 2^53 for every channel, acc * (m * 2^-k) is the exact rational a*m/2^k (m is
    a 31-bit integer, so m * 2^-k is exactly representable) and the policy's rounding of it is
    exact: integer arithmetic in a float64 carrier, like the BLAS sums. With `add_bias` the bias
    is folded in as b * M: (acc + b) * M = acc * M + b * M exactly, since the lowering's bound
    covers |acc| + |b|.
    """
    shape = [1] * acc.ndim
    shape[channel_axis] = -1
    real, bias_real = requant_reals(node, add_bias)
    real = real.reshape(shape)
    bias_real = None if bias_real is None else bias_real.reshape(shape)
    out = fused.requant_f64(acc, real, bias_real, node.attrs["zo"], node.attrs["act_min"], node.attrs["act_max"],
                            g.rounding.value, g.dtype, channel_axis, box_offsets)
    if out is not None:
        return out
    v = np.multiply(acc, real, dtype=np.float64)
    if bias_real is not None:
        v += bias_real
    _round_in_place(v, g.rounding.value)
    v += node.attrs["zo"]
    np.clip(v, node.attrs["act_min"], node.attrs["act_max"], out=v)
    return v.astype(g.dtype)


def _requant(acc: np.ndarray, node: IntNode, g: IntegerGraph, channel_axis: int) -> np.ndarray:
    """Per-channel fixed-point requantization + zero point + fused-activation clamp, in cache-sized blocks."""
    if node.attrs.get("requant_f64") and acc.dtype == np.float64:
        return _requant_f64(acc, node, g, channel_axis, add_bias=False)
    zo, lo, hi = node.attrs["zo"], node.attrs["act_min"], node.attrs["act_max"]
    if not node.attrs.get("reference"):
        out = fused.requant_int(acc, None, node.arrays["mult"], node.arrays["shift"], zo, lo, hi,
                                g.rounding.value, g.dtype, channel_axis)
        if out is not None:
            return out
    if acc.dtype != np.int64:
        acc = acc.astype(np.int64)
    shape = [1] * acc.ndim
    shape[channel_axis] = -1
    mult = node.arrays["mult"].reshape(shape)
    shift = node.arrays["shift"].reshape(shape)
    out = np.empty(acc.shape, dtype=g.dtype)
    channels = acc.shape[channel_axis]
    per_channel = max(1, acc.size // max(channels, 1))
    step = max(1, CHUNK // per_channel)
    index: list[slice] = [slice(None)] * acc.ndim
    for start in range(0, channels, step):
        index[channel_axis] = slice(start, start + step)
        sl = tuple(index)
        v = requantize(acc[sl], mult[sl] if mult.size > 1 else mult, shift[sl] if shift.size > 1 else shift, g.rounding)
        v += zo
        np.clip(v, lo, hi, out=v)
        out[sl] = v
    return out


def _requant_accelerated(node: IntNode, x: np.ndarray, accelerated: Any, g: IntegerGraph, tap: Tap) -> np.ndarray:
    """Accumulate `x` on an ORT accumulator (channel axis 1) and requantize, fused when possible."""
    prepared = g.requantizers.get(node.name)
    if tap is None and prepared is not None and prepared.fresh_for(node):
        return prepared(accelerated.raw(x) if prepared.use_box else accelerated.run(None, {"x": x})[0])
    box_offsets = getattr(accelerated, "offsets", None)
    if tap is None and box_offsets is not None and fused.available():
        acc = accelerated.raw(x)  # the fused requantization applies the box-sum correction
    else:
        acc, box_offsets = accelerated.run(None, {"x": x})[0], None
    channels = (1, -1) + (1,) * (acc.ndim - 2)
    if node.attrs.get("requant_f64"):
        if tap is not None:
            tap(node.name, "accumulator", _with_bias(acc, node, channels))
        return _requant_f64(acc, node, g, 1, add_bias=True, box_offsets=box_offsets)
    if tap is None and not node.attrs.get("reference"):
        out = fused.requant_int(acc, node.arrays["bias"], node.arrays["mult"], node.arrays["shift"],
                                node.attrs["zo"], node.attrs["act_min"], node.attrs["act_max"],
                                g.rounding.value, g.dtype, 1, box_offsets)
        if out is not None:
            return out
    acc = _with_bias(acc, node, channels)
    if tap is not None:
        tap(node.name, "accumulator", acc)
    return _requant(acc, node, g, 1)


def conv(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    accelerated = g.accelerators.get(node.name)
    if accelerated is not None:
        return [_requant_accelerated(node, inputs[0], accelerated, g, tap)]
    acc = _conv_accumulate(node, inputs[0])
    acc = _with_bias(acc, node, (1, -1, 1, 1))
    if tap is not None:
        tap(node.name, "accumulator", acc)
    return [_requant(acc, node, g, 1)]


def _conv_accumulate(node: IntNode, x_int: np.ndarray) -> np.ndarray:
    """The exact conv accumulator (without bias) by numpy, in the carrier lowering proved exact."""
    a = node.attrs
    ftype = np.float32 if a["exact"] == "float32" else np.float64
    x = x_int.astype(ftype) - ftype(a["zx"])  # zero-point shifted: padding 0 is real zero
    w = node.arrays["w"].astype(ftype)
    n, c = x.shape[:2]
    co, cig, kh, kw = w.shape
    sh, sw = a["strides"]
    dh, dw = a["dilations"]
    pt, pl, pb, pr = a["pads"]
    group = a["group"]
    if pt or pl or pb or pr:
        x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    hp, wp = x.shape[2], x.shape[3]
    oh = (hp - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wp - (dw * (kw - 1) + 1)) // sw + 1
    if group == c and cig == 1 and co == c:  # depthwise: one multiply-add per tap, vectorized
        acc = np.zeros((n, c, oh, ow), ftype)
        for i in range(kh):
            for j in range(kw):
                patch = x[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
                acc += patch * w[:, 0, i, j].reshape(1, c, 1, 1)
    elif kh == kw == 1 and sh == sw == 1 and group == 1:
        acc = np.matmul(w.reshape(co, c), x.reshape(n, c, hp * wp)).reshape(n, co, oh, ow)
    else:
        win = sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
        win = win[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :oh, :ow]          # (n, c, oh, ow, kh, kw)
        cols = win.reshape(n, group, cig, oh, ow, kh, kw).transpose(0, 1, 3, 4, 2, 5, 6)
        cols = cols.reshape(n, group, oh * ow, cig * kh * kw)
        wg = w.reshape(group, co // group, cig * kh * kw)
        acc = np.matmul(cols, wg.transpose(0, 2, 1))                      # (n, group, oh*ow, co/g)
        acc = acc.transpose(0, 1, 3, 2).reshape(n, co, oh, ow)
    return acc


def conv_add(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    """A conv and the residual Add after it, fused as RKNN fuses them: the conv's output is never
    rounded to 8 bits; the sum of its real value and the dequantized residual is rounded once onto
    the Add's output grid: round((acc + b) s_in s_w / s_o + (r - z_r) s_r / s_o) + z_o, in float64
    (what RKNN-Toolkit2's simulator computes; its dumps match this on 99.9% of elements)."""
    accelerated = g.accelerators.get(node.name)
    acc = accelerated.run(None, {"x": inputs[0]})[0] if accelerated is not None else _conv_accumulate(node, inputs[0])
    arr, a = node.arrays, node.attrs
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    if tap is not None:
        tap(node.name, "accumulator", _with_bias(acc, node, shape))
    v = acc.astype(np.float64) * arr["acc_real"].reshape(shape) + arr["bias_real"].reshape(shape)
    v += (inputs[1].astype(np.float64) - a["zr"]) * float(arr["res_real"].reshape(-1)[0])
    _round_in_place(v, g.rounding.value)
    v += a["zo"]
    np.clip(v, a["act_min"], a["act_max"], out=v)
    return [v.astype(g.dtype)]


def conv_transpose(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    """Transposed conv as one matmul per kernel tap, scattered with the stride, then cropped by the
    pads: every output sums each (input channel, tap) once, so lowering's bound proves it exact."""
    a = node.attrs
    ftype = np.float32 if a["exact"] == "float32" else np.float64
    x = inputs[0].astype(ftype) - ftype(a["zx"])
    w = node.arrays["w"].astype(ftype)                                  # (co, ci, kh, kw)
    n, ci, h, wd = x.shape
    co, _, kh, kw = w.shape
    sh, sw = a["strides"]
    pt, pl, pb, pr = a["pads"]
    oph, opw = a["output_padding"]
    taps = np.matmul(w.reshape(co, ci, kh * kw).transpose(2, 0, 1)[None], x.reshape(n, 1, ci, h * wd))
    full = np.zeros((n, co, (h - 1) * sh + kh + oph, (wd - 1) * sw + kw + opw), ftype)
    for i in range(kh):
        for j in range(kw):
            full[:, :, i:i + sh * (h - 1) + 1:sh, j:j + sw * (wd - 1) + 1:sw] += taps[:, i * kw + j].reshape(n, co, h, wd)
    acc = _with_bias(full[:, :, pt:full.shape[2] - pb, pl:full.shape[3] - pr], node, (1, -1, 1, 1))
    if tap is not None:
        tap(node.name, "accumulator", acc)
    return [_requant(acc, node, g, 1)]


def _with_bias(acc: np.ndarray, node: IntNode, shape: tuple[int, ...]) -> np.ndarray:
    """Exact integer accumulator plus bias: float64 carrier on the proven-exact path, else int64."""
    if node.attrs.get("requant_f64"):
        out = acc.astype(np.float64)
        out += node.arrays["bias"].reshape(shape)
        return out
    return acc.astype(np.int64) + node.arrays["bias"].reshape(shape)


def gemm(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    accelerated = g.accelerators.get(node.name)
    if tap is None and accelerated is not None and not isinstance(accelerated, np.ndarray):
        x = inputs[0]
        out = _requant_accelerated(node, x, accelerated, g, tap)  # (rows, M, 1, 1)
        return [out.reshape(x.shape[:-1] + (out.shape[1],))]
    ftype = np.float32 if node.attrs["exact"] == "float32" else np.float64
    x = inputs[0].astype(ftype) - ftype(node.attrs["zx"])
    w_t = g.accelerators.get(node.name)  # the weights as the float carrier, transposed once up front
    if not isinstance(w_t, np.ndarray):
        w_t = node.arrays["w"].astype(ftype).T
    acc = _with_bias(x @ w_t, node, (1, -1))
    if tap is not None:
        tap(node.name, "accumulator", acc)
    return [_requant(acc, node, g, acc.ndim - 1)]


def add(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    a, arr = node.attrs, node.arrays
    prepared = g.requantizers.get(node.name)
    if tap is None and prepared is not None and prepared.fresh_for(node):
        out = prepared(inputs[0], inputs[1])
        if out is not None:
            return [out]
    if tap is None and not a.get("reference"):  # the reference interpreter keeps the int64 numpy path
        lo = g.qmin if a["act_min"] is None else a["act_min"]
        hi = g.qmax if a["act_max"] is None else a["act_max"]
        out = fused.add(inputs[0], inputs[1], {**a, "lo": lo, "hi": hi}, arr, g.rounding.value, g.dtype)
        if out is not None:
            return [out]
    x1 = (inputs[0].astype(np.int64) - a["z1"]) << a["left_shift"]
    x2 = (inputs[1].astype(np.int64) - a["z2"]) << a["left_shift"]
    total = mbqm(x1, arr["m1"], arr["s1"], g.rounding) + mbqm(x2, arr["m2"], arr["s2"], g.rounding)
    if tap is not None:
        tap(node.name, "accumulator", total)
    return [_out(mbqm(total, arr["mo"], arr["so"], g.rounding) + a["zo"], g, a["act_min"], a["act_max"])]


def mul(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    a = node.attrs
    prod = (inputs[0].astype(np.int64) - a["z1"]) * (inputs[1].astype(np.int64) - a["z2"])
    if tap is not None:
        tap(node.name, "accumulator", prod)
    return [_out(mbqm(prod, node.arrays["mult"], node.arrays["shift"], g.rounding) + a["zo"], g, a["act_min"], a["act_max"])]


def concat(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    a = node.attrs
    parts = []
    for i, x in enumerate(inputs):
        if a["same"][i]:
            parts.append(x)
        else:
            v = mbqm(x.astype(np.int64) - a["zs"][i], node.arrays[f"m{i}"], node.arrays[f"s{i}"], g.rounding) + a["zo"]
            parts.append(_out(v, g))
    return [np.concatenate(parts, axis=a["axis"])]


def global_avg(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    x = inputs[0]
    axes = tuple(node.attrs.get("axes", (2, 3)))
    count = int(np.prod([x.shape[a] for a in axes]))
    total = x.sum(axis=axes, dtype=np.int64, keepdims=node.attrs["keepdims"]) - node.attrs["zx"] * count
    if tap is not None:
        tap(node.name, "accumulator", total)
    elif not node.attrs.get("reference") and total.ndim >= 2 and axes == tuple(range(2, x.ndim)):
        out = fused.requant_int(total, None, node.arrays["mult"], node.arrays["shift"], node.attrs["zo"], g.qmin,
                                g.qmax, g.rounding.value, g.dtype, 1)
        if out is not None:
            return [out]
    return [_out(mbqm(total, node.arrays["mult"], node.arrays["shift"], g.rounding) + node.attrs["zo"], g)]


def avgpool(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    a = node.attrs
    x = inputs[0].astype(np.int64) - a["zx"]  # padding with 0 = real zero, not counted by divisor
    pt, pl, pb, pr = a["pads"]
    kh, kw = a["kernel"]
    sh, sw = a["strides"]
    oh, ow = a["out_hw"]
    x = np.pad(x, ((0, 0), (0, 0), (pt, pb + kh), (pl, pr + kw)))
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :oh, :ow]
    total = win.sum(axis=(4, 5))
    if tap is not None:
        tap(node.name, "accumulator", total)
    return [_out(mbqm(total, node.arrays["mult"], node.arrays["shift"], g.rounding) + a["zo"], g)]


def maxpool(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    a = node.attrs
    x = inputs[0]
    pt, pl, pb, pr = a["pads"]
    kh, kw = a["kernel"]
    sh, sw = a["strides"]
    h, w = x.shape[2], x.shape[3]
    oh = pool_output_size(h, kh, sh, pt, pb, a["ceil_mode"])
    ow = pool_output_size(w, kw, sw, pl, pr, a["ceil_mode"])
    extra_h = max(0, (oh - 1) * sh + kh - (h + pt + pb))
    extra_w = max(0, (ow - 1) * sw + kw - (w + pl + pr))
    x = np.pad(x, ((0, 0), (0, 0), (pt, pb + extra_h), (pl, pr + extra_w)), constant_values=a["pad_value"])
    # one strided view per kernel tap, folded with np.maximum: contiguous passes over int8 data
    # (a max over a sliding-window view's last axes was 8x slower: GoogLeNet's 13 pools 78 ms)
    out = None
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
            if out is None:
                out = patch.copy()
            else:
                np.maximum(out, patch, out=out)
    return [out]


def pool_output_size(size: int, k: int, s: int, p0: int, p1: int, ceil: int) -> int:
    """ONNX pooling output length (ceil_mode windows may not start in the right padding)."""
    span = size + p0 + p1 - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p0:
        out -= 1
    return out


def clamp(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    return [np.clip(inputs[0], node.attrs["lo"], node.attrs["hi"]).astype(g.dtype)]


def lut(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    table = node.arrays["table"].astype(g.dtype)
    return [table[inputs[0].astype(np.int64) + node.attrs["offset"]]]


def channel_lut(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    """One 256-entry table per channel (axis 1): PRelu with a per-channel slope."""
    tables = node.arrays["tables"].astype(g.dtype)  # (C, levels)
    x = inputs[0].astype(np.int64) + node.attrs["offset"]
    channel = np.arange(x.shape[1]).reshape((1, -1) + (1,) * (x.ndim - 2))
    return [tables[channel, x]]


def gather(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    return [np.take(inputs[0], node.arrays["indices"], axis=node.attrs["axis"])]


def softmax(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    """exp(x - max) from a 256-entry Q20 table, integer sum, integer rounded division."""
    x = inputs[0].astype(np.int64)
    axis = node.attrs["axis"]
    d = x.max(axis=axis, keepdims=True) - x
    e = node.arrays["exp_table"][d]
    total = e.sum(axis=axis, keepdims=True)
    if tap is not None:
        tap(node.name, "accumulator", total)
    num = e * node.attrs["inv_out_q16"]
    den = total << 16
    quotient, remainder = np.divmod(num, den)
    twice = 2 * remainder
    if g.rounding.value == "ties_to_even":
        up = (twice > den) | ((twice == den) & (quotient % 2 == 1))
    elif g.rounding.value == "ties_away_from_zero":
        up = twice >= den
    else:
        up = np.zeros_like(twice, dtype=bool)
    return [_out(quotient + up + node.attrs["zo"], g)]


def reshape(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    x = inputs[0]
    shape = list(node.attrs["shape"])
    if not node.attrs.get("allowzero"):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def flatten(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    x = inputs[0]
    axis = node.attrs["axis"] % max(x.ndim, 1)
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


def transpose(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    return [np.ascontiguousarray(inputs[0].transpose(node.attrs["perm"]))]


def squeeze(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    axes = node.attrs["axes"]
    return [np.squeeze(inputs[0], axis=tuple(axes) if axes is not None else None)]


def unsqueeze(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    x = inputs[0]
    for ax in sorted(a % (x.ndim + len(node.attrs["axes"])) for a in node.attrs["axes"]):
        x = np.expand_dims(x, ax)
    return [x]


def split(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    x = inputs[0]
    axis = node.attrs["axis"]
    sizes = node.attrs["split"]
    if sizes is None:
        return list(np.array_split(x, node.attrs["num_outputs"], axis=axis))
    return list(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def slice_(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    x = inputs[0]
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(node.attrs["starts"], node.attrs["ends"], node.attrs["axes"], node.attrs["steps"]):
        size = x.shape[axis]
        end = max(min(end, size), -size - 1) if step > 0 else end
        index[axis] = slice(start, end if abs(end) < 2**62 else None, step)
    return [x[tuple(index)]]


def pad(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    x = inputs[0]
    p = node.attrs["pads"]
    r = x.ndim
    return [np.pad(x, [(p[i], p[i + r]) for i in range(r)], constant_values=node.attrs["value"])]


def matmul(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    """Two activations: centred 8-bit values, products summed exactly. float64 BLAS is exact while
    inner * 255^2 < 2^53 (any realistic inner size); the sums are then converted to int64."""
    a = inputs[0].astype(np.float64) - node.attrs["za"]
    b = inputs[1].astype(np.float64) - node.attrs["zb"]
    acc = np.matmul(a, b).astype(np.int64)
    if tap is not None:
        tap(node.name, "accumulator", acc)
    return [_out(mbqm(acc, node.arrays["mult"], node.arrays["shift"], g.rounding) + node.attrs["zo"], g)]


def upsample_nearest(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    fh, fw = node.attrs["factors"]
    return [np.repeat(np.repeat(inputs[0], fh, axis=2), fw, axis=3)]


def const(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    return [np.asarray(node.arrays["value"]).astype(g.dtype)]


def float_fallback(node: IntNode, inputs: list[np.ndarray], g: IntegerGraph, tap: Tap) -> list[np.ndarray]:
    """A node the scheme does not express: dequantize, run the float op, quantize its outputs.

    The float op is the node's one-node ONNX model, evaluated by the run-time evaluator the
    interpreter prepared for it (`g.accelerators[node.name]`)."""
    feeds = {name: g.tensors[name].dequantize(v) if name in g.tensors and v.dtype.kind in "iu" else v
             for name, v in zip(node.inputs, inputs)}
    outs = g.accelerators[node.name].run(None, feeds)
    # Outputs an integer node (or the graph output) reads are quantized; the others stay float,
    # so a chain of float nodes (a float island) runs in float throughout.
    return [g.tensors[name].quantize(y) if name in g.tensors else np.asarray(y)
            for name, y in zip(node.outputs, outs)]


KERNELS: dict[str, Kernel] = {
    "conv": conv, "conv_add": conv_add, "gemm": gemm, "add": add, "mul": mul, "concat": concat,
    "global_avg": global_avg, "avgpool": avgpool, "maxpool": maxpool, "clamp": clamp, "lut": lut,
    "softmax": softmax, "reshape": reshape, "flatten": flatten, "transpose": transpose,
    "squeeze": squeeze, "unsqueeze": unsqueeze, "split": split, "slice": slice_, "pad": pad, "const": const,
    "float": float_fallback, "upsample_nearest": upsample_nearest, "matmul": matmul,
    "channel_lut": channel_lut, "gather": gather, "conv_transpose": conv_transpose,
}
