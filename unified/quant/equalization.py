"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", section 4.1) that keeps the float model exact.

For two Conv layers in a row, scaling output channel c of the first by 1/s_c and input channel c
of the second by s_c leaves the network unchanged when whatever sits between them is positively
homogeneous: nothing, or ReLU. With s_c = sqrt(r1_c / r2_c) (r = the channel's weight range) both
layers' per-channel ranges become equal, which helps per-tensor weight quantization. ReLU6 (Clip)
is *not* homogeneous: the paper replaces it by ReLU, which breaks networks whose channels exceed 6
(about 30% of EfficientNet-Lite0's channels entering ReLU6 do on real photos), so such pairs are
left alone and the float model stays exact.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from unified.graph.onnx_model import node_attributes


def equalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of a prepared model with eligible Conv pairs equalized; returns (model, pairs changed)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    outputs = {o.name for o in graph.output}
    changed = 0
    for first in graph.node:
        if first.op_type != "Conv" or first.input[1] not in inits or first.output[0] in outputs:
            continue
        chain = users[first.output[0]]
        if len(chain) != 1:
            continue
        middle = chain[0]
        if middle.op_type == "Relu":
            if middle.output[0] in outputs or len(users[middle.output[0]]) != 1:
                continue
            second = users[middle.output[0]][0]
        else:
            second = middle
        if second.op_type != "Conv" or second.input[1] not in inits:
            continue
        w1 = numpy_helper.to_array(inits[first.input[1]]).astype(np.float64)
        w2 = numpy_helper.to_array(inits[second.input[1]]).astype(np.float64)
        c = w1.shape[0]
        group2 = int(node_attributes(second).get("group", 1))
        r1 = np.abs(w1.reshape(c, -1)).max(axis=1)
        if group2 == 1 and w2.shape[1] == c:
            r2 = np.abs(w2.transpose(1, 0, 2, 3).reshape(c, -1)).max(axis=1)
        elif group2 == c and w2.shape[0] == c and w2.shape[1] == 1:
            r2 = np.abs(w2.reshape(c, -1)).max(axis=1)
        else:
            continue
        ok = (r1 > 0) & (r2 > 0)
        s = np.where(ok, np.sqrt(np.where(ok, r1 / np.where(r2 > 0, r2, 1), 1)), 1.0)
        w1 /= s.reshape(-1, 1, 1, 1)
        if group2 == 1:
            w2 *= s.reshape(1, -1, 1, 1)
        else:
            w2 *= s.reshape(-1, 1, 1, 1)
        if len(first.input) > 2 and first.input[2] in inits:
            b1 = numpy_helper.to_array(inits[first.input[2]]).astype(np.float64) / s
            inits[first.input[2]].CopyFrom(numpy_helper.from_array(b1.astype(np.float32), first.input[2]))
        inits[first.input[1]].CopyFrom(numpy_helper.from_array(w1.astype(np.float32), first.input[1]))
        inits[second.input[1]].CopyFrom(numpy_helper.from_array(w2.astype(np.float32), second.input[1]))
        changed += 1
    return out, changed
