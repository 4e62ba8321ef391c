"""Turning whatever the user calls a model into a checked ONNX graph plus its preprocessing."""
from __future__ import annotations

import os
import sys
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx

from unified.core.errors import ModelError
from unified.graph.frontend import check_inputs, fix_spatial, normalize
from unified.graph.qdq_import import ImportedQdq, is_qdq, split_qdq
from unified.graph.onnx_model import check_model, input_shape, load_onnx
from unified.inputs.preprocess import Preprocess
from unified.inputs.zoo import DEFAULT_MODEL, ZOO, export_torch, load_zoo_model

#: Used for models that do not say otherwise (the zoo's own normalization).
DEFAULT_PREPROCESS = ZOO[DEFAULT_MODEL].preprocess


@dataclass(frozen=True)
class SourceModel:
    """A float ONNX model ready for quantization, with a name to show and its preprocessing."""

    proto: onnx.ModelProto
    name: str
    preprocess: Preprocess
    #: set for an already quantized QDQ model: its float graph (normalized) and its params
    imported: ImportedQdq | None = None


def input_layout(shape: tuple[int | str, ...]) -> str:
    """NHWC when the model makes it certain (a 4-D input whose last dimension is 3 and second is
    not), else NCHW."""
    if len(shape) == 4 and shape[3] == 3 and shape[1] != 3:
        return "NHWC"
    return "NCHW"


def preprocess_for(model: onnx.ModelProto, name: str = "model") -> Preprocess:
    """The default normalization, sized and laid out as the model's input: crop = its H (if static
    and square), resize in the usual 256/224 proportion. Its mean/std are a guess, so say so."""
    shape = input_shape(model)
    layout = input_layout(shape)
    h, w = (shape[1], shape[2]) if layout == "NHWC" else (shape[2:4] if len(shape) == 4 else (None, None))
    pre = DEFAULT_PREPROCESS
    if isinstance(h, int) and h > 0 and h == w:
        pre = replace(pre, resize=int(round(h * 256 / 224)), crop=h)
    pre = replace(pre, layout=layout)
    warnings.warn(f"{name}: its input normalization is unknown; images will use mean={list(pre.mean)} "
                  f"std={list(pre.std)} (EfficientNet-Lite's), {pre.layout} {pre.channels}. Pass "
                  "preprocess=unified.Preprocess(mean=..., std=..., layout=..., channels=...) "
                  "(CLI: --mean --std --size --layout --bgr) to set it.", UnknownNormalizationWarning, stacklevel=4)
    return pre


class UnknownNormalizationWarning(UserWarning):
    """A model's input normalization had to be guessed."""


def _is_torch_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to ask
    return torch is not None and isinstance(obj, torch.nn.Module)


def resolve_model(model: Any = None, preprocess: Preprocess | None = None) -> SourceModel:
    """Zoo name | .onnx path | onnx.ModelProto | torch.nn.Module (None means the default zoo model)."""
    source = _load_source(model, preprocess)
    check_inputs(source.proto, source.name)
    pre = source.preprocess
    if is_qdq(source.proto):  # split before the front end, which would fold the weights' DequantizeLinear
        imported = split_qdq(source.proto)
        imported.float_model = normalize(fix_spatial(imported.float_model, pre.crop, pre.crop, pre.layout), source.name)
        return SourceModel(source.proto, source.name, pre, imported)
    # a free H/W (an export with dynamic axes) takes the preprocessing's size: the backends' passes
    # (pooling divisors, shape folding) need it, as NPU toolkits need fixed input sizes
    proto = fix_spatial(source.proto, pre.crop, pre.crop, pre.layout)
    return SourceModel(normalize(proto, source.name), source.name, pre)


def _load_source(model: Any, preprocess: Preprocess | None) -> SourceModel:
    if model is None:
        model = DEFAULT_MODEL
    if isinstance(model, (str, os.PathLike)) and str(model) in ZOO:
        entry = ZOO[str(model)]
        return SourceModel(load_zoo_model(entry.name), entry.name, preprocess or entry.preprocess)
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.suffix != ".onnx" and not path.exists():
            raise ModelError(
                f"model {str(model)!r} is neither a zoo name ({', '.join(sorted(ZOO))}) nor an existing .onnx file"
            )
        if path.is_file() and zipfile.is_zipfile(path):
            raise ModelError(f"{path} is a saved quantized model, not a float model: run it with unified.load({str(path)!r}) "
                             "(CLI: unified infer --model it), or quantize the original .onnx")
        proto = load_onnx(path)
        return SourceModel(proto, path.stem, preprocess or preprocess_for(proto, path.name))
    if isinstance(model, onnx.ModelProto):
        proto = check_model(model)
        name = model.graph.name or "model"
        return SourceModel(proto, name, preprocess or preprocess_for(proto, name))
    if _is_torch_module(model):
        pre = preprocess or DEFAULT_PREPROCESS
        return SourceModel(export_torch(model, (1, 3, pre.crop, pre.crop)), type(model).__name__, pre)
    raise ModelError(
        f"cannot use a {type(model).__name__} as a model: give a zoo name, an .onnx path, "
        "an onnx.ModelProto or a torch.nn.Module"
    )
