"""Reading, checking and tidying ONNX models with the `onnx` library's own tools."""
from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from unified.core.errors import ModelError
from unified.core.paths import existing_file


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and check an .onnx file; every failure is a `ModelError` naming the file."""
    p = existing_file(path, "model", ModelError)
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"{p} is not a valid ONNX model (cannot parse it: {exc})") from exc
    return check_model(model, source=str(p))


def check_model(model: onnx.ModelProto, source: str = "<ModelProto>") -> onnx.ModelProto:
    """Run `onnx.checker` and shape inference; the graph needs at least one input."""
    if not isinstance(model, onnx.ModelProto):
        raise ModelError(f"{source}: expected an onnx.ModelProto, got {type(model).__name__}")
    if len(model.graph.node) == 0:
        raise ModelError(f"{source}: the ONNX graph has no nodes")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "validation failed"
        raise ModelError(f"{source} fails onnx.checker: {first_line}") from exc
    try:
        model = shape_inference.infer_shapes(model)
    except Exception as exc:
        raise ModelError(f"{source}: ONNX shape inference failed: {exc}") from exc
    inputs = graph_inputs(model)
    if not inputs:
        raise ModelError(f"{source}: the graph has no inputs")
    return model


def node_attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as plain Python values (strings decoded, repeated fields as lists)."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else (list(v) if isinstance(v, (list, tuple)) else v)
    return out


def output_channel_axis(node: onnx.NodeProto) -> int:
    """The weight axis that indexes output channels: Conv and Gemm(transB=1) store (out, in, ...);
    Gemm without transB and MatMul store (in, out)."""
    if node.op_type == "MatMul" or (node.op_type == "Gemm" and not node_attributes(node).get("transB", 0)):
        return 1
    return 0


def gemm_weight_rows(node: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """A weight with its output channels first: (out, in) for Gemm/MatMul, Conv unchanged."""
    return w.T if output_channel_axis(node) == 1 else w


def weight_rows(node: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """Weights as (output channels, inputs per output): the layout quantizers and losses use."""
    rows = gemm_weight_rows(node, w)
    return rows.reshape(rows.shape[0], -1)


def from_weight_rows(node: onnx.NodeProto, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of `weight_rows`: back to the initializer's own shape."""
    if output_channel_axis(node) == 1:
        return rows.T.reshape(shape)
    return rows.reshape(shape)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs (graph inputs that are not initializers, as older exporters list both)."""
    init = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in init]


def input_shape(model: onnx.ModelProto, index: int = 0) -> tuple[int | str, ...]:
    dims = graph_inputs(model)[index].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def input_signature(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """(name, rank) of every graph input, in graph order."""
    return [(i.name, len(i.type.tensor_type.shape.dim)) for i in graph_inputs(model)]


def fingerprint(model: onnx.ModelProto) -> str:
    """A stable hash of the serialized model (cache keys)."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn `Constant` nodes into initializers, then evaluate every node whose inputs are all constant.

    Exporters leave shape arithmetic (TF-style "same" padding: ConstantOfShape, Concat, Slice, ...)
    that ORT folds at session start but our integer engine would have to execute; folding it once
    with the ONNX reference evaluator leaves only the real network.
    """
    from onnx.reference import ReferenceEvaluator

    static_shapes = _static_shapes(model)
    graph = model.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    kept: list[onnx.NodeProto] = []
    graph_outputs = {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(_constant_value(node))
            continue
        if node.op_type == "Shape" and node.input[0] in static_shapes and not node.attribute:
            consts[node.output[0]] = np.array(static_shapes[node.input[0]], dtype=np.int64)
            continue
        if all((not name) or name in consts for name in node.input) and node.op_type not in ("RandomNormal", "RandomUniform"):
            if not any(o in graph_outputs for o in node.output):
                single = helper.make_graph(
                    [node], "fold",
                    [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(consts[n].dtype), consts[n].shape) for n in node.input if n],
                    [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output],
                )
                fold_model = helper.make_model(single, opset_imports=model.opset_import)
                results = ReferenceEvaluator(fold_model).run(None, {n: consts[n] for n in node.input if n})
                for name, value in zip(node.output, results):
                    consts[name] = np.asarray(value)
                continue
        kept.append(node)
    used = {name for node in kept for name in node.input} | graph_outputs
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in consts.items() if name in used)
    del graph.value_info[:]
    return model


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Tensors whose shape shape inference fixes completely (so a Shape of them is a constant)."""
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:
        return {}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = [d.dim_value for d in t.shape.dim]
    return shapes


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto:
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name in ("value_float", "value_int"):
            return numpy_helper.from_array(np.array(helper.get_attribute_value(attr)))
        if attr.name in ("value_floats", "value_ints"):
            return numpy_helper.from_array(np.array(helper.get_attribute_value(attr)))
    raise ModelError(f"Constant node {node.name!r} has no supported value attribute")
