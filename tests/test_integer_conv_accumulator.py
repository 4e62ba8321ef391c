"""Dense convs accumulate on ORT's ConvInteger (U8U8): the int32 accumulator equals a plain int64
convolution element for element, for int8 and uint8 activations, per-channel asymmetric weight
rows (the box-sum correction), strides and pads, and batches; layouts it cannot keep exact are
refused so the float path runs instead."""
from __future__ import annotations

import numpy as np
import pytest

from unified.engine.integer_graph import IntNode
from unified.engine.ort_accumulate import integer_conv_accumulator


def _int64_conv(x: np.ndarray, w: np.ndarray, zx: int, stride: int, pad: int) -> np.ndarray:
    xs = np.pad(x.astype(np.int64) - zx, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, h, wd = xs.shape
    co, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, co, oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xs[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.int64))
    return out


def _node(w: np.ndarray, zx: int, stride: int, pad: int) -> IntNode:
    return IntNode("conv", "c", ["x"], ["y"], "Conv", attrs={
        "group": 1, "kernel": list(w.shape[2:]), "strides": [stride, stride], "pads": [pad] * 4,
        "dilations": [1, 1], "zx": zx}, arrays={"w": w})


@pytest.mark.parametrize("dtype,qmin,qmax,zx", [("int8", -128, 127, -7), ("uint8", 0, 255, 131)])
@pytest.mark.parametrize("kernel,stride,pad", [(1, 1, 0), (3, 2, 1), (3, 1, 1)])
def test_integer_accumulator_equals_int64_conv(dtype, qmin, qmax, zx, kernel, stride, pad) -> None:
    rng = np.random.default_rng(kernel * 10 + stride)
    co, ci = 9, 6
    # rows like RKNN's per-channel asymmetric weights: each spans <= 255 steps, rows far apart
    zero_points = rng.integers(-60, 60, co)
    w = (rng.integers(-128, 128, (co, ci, kernel, kernel)) - zero_points.reshape(-1, 1, 1, 1)).astype(np.int16)
    w[0, 0, 0, 0], w[1, 0, 0, 0] = -128 - zero_points[0], 127 - zero_points[1]   # the extremes are reached
    x = rng.integers(qmin, qmax + 1, (3, ci, 11, 10)).astype(dtype)
    acc = integer_conv_accumulator(_node(w, zx, stride, pad), dtype, qmin, qmax)
    assert acc is not None
    assert acc.offsets is not None  # the rows cannot share one zero point: the correction runs
    expected = _int64_conv(x, w, zx, stride, pad)
    got = acc.run(None, {"x": x})[0]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(acc.run(None, {"x": x[1:2]})[0], expected[1:2])


def test_rows_sharing_a_zero_point_need_no_correction() -> None:
    rng = np.random.default_rng(1)
    w = rng.integers(-127, 128, (4, 5, 1, 1)).astype(np.int16)
    acc = integer_conv_accumulator(_node(w, 0, 1, 0), "int8", -128, 127)
    assert acc is not None and acc.offsets is None
    x = rng.integers(-128, 128, (2, 5, 4, 4)).astype(np.int8)
    np.testing.assert_array_equal(acc.run(None, {"x": x})[0], _int64_conv(x, w, 0, 1, 0))


def test_layouts_that_cannot_stay_exact_are_refused() -> None:
    wide = np.zeros((2, 3, 1, 1), np.int16)
    wide[0, 0, 0, 0], wide[0, 1, 0, 0] = -200, 100          # one row spans 300 steps
    assert integer_conv_accumulator(_node(wide, 0, 1, 0), "int8", -128, 127) is None
    grouped = _node(np.ones((4, 1, 3, 3), np.int16), 0, 1, 1)
    grouped.attrs["group"] = 4                                # depthwise: the float path keeps it
    assert integer_conv_accumulator(grouped, "int8", -128, 127) is None
    huge = np.full((1, 40000, 1, 1), 255, np.int16)          # 40000 * 255 * 255 passes 2^31
    assert integer_conv_accumulator(_node(huge, 0, 1, 0), "uint8", 0, 255) is None


def test_pointwise_convs_take_the_u8s8_gemm_only_where_the_probe_proves_it_exact(monkeypatch) -> None:
    """With VNNI the probe passes and 1x1 convs run on MatMulInteger (U8S8); without it (or with
    UNIFIED_U8S8=0) they stay on ConvInteger. Either way the sums equal int64 math."""
    from unified.engine import ort_accumulate

    rng = np.random.default_rng(3)
    w = (rng.integers(-128, 128, (7, 12, 1, 1)) - rng.integers(-60, 60, (7, 1, 1, 1))).astype(np.int16)
    for dtype, qmin, qmax, zx in (("int8", -128, 127, 9), ("uint8", 0, 255, 140)):
        x = rng.integers(qmin, qmax + 1, (3, 12, 5, 4)).astype(dtype)
        expected = _int64_conv(x, w, zx, 1, 0)
        for switch in ("1", "0"):
            monkeypatch.setenv("UNIFIED_U8S8", switch)
            ort_accumulate.u8s8_is_exact.cache_clear()
            acc = integer_conv_accumulator(_node(w, zx, 1, 0), dtype, qmin, qmax)
            pointwise = isinstance(acc, ort_accumulate.PointwiseAccumulator)
            assert pointwise == (switch == "1" and ort_accumulate.u8s8_is_exact())
            np.testing.assert_array_equal(acc.run(None, {"x": x})[0], expected)
    ort_accumulate.u8s8_is_exact.cache_clear()
