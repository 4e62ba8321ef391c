"""Add, Mul and Concat: operands with their own scales meet on the output's scale.

Add rescales both operands to twice the larger input scale with 20 bits of headroom (TFLite's
integer Add), then requantizes; a following Relu/Clip is fused. Mul requantizes the product of the
centred operands. Concat requantizes each input that does not already share the output's params.
"""
from __future__ import annotations

import numpy as np
import onnx

from unified.engine.lowering.context import LoweringContext, multiplier
from unified.engine.lowering.registry import lowers
from unified.graph.onnx_model import node_attributes

ADD_LEFT_SHIFT = 20


@lowers("Add")
def lower_add(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    t1, t2 = ctx.q(node.input[0]), ctx.q(node.input[1])
    act = ctx.fusable_activation(node)
    out_name = act.output[0] if act is not None else node.output[0]
    bounds = ctx.clip_bounds(act)
    to = ctx.output_params(out_name, bounds)
    twice_max = 2 * max(t1.scale, t2.scale)
    m1, s1 = multiplier(t1.scale / twice_max)
    m2, s2 = multiplier(t2.scale / twice_max)
    mo, so = multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * to.scale))
    qlo, qhi = ctx.clamp_q(to, bounds)
    if getattr(ctx.scheme, "fuse_conv_add", False) and _fuse_into_conv(ctx, node, out_name, to, qlo, qhi):
        ctx.fuse(act)
        return
    ctx.emit("add", node, list(node.input), [out_name], node.op_type + (f"+{act.op_type}" if act is not None else ""),
             {"z1": t1.zero_point, "z2": t2.zero_point, "zo": to.zero_point,
              "act_min": qlo, "act_max": qhi, "left_shift": ADD_LEFT_SHIFT},
             {"m1": m1, "s1": s1, "m2": m2, "s2": s2, "mo": mo, "so": so}, to)
    ctx.fuse(act)


def _fuse_into_conv(ctx: LoweringContext, node: onnx.NodeProto, out_name: str, to, qlo: int, qhi: int) -> bool:
    """RKNN's Conv+Add fusion: when one operand is the output of a conv (no activation of its own)
    read by this Add alone, that conv becomes a `conv_add` node writing the Add's output; the conv's
    own 8-bit output disappears (see `kernels.conv_add`). False when no operand qualifies."""
    for index in (0, 1):
        name, residual = node.input[index], node.input[1 - index]
        conv = next((n for n in reversed(ctx.nodes) if name in n.outputs), None)
        if (conv is None or conv.op != "conv" or "+" in conv.source or conv.outputs != [name]
                or len(ctx.consumers.get(name, [])) != 1 or name in ctx.outputs or residual == name):
            continue
        t_in, t_res = ctx.q(conv.inputs[0]), ctx.q(residual)
        real = t_in.scale * conv.arrays["w_scale"].astype(np.float64) / to.scale
        conv.op, conv.outputs = "conv_add", [out_name]
        conv.inputs = [conv.inputs[0], residual]
        conv.source = conv.source + "+Add"
        conv.attrs.update({"zr": t_res.zero_point, "zo": to.zero_point, "act_min": qlo, "act_max": qhi,
                           "requant_f64": False})
        conv.arrays.update({"acc_real": real, "bias_real": conv.arrays["bias"].astype(np.float64) * real,
                            "res_real": np.array([t_res.scale / to.scale])})
        ctx.tensors.pop(name, None)
        ctx.tensors[out_name] = to
        # the conv's own output needs no params any more (an imported QDQ model need not give them)
        ctx.missing[:] = [m for m in ctx.missing if m != name]
        return True
    return False


@lowers("Mul")
def lower_mul(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    t1, t2 = ctx.q(node.input[0]), ctx.q(node.input[1])
    to = ctx.calibrated(node.output[0])
    m, s = multiplier(t1.scale * t2.scale / to.scale)
    ctx.emit("mul", node, list(node.input), [node.output[0]], "Mul",
             {"z1": t1.zero_point, "z2": t2.zero_point, "zo": to.zero_point,
              "act_min": ctx.scheme.qmin, "act_max": ctx.scheme.qmax},
             {"mult": m, "shift": s}, to)


@lowers("Concat")
def lower_concat(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    ins = [ctx.q(n) for n in node.input]
    to = ctx.calibrated(node.output[0])
    arrays = {}
    for i, t in enumerate(ins):
        arrays[f"m{i}"], arrays[f"s{i}"] = multiplier(t.scale / to.scale)
    ctx.emit("concat", node, list(node.input), [node.output[0]], "Concat",
             {"axis": node_attributes(node)["axis"], "zs": [t.zero_point for t in ins], "zo": to.zero_point,
              "same": [t == to for t in ins]}, arrays, to)
