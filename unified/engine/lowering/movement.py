"""Data movement and standalone clamps: outputs keep the input's scale and zero point.

Reshape, Flatten, Transpose, (Un)Squeeze, Split, Slice and constant Pad move integers without
changing them; a Relu or Clip that could not be fused into its producer becomes an integer clamp.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from unified.core.errors import UnsupportedOperatorError
from unified.engine.lowering.context import LoweringContext, node_key
from unified.engine.lowering.registry import lowers
from unified.graph.onnx_model import node_attributes


def _keep_params(ctx: LoweringContext, node: onnx.NodeProto, kernel: str, attrs: dict[str, Any]) -> None:
    tx = ctx.q(node.input[0])
    ctx.emit(kernel, node, [node.input[0]], list(node.output), node.op_type, attrs, {}, tx)


def _optional_ints(ctx: LoweringContext, node: onnx.NodeProto, index: int) -> list[int] | None:
    """An optional constant int operand (opset >= 13 moved axes/split from attributes to inputs)."""
    if len(node.input) > index and node.input[index]:
        return list(ctx.require_constant(node, index, f"input {index}").astype(np.int64).tolist())
    return None


@lowers("Relu", "Clip")
def lower_clamp(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    qlo, qhi = ctx.clamp_q(ctx.q(node.input[0]), ctx.clip_bounds(node))
    _keep_params(ctx, node, "clamp", {"lo": qlo, "hi": qhi})


@lowers("Reshape")
def lower_reshape(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    shape = ctx.require_constant(node, 1, "the target shape").astype(int).tolist()
    _keep_params(ctx, node, "reshape", {"shape": shape, "allowzero": node_attributes(node).get("allowzero", 0)})


@lowers("Flatten")
def lower_flatten(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _keep_params(ctx, node, "flatten", {"axis": node_attributes(node).get("axis", 1)})


@lowers("Transpose")
def lower_transpose(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _keep_params(ctx, node, "transpose", {"perm": node_attributes(node)["perm"]})


@lowers("Squeeze", "Unsqueeze")
def lower_squeeze(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    axes = node_attributes(node).get("axes") or _optional_ints(ctx, node, 1)
    _keep_params(ctx, node, node.op_type.lower(), {"axes": axes})


@lowers("Split")
def lower_split(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    a = node_attributes(node)
    split = a.get("split") or _optional_ints(ctx, node, 1)
    _keep_params(ctx, node, "split", {"axis": a.get("axis", 0), "split": split, "num_outputs": len(node.output)})


@lowers("Slice")
def lower_slice(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if any(n and n not in ctx.inits for n in node.input[1:]) or len(node.input) < 3:
        raise UnsupportedOperatorError(f"Slice node {node_key(node)!r}: starts/ends/axes/steps must be constant")
    starts, ends = _optional_ints(ctx, node, 1), _optional_ints(ctx, node, 2)
    assert starts is not None and ends is not None
    axes = _optional_ints(ctx, node, 3) or list(range(len(starts)))
    steps = _optional_ints(ctx, node, 4) or [1] * len(starts)
    _keep_params(ctx, node, "slice", {"starts": starts, "ends": ends, "axes": axes, "steps": steps})


#: (coordinate_transformation_mode, nearest_mode) pairs under which nearest Resize by an integer
#: factor s maps output o to input o // s (so it is np.repeat): "asymmetric" floors o / s;
#: "half_pixel" rounds (o + 0.5) / s - 0.5, which is never a tie for integer s
REPEAT_MODES = {("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"), ("half_pixel", "round_prefer_ceil"),
                ("pytorch_half_pixel", "round_prefer_floor"), ("pytorch_half_pixel", "round_prefer_ceil")}


@lowers("Resize")
def lower_resize(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Nearest upsampling by integer factors on H and W: every output is an input value, so the
    output keeps the input's params (bilinear and fractional scales run in float)."""
    a = node_attributes(node)
    mode = a.get("mode", "nearest")
    coords = a.get("coordinate_transformation_mode", "half_pixel")
    nearest = a.get("nearest_mode", "round_prefer_floor")
    if mode != "nearest" or (coords, nearest) not in REPEAT_MODES:
        raise UnsupportedOperatorError(f"Resize node {node_key(node)!r}: only nearest upsampling by integer "
                                       f"factors is integer (got mode={mode}, {coords}/{nearest})")
    shape = ctx.shapes.get(node.input[0])
    scales = None
    if len(node.input) > 2 and node.input[2] and node.input[2] in ctx.inits and ctx.inits[node.input[2]].size:
        scales = [float(v) for v in ctx.inits[node.input[2]]]
    elif len(node.input) > 3 and node.input[3] in ctx.inits and shape and min(shape) > 0:
        sizes = ctx.inits[node.input[3]].astype(int).tolist()
        scales = [o / i for o, i in zip(sizes, shape)]
    if (scales is None or len(scales) != 4 or scales[:2] != [1.0, 1.0]
            or any(s < 1 or s != int(s) for s in scales[2:])):
        raise UnsupportedOperatorError(f"Resize node {node_key(node)!r}: scales {scales} are not integer factors "
                                       "on H and W")
    _keep_params(ctx, node, "upsample_nearest", {"factors": [int(scales[2]), int(scales[3])],
                                                 "onnx_attrs": {"mode": mode, "coordinate_transformation_mode": coords,
                                                                "nearest_mode": nearest}})


@lowers("Gather")
def lower_gather(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """Gather with constant indices picks values: the output keeps the input's params."""
    indices = ctx.require_constant(node, 1, "indices").astype(np.int64)
    tx = ctx.q(node.input[0])
    ctx.emit("gather", node, [node.input[0]], list(node.output), "Gather",
             {"axis": node_attributes(node).get("axis", 0)}, {"indices": indices}, tx)


@lowers("Pad")
def lower_pad(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    mode = node_attributes(node).get("mode", "constant")
    if mode != "constant":
        raise UnsupportedOperatorError(f"Pad node {node_key(node)!r}: mode {mode!r} is not supported")
    pads = ctx.require_constant(node, 1, "pads").astype(int).tolist()
    value = float(ctx.inits[node.input[2]].reshape(-1)[0]) if len(node.input) > 2 and node.input[2] else 0.0
    tx = ctx.q(node.input[0])
    if ctx.scheme.raw_pad_value:  # bytes copied, the constant cast as is, the output's own params
        qv = int(np.clip(np.trunc(value), ctx.scheme.qmin, ctx.scheme.qmax))
        ctx.emit("pad", node, [node.input[0]], list(node.output), node.op_type, {"pads": pads, "value": qv}, {},
                 ctx.calibrated(node.output[0]))
        return
    qv = int(np.clip(ctx.scheme.rounding.round(value / tx.scale) + tx.zero_point, ctx.scheme.qmin, ctx.scheme.qmax))
    _keep_params(ctx, node, "pad", {"pads": pads, "value": qv})
