"""Conv accumulation on ONNX Runtime's kernels, exact by construction.

Dense convs (group 1) run as ORT's `ConvInteger` on uint8 input and uint8 weights: its U8U8 GEMM
widens both to 16 bits before multiplying, so every product and int32 sum is exact on AVX2 and
VNNI alike (the U8S8 path is avoided: without VNNI it saturates pairs of products in 16 bits). An
int8 input becomes uint8 by flipping its sign bit (x + 128, zero point + 128); weights take a zero point
per output channel that maps each row into [0, 255]. Measured on EfficientNet-Lite0's 32 pointwise
convs: about 1.6x faster than the float32 path below, which stays for depthwise convs (ORT's
ConvInteger has no fast grouped kernel) and for weights that span more than 255 steps.


For a conv whose lowering proved every partial sum an integer below 2^24 (`exact == "float32"`),
ORT's float32 Conv on the zero-point-shifted integer input and weights computes the very same
integer accumulator as the numpy reference (no addition or fused multiply-add of integers below
2^24 rounds), about ten times faster. Each such layer gets a tiny one-node session:
int8/uint8 x -> DequantizeLinear(scale 1, zx) -> Conv(w - zw) -> float32 accumulator (bias added afterwards).
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from unified.engine.integer_graph import IntNode
from unified.graph.ort_session import make_session

_ELEM = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}


INT32_EXACT = 2**31


def _conv_session(nodes: list, inits: list, x_type: int, channels: int, acc_type: int,
                  threads: int | None, x_shape: list[int | str] | None = None) -> ort.InferenceSession:
    """One small session x (N, channels, H, W), or `x_shape`, -> acc, on the arena every engine
    session shares."""
    graph = helper.make_graph(nodes, "conv_accumulator",
                              [helper.make_tensor_value_info("x", x_type, x_shape or ["N", channels, "H", "W"])],
                              [helper.make_tensor_value_info("acc", acc_type, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return make_session(model.SerializeToString(), threads, shared_arena=True)


class IntegerConvAccumulator:
    """Dense conv -> exact int32 accumulator (without bias), on ORT's `ConvInteger` (U8U8).

    ORT takes one weight zero point per tensor, while RKNN's weights have one per channel. Row c is
    therefore stored as w_c + zw + d_c (d_c moves the row into [0, 255]) and the session computes
    one more output channel whose weights are all zw + 1: the box sum S of the shifted input over
    each receptive field. Then acc_c = out_c - d_c * S, exactly, in int32."""

    def __init__(self, session: ort.InferenceSession, flip_sign: bool, offsets: np.ndarray | None) -> None:
        self.session = session
        self.flip_sign = flip_sign
        self.offsets = offsets

    def raw(self, x: np.ndarray) -> np.ndarray:
        """ORT's output as it comes: with `offsets`, one more channel (the box sum) and rows not yet
        corrected; the fused requantization reads it this way and corrects as it goes."""
        if self.flip_sign:  # int8 -> uint8 + 128, one pass over the bytes
            x = np.bitwise_xor(np.ascontiguousarray(x).view(np.uint8), np.uint8(0x80))
        return self.session.run(None, {"x": x})[0]

    def run(self, output_names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The exact accumulator, with the `InferenceSession.run` signature the kernels call."""
        out = self.raw(feeds["x"])
        if self.offsets is None:
            return [out]
        box = out[:, -1:]
        return [out[:, :-1] - self.offsets.reshape((1, -1) + (1,) * (out.ndim - 2)).astype(np.int32) * box]


def integer_conv_accumulator(node: IntNode, dtype: str, qmin: int, qmax: int,
                             threads: int | None = None) -> IntegerConvAccumulator | None:
    """The `ConvInteger` accumulator of a dense conv (`MatMulInteger` for pointwise ones, where exact),
    or None when it cannot be exact: grouped convs, a weight row spanning more than 255 steps, or a
    sum that may pass 2^31."""
    a = node.attrs
    w = node.arrays["w"].astype(np.int64)
    if a["group"] != 1 or w.ndim != 4 or len(a["pads"]) != 4:
        return None
    rows = w.reshape(w.shape[0], -1)
    lo, hi = rows.min(axis=1), rows.max(axis=1)
    if np.any(hi - lo > 255):
        return None
    xmax = max(qmax - a["zx"], a["zx"] - qmin)
    # the box-sum channel and the corrected rows must stay inside int32 too
    bound = (int(np.abs(rows).sum(axis=1).max()) + 256 * rows.shape[1]) * xmax
    if bound >= INT32_EXACT:
        return None
    flip = dtype == "int8"
    zx = a["zx"] + 128 if flip else a["zx"]
    if not 0 <= zx <= 255:
        return None
    zw = 128 if np.all((lo >= -128) & (hi <= 127)) else int(np.clip(-lo.min(), 0, 254))
    offsets = np.clip(zw + lo, None, 0) * -1 + np.clip(zw + hi - 255, 0, None) * -1  # d_c: row into [0, 255]
    w_u8 = w + zw + offsets.reshape(-1, 1, 1, 1)
    if np.any(offsets):
        w_u8 = np.concatenate([w_u8, np.full((1,) + w.shape[1:], zw + 1, np.int64)])
    box_offsets = offsets.astype(np.int64) if np.any(offsets) else None
    pointwise = list(a["kernel"]) == [1, 1] and list(a["strides"]) == [1, 1] and not any(a["pads"])
    if pointwise and u8s8_is_exact():
        return _pointwise_accumulator(w_u8, zw, a["zx"], dtype, box_offsets, threads)
    inits = [numpy_helper.from_array(w_u8.astype(np.uint8), "w"),
             numpy_helper.from_array(np.array(zx, np.uint8), "zx"),
             numpy_helper.from_array(np.array(zw, np.uint8), "zw")]
    conv = helper.make_node("ConvInteger", ["x", "w", "zx", "zw"], ["acc"], strides=a["strides"], pads=a["pads"],
                            dilations=a["dilations"], group=1, kernel_shape=a["kernel"])
    session = _conv_session([conv], inits, TensorProto.UINT8, w.shape[1], TensorProto.INT32, threads)
    return IntegerConvAccumulator(session, flip, box_offsets)


class PointwiseAccumulator(IntegerConvAccumulator):
    """A 1x1 conv (stride 1, no pads) as ORT's `MatMulInteger` W (co, ci) u8 @ x (N, ci, H*W) s8,
    the U8S8 GEMM that VNNI runs about 1.5x faster than `ConvInteger`'s U8U8 (Lite0's 32
    pointwise convs: ConvInteger 45-155 us each, MatMulInteger 32-85 us). Only used where
    `u8s8_is_exact()`: without VNNI that GEMM saturates pairs of products in 16 bits. Weight rows,
    their zero point and the box-sum row are those of `IntegerConvAccumulator`; the input is read
    as int8 (a uint8 input flips its sign bit instead)."""

    def raw(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        if self.flip_sign:  # uint8 -> int8 - 128, one pass over the bytes
            x = np.bitwise_xor(x.view(np.uint8), np.uint8(0x80)).view(np.int8)
        n, c = x.shape[:2]
        out = self.session.run(None, {"x": x.reshape(n, c, -1)})[0]
        return out.reshape((n, out.shape[1]) + x.shape[2:])


def _pointwise_accumulator(w_u8: np.ndarray, zw: int, zx: int, dtype: str, offsets: np.ndarray | None,
                           threads: int | None) -> PointwiseAccumulator | None:
    flip = dtype == "uint8"
    zx_s8 = zx - 128 if flip else zx
    if not -128 <= zx_s8 <= 127:
        return None
    inits = [numpy_helper.from_array(w_u8.reshape(w_u8.shape[:2]).astype(np.uint8), "w"),
             numpy_helper.from_array(np.array(zw, np.uint8), "zw"),
             numpy_helper.from_array(np.array(zx_s8, np.int8), "zx")]
    session = _conv_session([_matmul_integer()], inits, TensorProto.INT8, w_u8.shape[1], TensorProto.INT32, threads,
                            x_shape=["N", w_u8.shape[1], "HW"])
    return PointwiseAccumulator(session, flip, offsets)


def _matmul_integer() -> onnx.NodeProto:
    """acc = (w - zw) @ (x - zx): uint8 weights first, int8 input second (ORT's U8S8 GEMM)."""
    return helper.make_node("MatMulInteger", ["w", "x", "zw", "zx"], ["acc"])


@lru_cache(maxsize=1)
def u8s8_is_exact() -> bool:
    """Whether ORT's U8S8 integer GEMM sums exactly on this CPU, probed once per process.

    With VNNI (vpdpbusd) every product is summed in 32 bits; on AVX2 without it, pairs of products
    are first summed in 16 bits with saturation (255 * 127 * 2 > 32767). The probe takes extreme
    values in every pair, at several shapes, and compares with int64. `UNIFIED_U8S8=0` turns the
    path off."""
    if os.environ.get("UNIFIED_U8S8", "1") in ("0", "false"):
        return False
    rng = np.random.default_rng(0)
    for rows, depth, cols in ((4, 64, 1), (16, 96, 49), (33, 160, 300)):
        w = np.where(rng.random((rows, depth)) < 0.8, 255, rng.integers(0, 256, (rows, depth))).astype(np.uint8)
        x = np.where(rng.random((2, depth, cols)) < 0.5, 127, -128).astype(np.int8)
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0, np.uint8), "zw"),
                 numpy_helper.from_array(np.array(0, np.int8), "zx")]
        session = _conv_session([_matmul_integer()], inits, TensorProto.INT8, depth, TensorProto.INT32, 1,
                                x_shape=[2, depth, cols])
        got = session.run(None, {"x": x})[0]
        if not np.array_equal(got, np.matmul(w.astype(np.int64), x.astype(np.int64))):
            return False
    return True


class IntegerGemmAccumulator(IntegerConvAccumulator):
    """A Gemm with constant weights as a 1x1 `IntegerConvAccumulator`: x (..., K) is read as
    (rows, K, 1, 1), and the accumulator comes back as (rows, M [+1 box channel], 1, 1), the layout
    the fused requantization takes (channel axis 1). Keeps the fast path off numpy's BLAS, whose
    own threads spin after each call and slowed the cores' other work (ORT fp32 beside it 4.4 ->
    3.7 ms on Lite0)."""

    def __init__(self, conv: IntegerConvAccumulator) -> None:
        super().__init__(conv.session, conv.flip_sign, conv.offsets)
        self.conv = conv

    def raw(self, x: np.ndarray) -> np.ndarray:
        return self.conv.raw(np.ascontiguousarray(x).reshape(-1, x.shape[-1], 1, 1))


def integer_gemm_accumulator(node: IntNode, dtype: str, qmin: int, qmax: int,
                             threads: int | None = None) -> IntegerGemmAccumulator | None:
    """The `ConvInteger` accumulator of a Gemm node (weights (M, K)), or None when it cannot be exact."""
    w = node.arrays["w"]
    if w.ndim != 2:
        return None
    shim = IntNode("conv", node.name, node.inputs, node.outputs, node.source,
                   attrs={"group": 1, "pads": [0, 0, 0, 0], "strides": [1, 1], "dilations": [1, 1],
                          "kernel": [1, 1], "zx": node.attrs["zx"]},
                   arrays={"w": w.reshape(w.shape + (1, 1))})
    conv = integer_conv_accumulator(shim, dtype, qmin, qmax, threads)
    return None if conv is None else IntegerGemmAccumulator(conv)


def _centred_input() -> onnx.NodeProto:
    """x - zx as float32 in one pass: DequantizeLinear with scale 1 (exact for 8-bit integers),
    10-20% faster per depthwise session than Cast then Sub."""
    return helper.make_node("DequantizeLinear", ["x", "one", "zx"], ["xs"])


def _centring_inits(zx: int, dtype: str) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(np.float32(1.0), "one"), numpy_helper.from_array(np.array(zx, dtype), "zx")]


class CentredInputConv:
    """A float32 conv session that takes its input already centred, x - zx as float32: the float
    carrier the producing layer's requantization writes directly (`Interpreter`, `_carrier_pairs`),
    which saves the session's own DequantizeLinear pass (Lite0's 16 depthwise convs: about 0.3 ms
    per image). An 8-bit input, from any other path, is centred here in numpy."""

    def __init__(self, session: ort.InferenceSession, zx: int) -> None:
        self.session = session
        self.zx = np.float32(zx)

    def run(self, output_names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["x"]
        if x.dtype != np.float32:
            x = x.astype(np.float32)
            x -= self.zx
        return self.session.run(None, {"x": x})


def conv_accumulator_session(node: IntNode, dtype: str, threads: int | None = None,
                             centred_input: bool = False) -> ort.InferenceSession | CentredInputConv:
    """int8/uint8 input -> exact float32 accumulator (without bias); with `centred_input`, a
    `CentredInputConv` taking x - zx as float32.

    (Fusing bias, requantization and clamping into the session too was measured slower: ORT's
    float64 element-wise kernels lose to numpy's here.)"""
    a = node.attrs
    w = node.arrays["w"].astype(np.float32)
    channels = w.shape[1] * a["group"]

    def conv(x: str) -> onnx.NodeProto:
        return helper.make_node("Conv", [x, "w"], ["acc"], strides=a["strides"], pads=a["pads"],
                                dilations=a["dilations"], group=a["group"], kernel_shape=a["kernel"])

    if centred_input:
        session = _conv_session([conv("x")], [numpy_helper.from_array(w, "w")], TensorProto.FLOAT, channels,
                                TensorProto.FLOAT, threads)
        return CentredInputConv(session, a["zx"])
    inits = [numpy_helper.from_array(w, "w"), *_centring_inits(a["zx"], dtype)]
    return _conv_session([_centred_input(), conv("xs")], inits, _ELEM[dtype], channels, TensorProto.FLOAT, threads)


FLOAT32_EXACT = 2**24


def channel_groups(w: np.ndarray, xmax: int) -> list[int] | None:
    """Split the input channels of a conv, in order, into groups whose partial sums each stay
    integers below 2^24 for every output channel (greedy); None when one channel alone does not."""
    per_channel = np.abs(w.astype(np.int64)).sum(axis=(2, 3)) * xmax        # (co, ci)
    if (per_channel >= FLOAT32_EXACT).any():
        return None
    sizes, running, start = [], np.zeros(w.shape[0], np.int64), 0
    for j in range(w.shape[1]):
        if (running + per_channel[:, j] >= FLOAT32_EXACT).any():
            sizes.append(j - start)
            running, start = np.zeros(w.shape[0], np.int64), j
        running += per_channel[:, j]
    sizes.append(w.shape[1] - start)
    return sizes


def split_conv_accumulator_session(node: IntNode, dtype: str, qmin: int, qmax: int,
                                   threads: int | None = None) -> ort.InferenceSession | None:
    """For a conv whose whole sum may pass 2^24 (`exact == "float64"`, group 1): one float32 Conv per
    group of input channels (each group's sum proven below 2^24, so exact), each cast to float64
    and summed there (integers below 2^53: exact) -> the exact accumulator in float64. Replaces
    numpy's float64 im2col GEMM (ResNet-18's deep 3x3 convs: about 3.5 ms each at batch 1)."""
    a = node.attrs
    if a["group"] != 1:
        return None
    w = node.arrays["w"]
    sizes = channel_groups(w, max(qmax - a["zx"], a["zx"] - qmin))
    if sizes is None:
        return None
    conv_attrs = dict(strides=a["strides"], pads=a["pads"], dilations=a["dilations"], kernel_shape=a["kernel"])
    nodes = [_centred_input()]
    inits = _centring_inits(a["zx"], dtype)
    parts, start = [], 0
    if len(sizes) > 1:
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        nodes.append(helper.make_node("Split", ["xs", "sizes"], [f"xs{i}" for i in range(len(sizes))], axis=1))
    for i, size in enumerate(sizes):
        inits.append(numpy_helper.from_array(w[:, start:start + size].astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("Conv", ["xs" if len(sizes) == 1 else f"xs{i}", f"w{i}"], [f"acc{i}"], **conv_attrs),
                  helper.make_node("Cast", [f"acc{i}"], [f"acc{i}d"], to=TensorProto.DOUBLE)]
        parts.append(f"acc{i}d")
        start += size
    nodes.append(helper.make_node("Sum", parts, ["acc"]))
    return _conv_session(nodes, inits, _ELEM[dtype], w.shape[1], TensorProto.DOUBLE, threads)
