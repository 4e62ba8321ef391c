"""Conv accumulation on ONNX Runtime's float kernels, exact by construction.

For a conv whose lowering proved every partial sum an integer below 2^24 (`exact == "float32"`),
ORT's float32 Conv on the zero-point-shifted integer input and weights computes the very same
integer accumulator as the numpy reference (no addition or fused multiply-add of integers below
2^24 rounds), about ten times faster. Each such layer gets a tiny one-node session:
int8/uint8 x -> Cast -> Sub(zx) -> Conv(w - zw) -> float32 accumulator (bias added afterwards).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from unified.engine.integer_graph import IntNode
from unified.graph.ort_session import make_session

_ELEM = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}


def conv_accumulator_session(node: IntNode, dtype: str, threads: int | None = None) -> ort.InferenceSession:
    """int8/uint8 input -> exact float32 accumulator (without bias).

    (Fusing bias, requantization and clamping into the session too was measured slower: ORT's
    float64 element-wise kernels lose to numpy's here.)"""
    a = node.attrs
    w = node.arrays["w"].astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["xf", "zx"], ["xs"]),
        helper.make_node("Conv", ["xs", "w"], ["acc"], strides=a["strides"], pads=a["pads"],
                         dilations=a["dilations"], group=a["group"], kernel_shape=a["kernel"]),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(a["zx"]), "zx")]
    output = helper.make_tensor_value_info("acc", TensorProto.FLOAT, None)
    graph = helper.make_graph(
        nodes, "conv_acc",
        [helper.make_tensor_value_info("x", _ELEM[dtype], ["N", w.shape[1] * a["group"], "H", "W"])],
        [output], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return make_session(model.SerializeToString(), threads, shared_arena=True)


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
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["xf", "zx"], ["xs"])]
    inits = [numpy_helper.from_array(np.float32(a["zx"]), "zx")]
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
    graph = helper.make_graph(
        nodes, "conv_acc_split",
        [helper.make_tensor_value_info("x", _ELEM[dtype], ["N", w.shape[1], "H", "W"])],
        [helper.make_tensor_value_info("acc", TensorProto.DOUBLE, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return make_session(model.SerializeToString(), threads, shared_arena=True)
