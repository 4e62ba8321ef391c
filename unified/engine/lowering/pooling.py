"""Average pooling (global, ReduceMean over H and W, windowed) and max pooling.

Averages requantize the integer window sum with a multiplier that folds the divisor in (one per
output position for windowed pools, since padded borders count fewer pixels). Max pooling keeps
its input's params: the max of integers is exact.
"""
from __future__ import annotations

import numpy as np
import onnx

from unified.core.errors import UnsupportedOperatorError
from unified.engine.kernels import pool_output_size
from unified.engine.lowering.context import LoweringContext, multiplier, node_key
from unified.engine.lowering.registry import lowers
from unified.graph.onnx_model import node_attributes


def _spatial_shape(ctx: LoweringContext, node: onnx.NodeProto) -> list[int]:
    shape = ctx.shapes.get(node.input[0])
    if not shape or min(shape[2:]) <= 0:
        raise UnsupportedOperatorError(f"{node.op_type} node {node_key(node)!r} needs a known spatial input shape")
    return shape


@lowers("GlobalAveragePool", "ReduceMean")
def lower_global_average(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    a = node_attributes(node)
    x = node.input[0]
    tx = ctx.q(x)
    shape = ctx.shapes.get(x)
    axes = [2, 3]
    if node.op_type == "ReduceMean":
        given = a.get("axes")
        if given is None and len(node.input) > 1:
            given = ctx.constant_ints(node.input[1])
        if not shape:
            raise UnsupportedOperatorError(f"ReduceMean node {node_key(node)!r} needs a known input shape")
        axes = sorted(ax % len(shape) for ax in (given if given is not None else range(len(shape))))
        if 0 in axes:
            raise UnsupportedOperatorError(f"ReduceMean node {node_key(node)!r}: reducing over the batch is not supported")
    if not shape or any(shape[ax] <= 0 for ax in axes):
        raise UnsupportedOperatorError(f"{node.op_type} node {node_key(node)!r} needs known sizes on the reduced axes")
    to = ctx.calibrated(node.output[0])
    count = int(np.prod([shape[ax] for ax in axes]))
    m, s = multiplier(tx.scale / (count * to.scale))
    keep = node.op_type == "GlobalAveragePool" or bool(a.get("keepdims", 1))
    ctx.emit("global_avg", node, [x], [node.output[0]], node.op_type,
             {"zx": tx.zero_point, "zo": to.zero_point, "keepdims": keep, "axes": axes}, {"mult": m, "shift": s}, to)


def _window_counts(h: int, w: int, kernel: list[int], strides: list[int], pads: list[int],
                   out_hw: tuple[int, int], count_include_pad: bool) -> np.ndarray:
    """How many pixels each output position of an AveragePool divides by."""
    oh, ow = out_hw
    if count_include_pad:
        area = np.pad(np.ones((h + pads[0] + pads[2], w + pads[1] + pads[3])), ((0, kernel[0]), (0, kernel[1])))
    else:
        area = np.pad(np.ones((h, w)), ((pads[0], pads[2] + kernel[0]), (pads[1], pads[3] + kernel[1])))
    counts = np.zeros((oh, ow))
    for i in range(oh):
        for j in range(ow):
            y, x0 = i * strides[0], j * strides[1]
            counts[i, j] = area[y:y + kernel[0], x0:x0 + kernel[1]].sum()
    return counts


@lowers("AveragePool")
def lower_average_pool(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    a = node_attributes(node)
    x = node.input[0]
    tx = ctx.q(x)
    shape = _spatial_shape(ctx, node)
    to = ctx.calibrated(node.output[0])
    kernel, strides = a["kernel_shape"], a.get("strides", [1, 1])
    pads = a.get("pads", [0, 0, 0, 0])
    ceil = a.get("ceil_mode", 0)
    h, w = shape[2], shape[3]
    oh = pool_output_size(h, kernel[0], strides[0], pads[0], pads[2], ceil)
    ow = pool_output_size(w, kernel[1], strides[1], pads[1], pads[3], ceil)
    counts = _window_counts(h, w, kernel, strides, pads, (oh, ow), bool(a.get("count_include_pad", 0)))
    m, s = multiplier(tx.scale / (counts.reshape(-1) * to.scale))
    ctx.emit("avgpool", node, [x], [node.output[0]], "AveragePool",
             {"kernel": kernel, "strides": strides, "pads": pads, "out_hw": [oh, ow],
              "zx": tx.zero_point, "zo": to.zero_point, "ceil_mode": ceil,
              "count_include_pad": a.get("count_include_pad", 0)},
             {"mult": m.reshape(oh, ow), "shift": s.reshape(oh, ow)}, to)


@lowers("MaxPool")
def lower_max_pool(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    a = node_attributes(node)
    tx = ctx.q(node.input[0])
    attrs = {"kernel": a["kernel_shape"], "strides": a.get("strides", [1, 1]), "pads": a.get("pads", [0, 0, 0, 0]),
             "ceil_mode": a.get("ceil_mode", 0), "dilations": a.get("dilations", [1, 1]), "pad_value": ctx.scheme.qmin}
    ctx.emit("maxpool", node, [node.input[0]], list(node.output), "MaxPool", attrs, {}, tx)
