"""The walk: every node of a prepared float graph through its lowering, in graph order.

Hybrid execution: a node with no integer lowering, one whose lowering refuses it (non-constant
weights, an unsupported attribute), or an op type the user listed in `float_fallback` runs in float
instead, as RKNN-Toolkit2 moves such ops to the CPU. The graph records each such node and why
(`IntegerGraph.float_reasons`); `strict=True` refuses them all in one message instead.
"""
from __future__ import annotations

from collections import defaultdict

import onnx

from unified.core.errors import CalibrationError, ScaleFileError, UnsupportedOperatorError
from unified.core.quant_params import QuantParams
from unified.engine.integer_graph import IntegerGraph
from unified.engine.lowering.context import LoweringContext, RangeSource, RequantizationRangeError, node_key
from unified.engine.lowering.registry import FLOAT_FALLBACK, LOWERINGS
from unified.engine.scheme import Scheme
from unified.graph.onnx_model import graph_inputs

#: messages stay short: this many nodes are named per op type
NAMED_PER_OP = 1


def supported_ops() -> frozenset[str]:
    """Every ONNX op type the integer engine lowers (the lowering table's keys)."""
    return frozenset(op for op in LOWERINGS if op != FLOAT_FALLBACK)


def _lower_node(ctx: LoweringContext, node: onnx.NodeProto, forced: set[str]) -> None:
    key = node_key(node)
    if node.op_type in forced:
        reason = "float_fallback option"
    elif node.op_type not in LOWERINGS:
        reason = f"no integer kernel for {node.op_type}"
    else:
        mark = ctx.checkpoint()
        try:
            LOWERINGS[node.op_type](ctx, node)
            return
        except RequantizationRangeError as exc:
            raise CalibrationError(f"{node.op_type} node {key!r}: {exc}") from None
        except UnsupportedOperatorError as exc:
            ctx.restore(mark)
            reason = str(exc).split(": ", 1)[-1] if str(exc).startswith(node.op_type) else str(exc)
    ctx.float_reasons[key] = reason
    LOWERINGS[FLOAT_FALLBACK](ctx, node)


def summarize_float_nodes(reasons: dict[str, str], op_types: dict[str, str], scheme: str) -> str:
    """One short message: op types with counts, the first node of each and its reason."""
    by_op: dict[str, list[str]] = defaultdict(list)
    for name in reasons:
        by_op[op_types[name]].append(name)
    parts = []
    for op, names in sorted(by_op.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(repr(n) for n in names[:NAMED_PER_OP])
        more = f" and {len(names) - NAMED_PER_OP} more" if len(names) > NAMED_PER_OP else ""
        parts.append(f"{op} x{len(names)} ({shown}{more}: {reasons[names[0]][:80]})")
    text = f"the {scheme} integer engine cannot run {len(reasons)} node(s): " + "; ".join(parts)
    if len(text) > 560:
        text = text[:540].rsplit(";", 1)[0] + "; ..."
    return text


def lower(model: onnx.ModelProto, scheme: Scheme, ranges: RangeSource,
          input_range: tuple[float, float] | None = None, float_fallback: set[str] | None = None,
          given: dict[str, QuantParams] | None = None, strict: bool = False,
          given_input: bool = False) -> IntegerGraph:
    """Lower `model` under `scheme`.

    `input_range`: the float range of the model input when it is fixed by folded preprocessing
    (8-bit pixels under mean/std); None calibrates it like any tensor. Tensors in `given` (a scale
    table) take those parameters instead of calibration. `strict`: raise instead of running any
    node in float, naming every such node's op type in one message.
    """
    forced = set(float_fallback or ())
    ctx = LoweringContext(model, scheme, ranges, forced, given)
    inputs = [i.name for i in graph_inputs(model)]
    for x in inputs:  # folded preprocessing fixes the range of a single image input
        if input_range and len(inputs) == 1 and x not in ctx.given and not given_input:
            ctx.tensors[x] = ctx.params_from_range(*input_range, name=x)
        else:
            ctx.tensors[x] = ctx.calibrated(x)
    for node in model.graph.node:
        if node_key(node) not in ctx.fused:
            _lower_node(ctx, node, forced)
    if strict:
        unrequested = {k: r for k, r in ctx.float_reasons.items() if r != "float_fallback option"}
        if unrequested:
            op_types = {node_key(n): n.op_type for n in model.graph.node}
            raise UnsupportedOperatorError(summarize_float_nodes(unrequested, op_types, scheme.name)
                                           + "; strict=True forbids float fallback")
    if ctx.missing:
        missing = sorted(set(ctx.missing))
        raise ScaleFileError(
            f"the scale table has no entry for {len(missing)} tensor(s) the model needs: "
            + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    outputs = [o.name for o in model.graph.output]
    shapes = [[d.dim_value if d.HasField("dim_value") else (d.dim_param or "N") for d in i.type.tensor_type.shape.dim]
              for i in graph_inputs(model)]
    return IntegerGraph(ctx.nodes, ctx.tensors, inputs, outputs, scheme.activation_dtype, scheme.rounding,
                        scheme.describe(), shapes, ctx.fallback_models, ctx.float_reasons)
