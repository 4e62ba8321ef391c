"""Float graph preparation before quantization, ONNX in and ONNX out.

What NPU toolkits do first: fold constants, drop inference no-ops (Identity, Dropout), fold
BatchNormalization into the Conv before it, fold zero Pads into the Conv after them, and turn
MatMul-with-constant into Gemm. The result is still a valid float ONNX model, so ONNX Runtime can
run it for calibration and the float reference stays exact.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from unified.graph.onnx_model import constants_to_initializers


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                users[name].append(node)
    return users


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for out in graph.output:
        if out.name == old:
            out.name = new


def _drop_noops(model: onnx.ModelProto) -> None:
    graph = model.graph
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        if node.op_type in ("Identity", "Dropout") and node.output[0] not in outputs:
            graph.node.remove(node)
            _rename_input(graph, node.output[0], node.input[0])


def _fold_batchnorm(model: onnx.ModelProto) -> None:
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    users = _consumers(graph)
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
        conv = producers.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(users[conv.output[0]]) != 1 or conv.input[1] not in inits:
            continue
        if not all(name in inits for name in bn.input[1:5]):
            continue
        scale, bias, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        eps = _attr(bn, "epsilon", 1e-5)
        factor = scale / np.sqrt(var + eps)
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0])
        w_name, b_name = conv.input[1] + ".bnfolded", (conv.name or conv.output[0]) + ".bnfolded_bias"
        graph.initializer.append(numpy_helper.from_array((w * factor.reshape(-1, 1, 1, 1)).astype(np.float32), w_name))
        graph.initializer.append(numpy_helper.from_array(((b - mean) * factor + bias).astype(np.float32), b_name))
        inits[w_name], inits[b_name] = graph.initializer[-2], graph.initializer[-1]
        conv.input[1] = w_name
        if len(conv.input) > 2:
            conv.input[2] = b_name
        else:
            conv.input.append(b_name)
        graph.node.remove(bn)
        _rename_input(graph, bn.output[0], conv.output[0])


def _fold_pads(model: onnx.ModelProto) -> None:
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users = _consumers(graph)
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        mode = _attr(pad, "mode", b"constant")
        if (mode if isinstance(mode, str) else mode.decode()) != "constant":
            continue
        if len(pad.input) < 2 or pad.input[1] not in inits:
            continue
        if len(pad.input) > 2 and pad.input[2]:
            if pad.input[2] not in inits or float(numpy_helper.to_array(inits[pad.input[2]]).reshape(-1)[0]) != 0.0:
                continue
        if len(pad.input) > 3 and pad.input[3]:
            continue  # axes input: leave it alone
        pads = numpy_helper.to_array(inits[pad.input[1]]).astype(int).tolist()
        rank = len(pads) // 2
        if rank != 4 or any(pads[i] or pads[i + rank] for i in (0, 1)) or min(pads) < 0:
            continue
        convs = users[pad.output[0]]
        if not convs or any(c.op_type != "Conv" or c.input[0] != pad.output[0] for c in convs):
            continue
        for conv in convs:
            old = _attr(conv, "pads", [0, 0, 0, 0])
            auto_pad = _attr(conv, "auto_pad", b"NOTSET")
            if (auto_pad if isinstance(auto_pad, str) else auto_pad.decode()) != "NOTSET":
                break
            _set_attr(conv, "pads", [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]])
            conv.input[0] = pad.input[0]
        else:
            graph.node.remove(pad)


def _matmul_to_gemm(model: onnx.ModelProto) -> None:
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    value_rank = {}
    for vi in list(graph.value_info) + list(graph.input):
        value_rank[vi.name] = len(vi.type.tensor_type.shape.dim)
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and value_rank.get(node.input[0]) == 2:
            w = numpy_helper.to_array(inits[node.input[1]])
            if w.ndim == 2:
                node.op_type = "Gemm"


def _constant_arithmetic_to_add_mul(model: onnx.ModelProto) -> None:
    """x - c -> x + (-c) and x / c -> x * (1/c), so the integer Add and Mul cover them (normalization
    layers written as Sub/Div, as old exports do)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type not in ("Sub", "Div") or len(node.input) != 2:
            continue
        x, c = node.input
        if c not in inits or x in inits:
            continue
        value = numpy_helper.to_array(inits[c])
        if value.dtype.kind != "f" or (node.op_type == "Div" and not np.all(value != 0)):
            continue
        name = f"{c}__{'neg' if node.op_type == 'Sub' else 'inv'}"
        if name not in inits:
            replaced = numpy_helper.from_array((-value if node.op_type == "Sub" else 1 / value).astype(value.dtype), name)
            graph.initializer.append(replaced)
            inits[name] = replaced
        node.op_type = "Add" if node.op_type == "Sub" else "Mul"
        node.input[1] = name


def prepare(model: onnx.ModelProto, fold_pads: bool = True) -> onnx.ModelProto:
    """A prepared copy of `model`: same function, fewer and simpler nodes. `fold_pads=False` keeps
    Pad nodes as they are (a toolkit whose runtime pads on its own, e.g. Tengine's raw-byte Pad)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out = constants_to_initializers(out)
    _drop_noops(out)
    _fold_batchnorm(out)
    if fold_pads:
        _fold_pads(out)
    _constant_arithmetic_to_add_mul(out)
    out = onnx.shape_inference.infer_shapes(out)
    _matmul_to_gemm(out)
    used = {n for node in out.graph.node for n in node.input}
    keep = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    del out.graph.value_info[:]
    out = onnx.shape_inference.infer_shapes(out)
    onnx.checker.check_model(out)
    return out
