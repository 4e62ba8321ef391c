"""Reading an ONNX QDQ model (QuantizeLinear/DequantizeLinear around float ops) as a float model
plus the quantization parameters it carries.

This is how quantized models travel between tools: ONNX Runtime's `quantize_static` writes them,
PyTorch exports QAT models (fake-quant modules) as them, and unified's own `export_qdq` does. The
split gives back the float graph every backend understands and, per tensor, the scale, zero point
and dtype the QDQ model chose:

* activations: `x -> QuantizeLinear -> DequantizeLinear -> x'` becomes `x`, with x's params;
* stored weights: `w_q (initializer) -> DequantizeLinear` becomes the float initializer
  `(w_q - z) * s`, exactly on the grid, with its (possibly per-channel) params;
* fake-quantized float weights (QAT): `w -> Q -> DQ` becomes `DQ(Q(w))`, likewise on the grid.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from unified.core.errors import ModelError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class QdqParams:
    """Scale(s) and zero point(s) of one tensor; `axis` set for per-channel params."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str
    axis: int | None = None

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1


@dataclass
class ImportedQdq:
    float_model: onnx.ModelProto
    activations: dict[str, QdqParams] = field(default_factory=dict)
    weights: dict[str, QdqParams] = field(default_factory=dict)


def is_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def _params(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> QdqParams:
    if node.input[1] not in inits or (len(node.input) > 2 and node.input[2] and node.input[2] not in inits):
        raise ModelError(f"{node.op_type} node {node.name or node.output[0]!r}: scale and zero point must be constant")
    scale = np.asarray(inits[node.input[1]], np.float64)
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ModelError(f"{node.op_type} node {node.name or node.output[0]!r}: scale {scale.reshape(-1)[:4].tolist()} "
                         "must be finite and > 0")
    zero = np.asarray(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, np.uint8)
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), None)
    zero = zero.astype(np.int64)
    if scale.size > 1 and np.all(scale == scale.reshape(-1)[0]) and np.all(zero == zero.reshape(-1)[0]):
        scale, zero = scale.reshape(-1)[:1], zero.reshape(-1)[:1]  # the same params on every channel: per tensor
    return QdqParams(scale, zero, str(np.asarray(inits[node.input[2]]).dtype) if len(node.input) > 2 and node.input[2]
                     else "uint8", axis if scale.size > 1 else None)


def _dequantize(q: np.ndarray, p: QdqParams) -> np.ndarray:
    shape = [1] * q.ndim
    if p.per_channel:
        shape[p.axis % q.ndim] = -1
    return ((q.astype(np.float64) - p.zero_point.reshape(shape)) * p.scale.reshape(shape)).astype(np.float32)


def _quantize(w: np.ndarray, p: QdqParams) -> np.ndarray:
    shape = [1] * w.ndim
    if p.per_channel:
        shape[p.axis % w.ndim] = -1
    lo, hi = np.iinfo(p.dtype).min, np.iinfo(p.dtype).max
    return np.clip(np.rint(w / p.scale.reshape(shape)) + p.zero_point.reshape(shape), lo, hi)


def split_qdq(model: onnx.ModelProto) -> ImportedQdq:
    """The float model and the params a QDQ model carries (see the module docstring)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for node in [n for n in graph.node if n.op_type == "Constant" and len(n.attribute) == 1
                 and n.attribute[0].name == "value"]:  # exporters write scales and zero points as Constants
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)
    # the TorchScript exporter shares scale/zero-point constants through Identity nodes
    names = {t.name for t in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in names]:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(next(t for t in graph.initializer if t.name == node.input[0]))
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    result = ImportedQdq(out)
    renames: dict[str, str] = {}
    drop: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        p = _params(node, inits)
        source = node.input[0]
        quantize = producers.get(source)
        if source in inits:  # stored integer weights or biases
            new_inits.append(numpy_helper.from_array(_dequantize(inits[source], p), node.output[0]))
            if p.dtype in ("int8", "uint8"):
                result.weights[node.output[0]] = p
        elif quantize is not None and quantize.op_type == "QuantizeLinear":
            x = quantize.input[0]
            qp = _params(quantize, inits)
            if x in inits:  # fake-quantized float weights (QAT)
                on_grid = _dequantize(_quantize(inits[x].astype(np.float64), qp), qp)
                new_inits.append(numpy_helper.from_array(on_grid, node.output[0]))
                result.weights[node.output[0]] = qp
            elif node.output[0] in outputs:  # keep the output's name
                node.op_type, node.domain = "Identity", ""
                del node.input[1:]
                node.input[0] = x
                del node.attribute[:]
                result.activations[node.output[0]] = qp
                result.activations.setdefault(x, qp)
                drop.add(id(quantize))
                continue
            else:
                renames[node.output[0]] = x
                result.activations.setdefault(x, qp)
            drop.add(id(quantize))
        else:
            raise ModelError(f"DequantizeLinear node {node.name or node.output[0]!r} reads {source!r}, which is "
                             "neither an initializer nor a QuantizeLinear output")
        drop.add(id(node))
    kept = [n for n in graph.node if id(n) not in drop]
    for node in kept:
        for i, name in enumerate(node.input):
            while name in renames:
                name = renames[name]
            node.input[i] = name
    if any(n.op_type in QDQ_OPS for n in kept):
        left = next(n for n in kept if n.op_type in QDQ_OPS)
        raise ModelError(f"{left.op_type} node {left.name or left.output[0]!r} is not part of a Q/DQ pair unified "
                         "can read")
    del graph.node[:]
    graph.node.extend(kept)
    replaced = {t.name for t in new_inits}
    used = {i for n in kept for i in n.input}
    keep_inits = [t for t in graph.initializer if t.name in used and t.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits + [t for t in new_inits if t.name in used])
    del graph.value_info[:]
    try:
        onnx.checker.check_model(out)
        result.float_model = onnx.shape_inference.infer_shapes(out)
    except Exception as exc:
        raise ModelError(f"the float model inside the QDQ model does not check: {str(exc).splitlines()[0][:200]}") from exc
    return result
