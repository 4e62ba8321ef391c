"""Per-layer analysis on a sample of images: every quantized tensor against fp32.

Runs on the driver, on the few images the analysis needs (it keeps every tensor of every image),
through a backend's optional `unified_layer_outputs` hook; backends without internals give
output-level figures only.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from unified.core import plugins
from unified.core.quantized_model import QuantizedModel
from unified.evaluation.report import LayerFigures


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    return float(((a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)).mean())


def _sqnr(ref: np.ndarray, q: np.ndarray) -> float:
    noise = float(((ref.astype(np.float64) - q) ** 2).sum())
    return float(10 * np.log10(max(float((ref.astype(np.float64) ** 2).sum()), 1e-30) / max(noise, 1e-30)))


def reference_tensors(model: Any, x: np.ndarray) -> tuple[dict[str, np.ndarray], list[str]] | None:
    """Every tensor of the float model on `x`, and their graph order; None for a graph the float
    preparation cannot handle (output-level figures only, then)."""
    try:
        from unified.graph.float_stats import float_session, with_outputs
        from unified.graph.onnx_model import graph_inputs
        from unified.graph.prepare import prepare

        prepared = prepare(model)
        names = [o for n in prepared.graph.node for o in n.output if o]
        session = float_session(with_outputs(prepared, names))
        input_name = graph_inputs(prepared)[0].name
        values = dict(zip(names, session.run(names, {input_name: x})))
        values[input_name] = x  # so the first layer's "single" figure sees the fp32 input too
        return values, names
    except Exception:
        return None


def layer_figures(qm: QuantizedModel, x: np.ndarray,
                  reference: tuple[dict[str, np.ndarray], list[str]] | None) -> list[LayerFigures]:
    if reference is None:
        return []
    tensors, order = reference
    layered = plugins.call_optional(qm.backend, "unified_layer_outputs", artifact=qm.artifact,
                                    inputs=qm.quantize_input(x), reference=tensors)
    if not layered:
        return []
    figures = []
    for tensor in order:
        if tensor in layered["entire"]:
            f, entire, single = tensors[tensor], layered["entire"][tensor], layered["single"].get(tensor)
            figures.append(LayerFigures(tensor, _cosine(entire, f), _sqnr(f, entire),
                                        _cosine(single, f) if single is not None else None,
                                        _sqnr(f, single) if single is not None else None))
    return figures
