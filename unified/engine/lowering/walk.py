"""The walk: every node of a prepared float graph through its lowering, in graph order."""
from __future__ import annotations

import onnx

from unified.core.errors import ScaleFileError, UnsupportedOperatorError
from unified.core.quant_params import QuantParams
from unified.engine.integer_graph import IntegerGraph
from unified.engine.lowering.context import LoweringContext, RangeSource, node_key
from unified.engine.lowering.registry import FLOAT_FALLBACK, LOWERINGS, Lowering
from unified.engine.scheme import Scheme
from unified.graph.onnx_model import graph_inputs


def supported_ops() -> frozenset[str]:
    """Every ONNX op type the integer engine lowers (the lowering table's keys)."""
    return frozenset(op for op in LOWERINGS if op != FLOAT_FALLBACK)


def lowering_for(node: onnx.NodeProto, float_fallback: set[str]) -> Lowering | None:
    if node.op_type in float_fallback:
        return LOWERINGS[FLOAT_FALLBACK]
    return LOWERINGS.get(node.op_type)


def lower(model: onnx.ModelProto, scheme: Scheme, ranges: RangeSource,
          input_range: tuple[float, float] | None = None, float_fallback: set[str] | None = None,
          given: dict[str, QuantParams] | None = None) -> IntegerGraph:
    """Lower `model` under `scheme`.

    `input_range`: the float range of the model input when it is fixed by folded preprocessing
    (8-bit pixels under mean/std); None calibrates it like any tensor. Tensors in `given` (a scale
    table) take those parameters instead of calibration.
    """
    fallback = set(float_fallback or ())
    ctx = LoweringContext(model, scheme, ranges, fallback, given)
    unsupported = [f"{n.op_type} (node {node_key(n)!r})" for n in model.graph.node if lowering_for(n, fallback) is None]
    if unsupported:
        raise UnsupportedOperatorError(
            f"the {scheme.name} integer engine does not support: {', '.join(unsupported)}; "
            "pass float_fallback=[op types] to run them in float on the CPU")
    x = graph_inputs(model)[0].name
    if input_range and x not in ctx.given:
        ctx.tensors[x] = ctx.params_from_range(*input_range)
    else:
        ctx.tensors[x] = ctx.calibrated(x)
    for node in model.graph.node:
        if node_key(node) in ctx.fused:
            continue
        lowering = lowering_for(node, fallback)
        assert lowering is not None  # checked above
        lowering(ctx, node)
    if ctx.missing:
        missing = sorted(set(ctx.missing))
        raise ScaleFileError(
            f"the scale table has no entry for {len(missing)} tensor(s) the model needs: "
            + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    out = model.graph.output[0].name
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "N")
             for d in graph_inputs(model)[0].type.tensor_type.shape.dim]
    return IntegerGraph(ctx.nodes, ctx.tensors, x, out, scheme.activation_dtype, scheme.rounding,
                        scheme.describe(), shape, ctx.fallback_models)
