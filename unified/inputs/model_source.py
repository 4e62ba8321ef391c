"""Turning whatever the user calls a model into a checked ONNX graph plus its preprocessing."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from unified.core.errors import ModelError
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


def preprocess_for(model: onnx.ModelProto) -> Preprocess:
    """The default normalization, sized to the model's input: crop = its H (if static and square),
    resize in the usual 256/224 proportion."""
    shape = input_shape(model)
    if len(shape) == 4 and isinstance(shape[2], int) and shape[2] > 0 and shape[2] == shape[3]:
        crop = shape[2]
        return Preprocess(resize=int(round(crop * 256 / 224)), crop=crop,
                          mean=DEFAULT_PREPROCESS.mean, std=DEFAULT_PREPROCESS.std)
    return DEFAULT_PREPROCESS


def _is_torch_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to ask
    return torch is not None and isinstance(obj, torch.nn.Module)


def resolve_model(model: Any = None, preprocess: Preprocess | None = None) -> SourceModel:
    """Zoo name | .onnx path | onnx.ModelProto | torch.nn.Module (None means the default zoo model)."""
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
        proto = load_onnx(path)
        return SourceModel(proto, path.stem, preprocess or preprocess_for(proto))
    if isinstance(model, onnx.ModelProto):
        proto = check_model(model)
        return SourceModel(proto, model.graph.name or "model", preprocess or preprocess_for(proto))
    if _is_torch_module(model):
        pre = preprocess or DEFAULT_PREPROCESS
        return SourceModel(export_torch(model, (1, 3, pre.crop, pre.crop)), type(model).__name__, pre)
    raise ModelError(
        f"cannot use a {type(model).__name__} as a model: give a zoo name, an .onnx path, "
        "an onnx.ModelProto or a torch.nn.Module"
    )
