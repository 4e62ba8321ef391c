"""Per-layer analysis on a sample of images: every quantized tensor against fp32.

Runs on the driver, on the few images the analysis needs, one image at a time, through a backend's optional `unified_layer_outputs` hook; backends without internals give
output-level figures only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from unified.core import plugins
from unified.core.quantized_model import QuantizedModel
from unified.evaluation.report import LayerFigures
from unified.evaluation.shards import cosines


class ReferenceTaps:
    """Every tensor of the float model, one run at a time (one session, built once)."""

    def __init__(self, model: Any) -> None:
        from unified.graph.float_stats import float_session, with_outputs
        from unified.graph.onnx_model import graph_inputs
        from unified.graph.prepare import prepare

        prepared = prepare(model)
        self.order = [o for n in prepared.graph.node for o in n.output if o]
        self.session = float_session(with_outputs(prepared, self.order))
        self.input_name = graph_inputs(prepared)[0].name

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        values = dict(zip(self.order, self.session.run(self.order, {self.input_name: x})))
        values[self.input_name] = x  # so the first layer's "single" figure sees the fp32 input too
        return values


@dataclass
class _Sums:
    """Per-tensor running sums over images: cosines, signal and noise energies."""

    cosine: float = 0.0
    signal: float = 0.0
    noise: float = 0.0
    images: int = 0

    def add(self, q: np.ndarray, ref: np.ndarray) -> None:
        r = ref.astype(np.float64)
        self.cosine += float(cosines(q, ref).sum())
        self.signal += float((r * r).sum())
        self.noise += float(((r - q) ** 2).sum())
        self.images += len(ref)

    def figures(self) -> tuple[float, float]:
        return (self.cosine / max(self.images, 1),
                float(10 * np.log10(max(self.signal, 1e-30) / max(self.noise, 1e-30))))


def layer_analysis(models: dict[str, QuantizedModel], model: Any, x: np.ndarray) -> dict[str, list[LayerFigures]]:
    """Per-layer figures of every model (label -> figures; [] for backends without internals).

    Images go one at a time, so memory holds one image's tensors, not every tensor of the whole
    sample (8 Lite0 images at once took 1.6 GB). Cosines are averaged over images and SQNR sums
    signal and noise over all of them, as for outputs."""
    try:
        taps = ReferenceTaps(model)
    except Exception:  # a graph the float preparation cannot handle: output-level figures only
        return {label: [] for label in models}
    sums: dict[str, dict[str, tuple[_Sums, _Sums | None]]] = {label: {} for label in models}
    for i in range(len(x)):
        reference = taps.run(x[i:i + 1])
        for label, qm in models.items():
            layered = plugins.call_optional(qm.backend, "unified_layer_outputs", artifact=qm.artifact,
                                            inputs=qm.quantize_input(x[i:i + 1]), reference=reference)
            if not layered:
                continue
            for tensor in taps.order:
                if tensor in layered["entire"]:
                    entire, single = sums[label].setdefault(
                        tensor, (_Sums(), _Sums() if tensor in layered["single"] else None))
                    entire.add(layered["entire"][tensor], reference[tensor])
                    if single is not None:
                        single.add(layered["single"][tensor], reference[tensor])
    result = {}
    for label in models:
        figures = []
        for tensor in taps.order:
            if tensor in sums[label]:
                entire, single = sums[label][tensor]
                single_figures = single.figures() if single is not None else (None, None)
                figures.append(LayerFigures(tensor, *entire.figures(), *single_figures))
        result[label] = figures
    return result
