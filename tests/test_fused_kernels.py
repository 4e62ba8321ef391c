"""The numba-fused requantization and Add equal the numpy/int64 paths bit for bit, for every
rounding policy, including ties, saturation and both integer types."""
from __future__ import annotations

import numpy as np
import pytest

from unified.core.rounding import RoundingPolicy
from unified.engine import fused
from unified.engine.fixed_point import requantize

POLICIES = [p.value for p in RoundingPolicy]


def test_numba_is_there() -> None:
    assert fused.available()   # a dev install has numba; without it the numpy path runs


def _numpy_requant_f64(acc, real, bias_real, zo, lo, hi, policy, dtype):
    v = acc.astype(np.float64) * real
    if bias_real is not None:
        v += bias_real
    v = RoundingPolicy(policy).round(v)
    return np.clip(v + zo, lo, hi).astype(dtype)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("dtype,zo,lo,hi", [(np.int8, -5, -128, 127), (np.uint8, 130, 0, 255), (np.int8, 3, 0, 127)])
def test_fused_requant_matches_numpy(policy, dtype, zo, lo, hi) -> None:
    rng = np.random.default_rng(0)
    acc = rng.integers(-40000, 40000, size=(2, 6, 5, 7)).astype(np.float32)
    acc[0, 0, 0, :3] = [2.0, -2.0, 6.0]                         # exact ties below, with real = 0.25 / 0.5
    mult = rng.integers(2**30, 2**31 - 1, size=6)
    shift = rng.integers(-12, -6, size=6)
    real = (mult * np.exp2(shift.astype(np.float64) - 31)).reshape(1, -1, 1, 1)
    real[0, 0] = 0.25
    bias_real = rng.integers(-3000, 3000, size=6).astype(np.float64).reshape(1, -1, 1, 1) * real
    for bias in (None, bias_real):
        want = _numpy_requant_f64(acc, real, bias, zo, lo, hi, policy, dtype)
        got = fused.requant_f64(acc, real, bias, zo, lo, hi, policy, dtype, channel_axis=1)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert (got == lo).any() and (got == hi).any()               # saturation on both sides was exercised


@pytest.mark.parametrize("policy", POLICIES)
def test_fused_requant_with_box_correction_matches_numpy(policy) -> None:
    """The ConvInteger layout: channel c reads acc_c - offsets[c] * box (the last channel)."""
    rng = np.random.default_rng(1)
    raw = rng.integers(-30000, 30000, size=(2, 5, 4, 3)).astype(np.int32)
    offsets = np.array([0, 3, -2, 7], np.int64)
    raw[0, 0, 0, :2], raw[0, 4, 0, :2] = [2, -2], [5, 5]   # channel 0 reads 2 and -2: ties at real 0.25
    corrected = raw[:, :4].astype(np.int64) - offsets.reshape(1, -1, 1, 1) * raw[:, 4:].astype(np.int64)
    real = np.array([0.25, 1e-3, 2e-3, 3e-3]).reshape(1, -1, 1, 1)
    bias_real = np.array([0.0, 1.5, -2.25, 0.5]).reshape(1, -1, 1, 1)
    want = _numpy_requant_f64(corrected, real, bias_real, 3, -128, 127, policy, np.int8)
    got = fused.requant_f64(raw, real, bias_real, 3, -128, 127, policy, np.int8, 1, box_offsets=offsets)
    assert got.shape == (2, 4, 4, 3) and np.array_equal(got, want)


@pytest.mark.parametrize("policy", POLICIES)
def test_fused_add_matches_int64_path(policy) -> None:
    rng = np.random.default_rng(1)
    x1 = rng.integers(-128, 128, size=(2, 8, 9, 9)).astype(np.int8)
    x2 = rng.integers(-128, 128, size=(2, 8, 9, 9)).astype(np.int8)
    arrays = {"m1": np.array([1518500250]), "s1": np.array([-1]), "m2": np.array([1073741824]),
              "s2": np.array([0]), "mo": np.array([1789569707]), "so": np.array([-19])}
    attrs = {"z1": -3, "z2": 7, "zo": 2, "left_shift": 20, "lo": -128, "hi": 127}
    rounding = RoundingPolicy(policy)
    a = (x1.astype(np.int64) - attrs["z1"]) << attrs["left_shift"]
    b = (x2.astype(np.int64) - attrs["z2"]) << attrs["left_shift"]
    total = requantize(a, arrays["m1"], arrays["s1"], rounding) + requantize(b, arrays["m2"], arrays["s2"], rounding)
    want = np.clip(requantize(total, arrays["mo"], arrays["so"], rounding) + attrs["zo"], -128, 127).astype(np.int8)
    got = fused.add(x1, x2, attrs, arrays, policy, np.int8)
    assert np.array_equal(got, want)
    assert fused.add(x1, x2[:, :1], attrs, arrays, policy, np.int8) is None   # broadcasting: the numpy path


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("carrier", [np.int64, np.float32])
def test_fused_integer_requant_matches_int64_path(policy, carrier) -> None:
    rng = np.random.default_rng(2)
    acc = rng.integers(-2**23, 2**23, size=(2, 5, 4, 3)).astype(carrier)
    bias = rng.integers(-2**20, 2**20, size=5)
    mult = rng.integers(2**30, 2**31 - 1, size=5)
    shift = rng.integers(-20, -14, size=5)
    shift[0], mult[0] = -1, 2**30                    # halves: exact ties for every odd accumulator
    rounding = RoundingPolicy(policy)
    shape = (1, -1, 1, 1)
    total = acc.astype(np.int64) + bias.reshape(shape)
    want = np.clip(requantize(total, mult.reshape(shape), shift.reshape(shape), rounding) + 4, -128, 127).astype(np.int8)
    got = fused.requant_int(acc, bias, mult, shift, 4, -128, 127, policy, np.int8, channel_axis=1)
    assert np.array_equal(got, want)
    assert (got == -128).any() and (got == 127).any()


def test_channel_groups_keep_every_partial_sum_below_2_24() -> None:
    from unified.engine.ort_accumulate import FLOAT32_EXACT, channel_groups

    w = np.full((2, 10, 3, 3), 100, np.int16)                     # one channel: 900 * 128 = 115,200
    sizes = channel_groups(w, 128)
    assert sum(sizes) == 10 and all(s * 115_200 < FLOAT32_EXACT for s in sizes) and len(sizes) == 1
    w = np.full((2, 400, 3, 3), 127, np.int16)                    # 146,304 per channel: 114 fit a group
    sizes = channel_groups(w, 128)
    assert sizes == [114, 114, 114, 58]
    assert channel_groups(np.full((1, 1, 400, 400), 127, np.int16), 128) is None


@pytest.mark.parametrize("backend", ["rknn", "tengine"])
def test_split_conv_accumulation_equals_reference(backend) -> None:
    """A conv too wide for one float32 sum runs as channel groups on ORT, summed in float64: the
    same integers as the int64 reference, padding and saturation included."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import unified
    from unified.engine.interpreter import Interpreter

    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.uniform(-0.05, 0.05, (8, 256, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w", "b"], ["out"], name="wide", pads=[1, 1, 1, 1])],
                              "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 256, 6, 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8, 6, 6])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    cal = [rng.normal(0, 1, (1, 256, 6, 6)).astype(np.float32) for _ in range(8)]
    qm = unified.quantize(model, backend=backend, calibration=cal)
    g = qm.artifact.graph
    conv = next(n for n in g.nodes if n.op == "conv")
    assert conv.attrs["exact"] == "float64"
    fast = Interpreter(g)
    assert conv.name in fast.graph.accelerators          # the split ORT session, not numpy's float64 GEMM
    info = np.iinfo(np.dtype(g.dtype))
    x = rng.integers(info.min, info.max + 1, (3, 256, 6, 6)).astype(g.dtype)
    np.testing.assert_array_equal(fast.run(x), Interpreter(g, reference=True).run(x))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("dtype,zero_point,inside", [("int8", -3, False), ("uint8", 128, False), ("int8", 5, True)])
def test_fused_input_quantization_matches_quant_params(policy, dtype, zero_point, inside) -> None:
    from unified.core.quant_params import QuantParams

    q = QuantParams(scale=0.5, zero_point=zero_point, dtype=dtype, rounding=RoundingPolicy(policy),
                    zero_point_inside_round=inside)
    rng = np.random.default_rng(2)
    x = rng.normal(0, 40, (2, 3, 5, 7)).astype(np.float32)
    x[0, 0, 0, :6] = [0.25, -0.25, 0.75, -0.75, 1000.0, -1000.0]   # ties at scale 0.5, and saturation
    got = fused.quantize(x, q)
    want = q.quantize(x)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    nhwc = fused.quantize(x, q, to_nhwc=True)
    assert nhwc.shape == (2, 5, 7, 3) and nhwc.flags.c_contiguous and np.array_equal(nhwc, want.transpose(0, 2, 3, 1))
    assert fused.quantize(x, QuantParams(scale=(0.5, 0.25, 1.0), zero_point=0, dtype=dtype)) is None  # per channel
