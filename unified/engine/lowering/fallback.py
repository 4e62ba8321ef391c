"""Float fallback: a node the integer scheme cannot (or should not) express runs in float.

Its integer inputs are dequantized, the original ONNX node runs on them, and its outputs are
quantized with calibrated parameters, as RKNN-Toolkit2 runs unsupported ops on the CPU. The node
is kept as a one-node ONNX model; at run time it is the kernel "float" like any other kernel.
"""
from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from unified.engine.lowering.context import LoweringContext, node_key
from unified.engine.lowering.registry import FLOAT_FALLBACK, lowers


@lowers(FLOAT_FALLBACK)
def lower_float(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    inputs = [n for n in node.input if n and n not in ctx.inits]
    for n in inputs:
        ctx.q(n)
    graph = helper.make_graph(
        [node], f"fallback_{node.name}",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in inputs],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in node.output],
        [numpy_helper.from_array(ctx.inits[n], n) for n in node.input if n in ctx.inits],
    )
    name = node_key(node)
    ctx.fallback_models[name] = helper.make_model(graph, opset_imports=ctx.model.opset_import).SerializeToString()
    for out in node.output:
        ctx.tensors[out] = ctx.calibrated(out)
    ctx.emit("float", node, inputs, list(node.output), node.op_type + "(float)", {}, {})
