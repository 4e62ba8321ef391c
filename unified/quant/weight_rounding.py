"""Output-aware weight rounding: choose, for every weight, the grid point below or above it so
that the layer's *output* changes least, instead of rounding each weight to its nearest point.

This is the layer-wise objective of AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding
for Post-Training Quantization", eq. 21-22): with x the layer's fp32 input patches,

    minimize over W~ in {floor, ceil}(W / s)      E || (W~ - W) x ||^2  =  sum_rows e H e^T,

    H = E[x x^T]  (or the covariance Cov[x] when bias correction removes the mean error anyway).

Why it matters for per-tensor uint8 weights: a depthwise channel or a stem filter whose weights
span only a few grid steps loses most of its signal to rounding, and natural-image inputs are
strongly correlated across taps, so the error is dominated by the *sum* of the rounding errors.
Choosing up or down per weight can cancel that sum, which nearest rounding never does.

AdaRound solves the binary problem by a continuous relaxation trained with SGD; here the
quadratic is small and explicit (H is at most C_in x C_in, from `layer_moments`), so we descend
it greedily, one coordinate at a time: flip a weight to its other grid point when that lowers
the loss, sweep until nothing flips. No torch; about 35 s for EfficientNet-Lite0 on 2 cores,
most of it spent sampling the moments.

The result is expressed in *float weights*: a flipped weight is moved onto its chosen grid point,
every other weight (and each tensor's extreme values) stays as it was, so the backend's own
quantizer, unchanged, computes the same scale and zero point and lands on the chosen integers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from unified.graph.onnx_model import from_weight_rows, node_attributes, weight_rows
from unified.inputs.calibration import CalibrationSet
from unified.quant.layer_moments import input_moments
from unified.terminal.progress import progress


@dataclass(frozen=True)
class WeightGrid:
    """How the backend quantizes one weight tensor, in its row layout (output channels first):
    q = clip(round(w / scale + zero_point), qmin, qmax); dequantized (q - zero_point) * scale."""
    scale: np.ndarray       # (rows,)
    zero_point: np.ndarray  # (rows,)
    qmin: int
    qmax: int
    nearest: np.ndarray     # (rows, cols) the backend's own rounding of the weights (integers)


#: (weight rows, node) -> the grid the backend will quantize those rows on
GridOf = Callable[[np.ndarray, onnx.NodeProto], WeightGrid]


def supported(node: onnx.NodeProto, weight: onnx.TensorProto) -> bool:
    """Gemm, and 2-D Convs with explicit pads and no dilation (the patches we know how to sample)."""
    if node.op_type == "Gemm":
        return len(weight.dims) == 2
    a = node_attributes(node)
    return (node.op_type == "Conv" and len(weight.dims) == 4 and all(d == 1 for d in a.get("dilations", [1, 1]))
            and a.get("auto_pad", "NOTSET") in ("NOTSET", ""))


def choose_rounding(w: np.ndarray, grid: WeightGrid, h: np.ndarray, sweeps: int = 8,
                    per_channel: bool = False) -> np.ndarray:
    """Integer weights (rows, cols) on `grid`, each the floor or ceil of w/s + z, minimizing
    sum_rows e H e^T with e the dequantized error, by greedy coordinate descent from nearest.

    `h` is (groups, D, D) with rows split evenly over groups and cols == D (a depthwise conv has
    one group per channel). Grid points outside the tensor's [min, max] (each row's, when the
    backend quantizes `per_channel`) and the extreme weights themselves are never chosen anew, so
    the backend's range, scale and zero point stay the same.
    """
    g, d = h.shape[0], h.shape[1]
    rows = w.shape[0]
    m = rows // g
    scale = grid.scale.reshape(rows, 1)
    zp = grid.zero_point.reshape(rows, 1)
    if per_channel:
        lo, hi = w.min(axis=1, keepdims=True), w.max(axis=1, keepdims=True)
    else:
        lo, hi = w.min(), w.max()
    base = np.floor(w / scale + zp)
    options = np.stack([base, base + 1])  # the two neighbouring grid points
    real = (options - zp) * scale
    usable = (options >= grid.qmin) & (options <= grid.qmax) & (real >= lo) & (real <= hi)
    frozen = (w == lo) | (w == hi)
    q = grid.nearest.astype(np.float64)
    current_is_base = q == base
    other = np.where(current_is_base, base + 1, base)
    can_flip = np.where(current_is_base, usable[1], usable[0]) & ~frozen & ((q == base) | (q == base + 1))

    err = ((q - zp) * scale - w).reshape(g, m, d)
    step = ((other - q) * scale).reshape(g, m, d)
    can = can_flip.reshape(g, m, d)
    grad = err @ h  # (g, m, d): H e per row
    diag = np.diagonal(h, axis1=1, axis2=2)  # (g, d)
    # a flip must lower the loss by more than float noise, relative to the largest possible change
    tolerance = 1e-12 * float((step * step * diag[:, None, :]).max(initial=0.0)) + 1e-300
    for _ in range(sweeps):
        flipped = 0
        for i in range(d):
            delta = step[:, :, i]
            gain = 2 * delta * grad[:, :, i] + delta * delta * diag[:, i][:, None]
            gs, rs = np.nonzero(can[:, :, i] & (gain < -tolerance))
            if gs.size == 0:
                continue
            flipped += gs.size
            applied = delta[gs, rs]
            err[gs, rs, i] += applied
            grad[gs, rs] += applied[:, None] * h[gs, i, :]  # only the rows that moved
            step[gs, rs, i] = -applied  # flipping back is the only move left
        if flipped == 0:
            break
    new_real = err.reshape(rows, -1) + w
    return np.rint(new_real / scale + zp)


def round_weights(model: onnx.ModelProto, calibration: CalibrationSet, grid_of: GridOf,
                  centered: bool = True, per_channel: bool = False) -> onnx.ModelProto:
    """A copy of `model` whose Conv/Gemm weights are moved to output-aware grid points."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    layers = [n for n in out.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1
              and n.input[1] in inits and supported(n, inits[n.input[1]])]
    if not layers:
        return out
    moments = input_moments(model, layers, calibration, centered)
    for node in progress(layers, len(layers), "weight rounding", f"{len(layers)} layers"):
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        rows = weight_rows(node, w)
        grid = grid_of(rows, node)
        h = moments.get(node.output[0])
        if h is None or rows.shape[1] != h.shape[1] or rows.shape[0] % h.shape[0]:
            continue  # a layout we did not sample as expected: leave nearest rounding
        q = choose_rounding(rows, grid, h, per_channel=per_channel)
        moved = q != grid.nearest
        new_rows = np.where(moved, (q - grid.zero_point[:, None]) * grid.scale[:, None], rows)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(
            from_weight_rows(node, new_rows, w.shape).astype(np.float32), node.input[1]))
    return out
