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
