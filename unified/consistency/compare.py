"""Cross-backend consistency: one model, one set of images, every backend against fp32.

`compare` is `evaluate` on a handful of images in this process: the same shard runner, the same
figures and the same report (see `unified.evaluation`). Per backend: top-1 agreement with fp32,
top-5 overlap, mean and min cosine and max abs error per output, and per-layer cosine and SQNR
where the backend exposes its internals. A table for terminals, JSON for machines, a PNG for people.
"""
from __future__ import annotations

from typing import Any, Sequence

from unified.core.errors import public_api
from unified.evaluation.evaluate import evaluate
from unified.evaluation.report import (  # noqa: F401  (re-exported: the report's parts)
    BackendFigures,
    CompareReport,
    LayerFigures,
    OutputFigures,
)
from unified.inputs.preprocess import Preprocess


@public_api
def compare(model: Any = None, images: Any = None, backends: Sequence[Any] = ("ort", "rknn", "tengine"),
            calibration: Any = None, layer_images: int = 8, batch_size: int = 25,
            preprocess: Preprocess | None = None) -> CompareReport:
    """Run `images` through fp32 and every backend; see the module docstring for the figures.

    backends: names, or (name, options) / (name, options, label) tuples to compare settings of
    one backend, e.g. ("rknn", {"quantized_method": "layer"}, "rknn-layer").
    images: paths, a folder, PIL images, arrays or a float NCHW batch (None: 50 photo crops);
    they are read and run `batch_size` at a time, so memory does not grow with their number.
    layer_images: how many images the per-layer analysis uses (it keeps every tensor in memory).
    """
    return evaluate(model, images, backends, executor="local", calibration=calibration, preprocess=preprocess,
                    layer_images=layer_images, shard_size=batch_size)
