"""Activation statistics of the prepared float graph over the calibration set.

ONNX Runtime runs the float model with every tensor tapped; pass one records exact extremes, pass two, only for histogram-based estimators, fills a
2048-bin histogram per tensor over the extremes found. Batches of 4 keep peak memory low.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from unified.core.errors import CalibrationError
from unified.graph.float_stats import run_tapped
from unified.graph.onnx_model import graph_inputs
from unified.inputs.calibration import CalibrationSet
from unified.quant.ranges import BINNING, ESTIMATORS, EXTREMES_ONLY, Histogram
from unified.terminal.progress import progress


@dataclass
class TensorStats:
    histograms: dict[str, Histogram]


def tapped_names(model: onnx.ModelProto) -> list[str]:
    names = [i.name for i in graph_inputs(model)]
    for node in model.graph.node:
        names += [o for o in node.output if o]
    return names


def collect(model: onnx.ModelProto, calibration: CalibrationSet, method: str) -> TensorStats:
    if method not in ESTIMATORS:
        raise CalibrationError(f"unknown range estimator {method!r}; choose one of {', '.join(ESTIMATORS)}")
    names = tapped_names(model)
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    sizes: dict[str, int] = {}
    batch = 4
    passes = 1 if method in EXTREMES_ONLY else 2
    steps = (len(calibration) + batch - 1) // batch
    bar = progress(range(steps * passes), steps * passes, "calibrating", f"{len(calibration)} images")
    ticker = iter(bar)

    def first_pass(values: dict[str, np.ndarray]) -> None:
        next(ticker, None)
        for name, v in values.items():
            if v.dtype.kind != "f" or v.size == 0:
                continue
            if not np.isfinite(v).all():
                raise CalibrationError(f"tensor {name!r} becomes NaN/Inf on the calibration data")
            lo[name] = min(lo[name], float(v.min()))
            hi[name] = max(hi[name], float(v.max()))
            sizes[name] = v.size // v.shape[0] if v.ndim else 1

    run_tapped(model, names, calibration, first_pass, batch_size=batch)
    histograms = {n: Histogram(min(lo[n], 0.0), max(hi[n], 0.0), observed_lo=lo[n], observed_hi=hi[n],
                               sample_size=sizes[n], binning=BINNING.get(method, "uniform"))
                  for n in names if np.isfinite(lo[n])}
    if passes == 2:
        def second_pass(values: dict[str, np.ndarray]) -> None:
            next(ticker, None)
            for name, v in values.items():
                if name in histograms:
                    histograms[name].add(v)

        run_tapped(model, names, calibration, second_pass, batch_size=batch)
    for _ in ticker:
        pass
    return TensorStats(histograms)
