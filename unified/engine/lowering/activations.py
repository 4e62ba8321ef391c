"""Non-linear activations as 256-entry lookup tables, and the integer Softmax.

Sigmoid, Tanh, HardSigmoid, HardSwish, LeakyRelu and the other one-input functions map each of
the 256 input levels through the float function once, at build time, as NPUs do; outputs with a
fixed range (Sigmoid [0, 1], Tanh [-1, 1]) take it instead of calibration. Softmax (on any axis)
uses an exp table with 20 fractional bits and the scheme's fixed output parameters; a Softmax inside
the graph (attention) can take its calibrated range instead (`RangeSource.calibrated_softmax`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from unified.core.errors import UnsupportedOperatorError
from unified.core.quant_params import QuantParams
from unified.engine.lowering.context import LoweringContext, node_key
from unified.engine.lowering.registry import lowers
from unified.graph.onnx_model import node_attributes

LUT_FUNCTIONS: dict[str, Callable[[np.ndarray, dict], np.ndarray]] = {
    "Sigmoid": lambda x, a: 1 / (1 + np.exp(-x)),
    "Tanh": lambda x, a: np.tanh(x),
    "HardSigmoid": lambda x, a: np.clip(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda x, a: x * np.clip(x / 6 + 0.5, 0, 1),
    "LeakyRelu": lambda x, a: np.where(x >= 0, x, a.get("alpha", 0.01) * x),
}
#: other element-wise functions of one input, defined for every real: their table is computed by
#: ONNX's own reference evaluator at build time (so each means exactly what ONNX says)
REFERENCE_UNARY = ("Erf", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Gelu", "Mish", "ThresholdedRelu",
                   "Abs", "Neg", "Exp", "Sin", "Cos", "Atan", "Sinh", "Cosh", "Asinh")
FIXED_RANGES = {"Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0)}
EXP_FRACTION_BITS = 20


def reference_values(ctx: LoweringContext, node: onnx.NodeProto, x: np.ndarray) -> np.ndarray:
    """`node`'s op applied to `x` by onnx.reference (same attributes, same opset as the model)."""
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    single = helper.make_node(node.op_type, ["x"], ["y"], domain=node.domain)
    single.attribute.extend(node.attribute)
    graph = helper.make_graph([single], "lut", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(x)])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [len(x)])])
    model = helper.make_model(graph, opset_imports=ctx.model.opset_import)
    return np.asarray(ReferenceEvaluator(model).run(None, {"x": x.astype(np.float32)})[0], np.float64)


@lowers(*LUT_FUNCTIONS, *REFERENCE_UNARY)
def lower_lookup_table(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    x = node.input[0]
    tx = ctx.q(x)
    fixed = FIXED_RANGES.get(node.op_type)
    given = node.output[0] in ctx.given or ctx.ranges.activation is None
    to = ctx.params_from_range(*fixed, name=node.output[0]) if fixed and not given else ctx.calibrated(node.output[0])
    levels = np.arange(ctx.scheme.qmin, ctx.scheme.qmax + 1)
    x_levels = (levels - tx.zero_point) * tx.scale
    if node.op_type in LUT_FUNCTIONS:
        y = LUT_FUNCTIONS[node.op_type](x_levels, node_attributes(node))
    else:
        y = reference_values(ctx, node, x_levels)
    if not np.isfinite(y).all():
        raise UnsupportedOperatorError(f"{node.op_type} node {node_key(node)!r}: not finite on the input's range")
    table = np.clip(ctx.scheme.rounding.round(y / to.scale) + to.zero_point, ctx.scheme.qmin, ctx.scheme.qmax)
    ctx.emit("lut", node, [x], [node.output[0]], node.op_type,
             {"offset": -ctx.scheme.qmin, "onnx_attrs": node_attributes(node)}, {"table": table.astype(np.int64)}, to)


@lowers("PRelu")
def lower_prelu(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """PRelu with a constant slope (one per channel, or one in all): a table per channel."""
    slope = ctx.require_constant(node, 1, "the slope").astype(np.float64)
    x = node.input[0]
    tx = ctx.q(x)
    shape = ctx.shapes.get(x) or []
    channels = shape[1] if len(shape) > 1 and shape[1] > 0 else 0
    flat = slope.reshape(-1)
    per_channel_shape = (slope.ndim == len(shape) - 1 and slope.shape[0] == channels
                         and all(d == 1 for d in slope.shape[1:]))
    if not (flat.size == 1 or (channels and flat.size == channels and per_channel_shape)):
        raise UnsupportedOperatorError(f"PRelu node {node_key(node)!r}: only a scalar or per-channel slope is integer")
    per_channel = np.broadcast_to(flat, (channels or 1,)) if flat.size == 1 else flat
    to = ctx.calibrated(node.output[0])
    levels = np.arange(ctx.scheme.qmin, ctx.scheme.qmax + 1)
    xv = (levels - tx.zero_point) * tx.scale
    y = np.where(xv[None, :] >= 0, xv[None, :], per_channel[:, None] * xv[None, :])
    tables = np.clip(ctx.scheme.rounding.round(y / to.scale) + to.zero_point, ctx.scheme.qmin, ctx.scheme.qmax)
    ctx.emit("channel_lut", node, [x], [node.output[0]], "PRelu",
             {"offset": -ctx.scheme.qmin, "slope_shape": list(slope.shape)},
             {"tables": tables.astype(np.int64), "slope": slope.astype(np.float32)}, to)


def softmax_output_params(ctx: LoweringContext, name: str) -> QuantParams:
    """The scheme's fixed [0, 1] parameters, or for an internal Softmax with calibrated ranges on,
    [0, calibrated max]: attention over T tokens gives probabilities near 1/T, which a fixed 1/255
    step rounds to zero (a 784-token ViT loses its attention output entirely: 0.2 dB SQNR)."""
    fixed = ctx.scheme.softmax_output()
    if not ctx.ranges.calibrated_softmax or ctx.ranges.activation is None or name in ctx.outputs:
        return fixed  # a graph output keeps [0, 1]: clipping the probabilities an application reads could tie them
    _, hi = ctx.ranges.activation(name)
    return ctx.params_from_range(0.0, min(float(hi), 1.0), name=name)


@lowers("Softmax")
def lower_softmax(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    # (the front end raised the opset to >= 13, where Softmax normalizes along one axis, as the kernel does)
    x = node.input[0]
    tx = ctx.q(x)
    to = ctx.given.get(node.output[0]) or softmax_output_params(ctx, node.output[0])
    d = np.arange(ctx.scheme.qmax - ctx.scheme.qmin + 1)
    exp_table = np.round(np.exp(-d * tx.scale) * (1 << EXP_FRACTION_BITS)).astype(np.int64)
    inv_out = int(round((1 << 16) / to.scale))
    ctx.emit("softmax", node, [x], [node.output[0]], "Softmax",
             {"axis": node_attributes(node).get("axis", -1), "zo": to.zero_point, "inv_out_q16": inv_out},
             {"exp_table": exp_table}, to)
