"""Conv, Gemm and MatMul with constant weights: integer GEMMs with int32 bias and fused clamps.

acc = sum((x - zx) * (w - zw)) + bias at scale s_in * s_w, requantized to the output with one
fixed-point multiplier per output channel. A following Relu/Clip is fused as clamp bounds.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from unified.core.errors import UnsupportedOperatorError
from unified.engine.fixed_point import float64_carrier_exact
from unified.engine.lowering.context import LoweringContext, multiplier, node_key
from unified.engine.lowering.registry import lowers
from unified.graph.onnx_model import gemm_weight_rows, node_attributes


@lowers("Conv", "Gemm", "MatMul")
def lower_weighted(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] not in ctx.inits:
        lower_activation_matmul(ctx, node)
        return
    if len(node.input) < 2 or node.input[1] not in ctx.inits:
        raise UnsupportedOperatorError(f"{node.op_type} node {node_key(node)!r}: weights must be constant")
    a = node_attributes(node)
    w = ctx.inits[node.input[1]].astype(np.float64)
    bias = ctx.inits[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else None
    if node.op_type == "Gemm":
        if a.get("transA", 0):
            raise UnsupportedOperatorError(f"Gemm node {node_key(node)!r}: transA=1 is not supported")
        w = gemm_weight_rows(node, w) * a.get("alpha", 1.0)
        if bias is not None:
            bias = bias * a.get("beta", 1.0)
    elif node.op_type == "MatMul":
        w = gemm_weight_rows(node, w)
    if node.op_type == "Conv":
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
            raise UnsupportedOperatorError(f"Conv node {node_key(node)!r}: auto_pad={a['auto_pad']} is not supported")
        conv_attrs = dict(strides=a.get("strides", [1, 1]), pads=a.get("pads", [0, 0, 0, 0]),
                          dilations=a.get("dilations", [1, 1]), group=a.get("group", 1), kernel=list(w.shape[2:]))
        _emit_weighted(ctx, node, w, bias, "conv", conv_attrs)
    else:
        _emit_weighted(ctx, node, w, bias, "gemm", {})


@lowers("ConvTranspose")
def lower_conv_transpose(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """2-D transposed convolution, one group: the same integer accumulation and requantization as
    Conv, with the weights' output channels (axis 1) quantized per channel."""
    a = node_attributes(node)
    if len(node.input) < 2 or node.input[1] not in ctx.inits:
        raise UnsupportedOperatorError(f"ConvTranspose node {node_key(node)!r}: weights must be constant")
    w = ctx.inits[node.input[1]].astype(np.float64)
    if w.ndim != 4 or a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])) \
            or a.get("auto_pad", "NOTSET") not in ("NOTSET", "") or "output_shape" in a:
        raise UnsupportedOperatorError(f"ConvTranspose node {node_key(node)!r}: only 2-D, one group, no dilation, "
                                       "explicit pads is integer")
    bias = ctx.inits[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else None
    attrs = dict(strides=a.get("strides", [1, 1]), pads=a.get("pads", [0, 0, 0, 0]),
                 output_padding=a.get("output_padding", [0, 0]), kernel=list(w.shape[2:]))
    # (C_in, C_out, kh, kw) -> rows by output channel (C_out, C_in, kh, kw)
    _emit_weighted(ctx, node, np.ascontiguousarray(w.transpose(1, 0, 2, 3)), bias, "conv_transpose", attrs)


def _emit_weighted(ctx: LoweringContext, node: onnx.NodeProto, w: np.ndarray, bias: np.ndarray | None,
                   op: str, op_attrs: dict[str, Any]) -> None:
    """Quantize `w` (output channels first) and its bias, choose the output params (a following
    Relu/Clip fused), prove which exact carriers the executor may use, and emit the node."""
    x = node.input[0]
    tx = ctx.q(x)
    act = ctx.fusable_activation(node)
    out_name = act.output[0] if act is not None else node.output[0]
    bounds = ctx.clip_bounds(act)
    to = ctx.output_params(out_name, bounds)
    wq, sw, zw = ctx.quantized_weights(w, bias, tx.scale, node.input[1])
    w_shifted = (wq - zw.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.int16)
    bias_scale = ctx.scheme.bias_scale(tx.scale, sw)
    bq = np.zeros(w.shape[0], np.int64) if bias is None else np.clip(
        ctx.scheme.rounding.round(bias / bias_scale), -(2**31), 2**31 - 1).astype(np.int64)
    mult, shift = multiplier(bias_scale / to.scale)
    qlo, qhi = ctx.clamp_q(to, bounds)
    xmax = max(ctx.scheme.qmax - tx.zero_point, tx.zero_point - ctx.scheme.qmin)
    attrs: dict[str, Any] = {"zx": tx.zero_point, "zo": to.zero_point, "act_min": qlo, "act_max": qhi,
                             "exact": ctx.exact_dtype(w_shifted, tx.zero_point),
                             # every |acc| * m < 2^53: float64 computes the requantization exactly
                             "requant_f64": float64_carrier_exact(w_shifted, bq, mult, xmax),
                             "preact": node.output[0]}
    attrs.update(op_attrs)
    attrs["input_rank"] = len(ctx.shapes.get(x) or [])
    source = node.op_type + (f"+{act.op_type}" if act is not None else "")
    arrays = {"w": w_shifted, "bias": bq, "mult": mult, "shift": shift,
              "w_zero_point": zw.astype(np.int64), "w_scale": sw.astype(np.float64)}
    ctx.emit(op, node, [x], [out_name], source, attrs, arrays, to)
    ctx.fuse(act)




def lower_activation_matmul(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """A @ B of two activations (attention's Q K^T and P V), batched over leading axes:
    acc = sum((a - za)(b - zb)) exactly in int64, requantized once by s_a * s_b / s_out."""
    ta, tb = ctx.q(node.input[0]), ctx.q(node.input[1])
    shape_b = ctx.shapes.get(node.input[1])
    if not shape_b or len(shape_b) < 2 or shape_b[-2] <= 0:
        raise UnsupportedOperatorError(f"MatMul node {node_key(node)!r} needs the inner dimension's size")
    to = ctx.calibrated(node.output[0])
    m, s = multiplier(ta.scale * tb.scale / to.scale)
    ctx.emit("matmul", node, list(node.input), [node.output[0]], "MatMul",
             {"za": ta.zero_point, "zb": tb.zero_point, "zo": to.zero_point, "inner": int(shape_b[-2])},
             {"mult": m, "shift": s}, to)
