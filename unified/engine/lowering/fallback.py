"""Float fallback: a node the integer scheme cannot (or should not) express runs in float.

As RKNN-Toolkit2 runs unsupported ops on the CPU: integer inputs are dequantized, the original
ONNX node runs on them, and each output is quantized with calibrated parameters only where an
integer node (or the graph output) reads it; outputs read only by other float nodes stay float,
so a chain of them is one float island and shape-only tensors need no calibration. The node is
kept as a one-node ONNX model; at run time it is the kernel "float" like any other kernel.
"""
from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from unified.engine.lowering.context import LoweringContext, node_key
from unified.engine.lowering.registry import FLOAT_FALLBACK, lowers


@lowers(FLOAT_FALLBACK)
def lower_float(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    inputs = [n for n in node.input if n and n not in ctx.inits]
    graph = helper.make_graph(
        [node], f"fallback_{node.name}",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in inputs],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in node.output],
        [numpy_helper.from_array(ctx.inits[n], n) for n in node.input if n in ctx.inits],
    )
    name = node_key(node)
    ctx.fallback_models[name] = helper.make_model(graph, opset_imports=ctx.model.opset_import).SerializeToString()
    ctx.float_produced.update(o for o in node.output if o)
    for out in node.output:
        if out in ctx.outputs:
            ctx.tensors[out] = ctx.calibrated(out)
    ctx.emit("float", node, inputs, list(node.output), node.op_type + "(float)", {}, {})
