"""Statistics of a float model's intermediate tensors over calibration data, computed by ORT.

Quantizers need fp32 facts about tensors inside the graph (per-channel means for bias correction,
ranges and samples for calibration). ONNX Runtime computes them fastest: we expose the wanted
tensors as extra graph outputs and run the float model once over the calibration set.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from unified.graph.onnx_model import graph_inputs
from unified.graph.ort_session import make_session

if TYPE_CHECKING:  # calibration sets come from `inputs`; graph needs only their batches
    from unified.inputs.calibration import CalibrationSet


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` that also returns the tensors `names` (order preserved, graph output last)."""
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    existing = {o.name for o in tapped.graph.output}
    for name in names:
        if name not in existing:
            tapped.graph.output.append(helper.make_empty_tensor_value_info(name))
            existing.add(name)
    return tapped


def float_session(model: onnx.ModelProto) -> ort.InferenceSession:
    # Basic optimizations only: later levels fuse nodes and would drop the tensors we tap.
    return make_session(model.SerializeToString(), optimization=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                        memory_arena=False)


def run_tapped(
    model: onnx.ModelProto,
    names: list[str],
    calibration: CalibrationSet,
    consume: Callable[[dict[str, np.ndarray]], None],
    batch_size: int = 8,
) -> None:
    """Run `model` over the calibration set and hand each batch's tapped tensors to `consume`."""
    session = float_session(with_outputs(model, names))
    inp = graph_inputs(model)[0]
    input_name = inp.name
    first = inp.type.tensor_type.shape.dim[0] if inp.type.tensor_type.shape.dim else None
    if first is not None and first.HasField("dim_value"):
        batch_size = first.dim_value  # a model exported with a fixed batch takes only that batch
    for batch in calibration.batches(batch_size):
        values = session.run(names, batch if isinstance(batch, dict) else {input_name: batch})
        consume(dict(zip(names, values)))


def channel_means(model: onnx.ModelProto, names: list[str], calibration: CalibrationSet) -> dict[str, np.ndarray]:
    """Mean of each tensor per channel (axis 1), over batch and spatial positions (memoized per
    process, `float_memo`: bias correction asks for the same means in every backend's build)."""
    from unified.graph.float_memo import memoized

    return memoized("channel_means", model, calibration, tuple(names), lambda: _channel_means(model, names, calibration))


def _channel_means(model: onnx.ModelProto, names: list[str], calibration: CalibrationSet) -> dict[str, np.ndarray]:
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def consume(values: dict[str, np.ndarray]) -> None:
        for name, v in values.items():
            v64 = v.astype(np.float64)
            axes = (0,) + tuple(range(2, v.ndim))
            sums[name] = sums.get(name, 0) + v64.sum(axis=axes)
            counts[name] = counts.get(name, 0) + v.size // v.shape[1]

    run_tapped(model, names, calibration, consume)
    return {name: (sums[name] / counts[name]) for name in names}


def tensor_maxima(model: onnx.ModelProto, names: list[str], calibration: CalibrationSet) -> dict[str, float]:
    """Largest value each tensor takes over the calibration set."""
    maxima: dict[str, float] = {}

    def consume(values: dict[str, np.ndarray]) -> None:
        for name, v in values.items():
            maxima[name] = max(maxima.get(name, -np.inf), float(v.max()))

    run_tapped(model, names, calibration, consume)
    return maxima
