"""The model front end: the one normalized float graph every backend receives.

Models come from the wild: old opsets, shape arithmetic from `x.shape` in PyTorch code (Shape,
Gather, Unsqueeze, Concat, Cast, Div on shapes), Identity and no-op Cast nodes, BatchNorm as
Sub/Mul/Add, computed pads. The front end turns all of that into a plain graph:

1. the default-domain opset is raised to at least `MIN_OPSET` with `onnx.version_converter`
   (ORT's QDQ quantizer writes per-channel DequantizeLinear, which needs opset 13);
2. onnxslim folds constants and shape arithmetic, removes Identity/no-op nodes and fuses
   simple patterns; it keeps a free batch dimension free (shapes become [-1, ...]). Explicit
   Pad nodes stay: whether a Pad folds into the Conv after it is the backend's decision (Tengine's
   runtime pads on its own, with different numbers; `graph.prepare` folds them for the others).

Why onnxslim: it is maintained, pure Python (it runs wherever onnx does, no compiled wheel), folds
ShuffleNet's 900-node export to its 186 real nodes in under a second, and, unlike onnxsim, folds
shape arithmetic without fixing the batch size first. onnx's own checker and shape inference
validate the result.
"""
from __future__ import annotations

import logging

import onnx
from onnx import shape_inference, version_converter

from unified.core.errors import ModelError

MIN_OPSET = 13
log = logging.getLogger("unified")


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def upgrade_opset(model: onnx.ModelProto, name: str, minimum: int = MIN_OPSET) -> onnx.ModelProto:
    """`model` at opset >= `minimum`, converted by onnx's version converter where needed."""
    current = default_opset(model)
    if current >= minimum:
        return model
    try:
        converted = version_converter.convert_version(model, minimum)
    except Exception as exc:  # the converter raises RuntimeError/ValueError/InferenceError
        raise ModelError(f"{name}: cannot convert opset {current} to {minimum}: {str(exc).splitlines()[0][:300]}") from exc
    log.info("%s: converted opset %d -> %d", name, current, minimum)
    return converted


FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def check_inputs(model: onnx.ModelProto, name: str) -> None:
    """unified quantizes models whose inputs are float tensors; say which input is not, and why."""
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        elem = value.type.tensor_type.elem_type
        if elem not in FLOAT_TYPES:
            raise ModelError(f"{name}: input {value.name!r} is {onnx.TensorProto.DataType.Name(elem).lower()}; unified "
                             "quantizes models whose inputs are float tensors (images, features)")


def fix_spatial(model: onnx.ModelProto, height: int, width: int, layout: str) -> onnx.ModelProto:
    """A copy whose single 4-D image input has H and W fixed where they were free (as NPU toolkits
    compile for one input size); other models are returned as they are."""
    inputs = [v for v in model.graph.input if v.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        return model
    axes = (1, 2) if layout == "NHWC" else (2, 3)
    dims = inputs[0].type.tensor_type.shape.dim
    if all(dims[a].dim_value for a in axes):
        return model
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    dims = [v for v in fixed.graph.input if v.name == inputs[0].name][0].type.tensor_type.shape.dim
    for axis, size in zip(axes, (height, width)):
        if not dims[axis].dim_value:
            dims[axis].Clear()
            dims[axis].dim_value = size
    del fixed.graph.value_info[:]
    return fixed


def slim(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Constant folding, shape-arithmetic folding and dead-node removal by onnxslim."""
    import onnxslim

    try:
        slimmed = onnxslim.slim(model, skip_fusion_patterns=["FusionPadConv"])
    except Exception as exc:  # onnxslim is an optimization: a model it cannot handle stays as it was
        log.warning("%s: onnxslim could not simplify the model (%s); using it as exported",
                    name, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return model
    return slimmed if isinstance(slimmed, onnx.ModelProto) else model


def normalize(model: onnx.ModelProto, name: str = "model") -> onnx.ModelProto:
    """The front end: opset >= 13, folded and slimmed, checked, shapes inferred."""
    out = upgrade_opset(model, name)
    out = slim(out, name)
    try:
        onnx.checker.check_model(out)
        out = shape_inference.infer_shapes(out)
    except Exception as exc:
        raise ModelError(f"{name}: the normalized model does not check: {str(exc).splitlines()[0][:300]}") from exc
    return out
