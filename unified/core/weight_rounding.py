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
quadratic is small and explicit (H is at most C_in x C_in), so we solve it exactly-per-step by
greedy coordinate descent on H: flip a weight to its other grid point when that lowers the loss,
sweep until nothing flips. No torch, a few seconds per network.

The result is expressed in *float weights*: a flipped weight is moved onto its chosen grid point,
every other weight (and each tensor's extreme values) stays as it was, so the backend's own
quantizer, unchanged, computes the same scale and zero point and lands on the chosen integers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper, numpy_helper

from unified.core.calibration import CalibrationSet
from unified.core.float_stats import run_tapped


@dataclass(frozen=True)
class WeightGrid:
    """How the backend quantizes one weight tensor, in its row layout (output channels first):
    q = clip(round(w / scale + zero_point), qmin, qmax); dequantized (q - zero_point) * scale."""
    scale: np.ndarray       # (rows,)
    zero_point: np.ndarray  # (rows,)
    qmin: int
    qmax: int
    nearest: np.ndarray     # (rows, cols) the backend's own rounding of the weights (integers)


#: input patches sampled per image and layer: SAMPLES_PER_INPUT per patch element, at most MAX_POSITIONS
SAMPLES_PER_INPUT = 8
MAX_POSITIONS = 512
#: layers seeing fewer samples than this per patch element (a classifier fed 100 pooled vectors
#: of 1280 values) keep nearest rounding: their moment is too noisy to optimize against
MIN_SAMPLES_PER_INPUT = 4

#: (weight rows, node) -> the grid the backend will quantize those rows on
GridOf = Callable[[np.ndarray, onnx.NodeProto], WeightGrid]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _rows(node: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """Weights as (output channels, inputs per output) - the layout the loss is written in."""
    if node.op_type == "Gemm" and not _attrs(node).get("transB", 0):
        return w.T
    return w.reshape(w.shape[0], -1)


def _from_rows(node: onnx.NodeProto, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if node.op_type == "Gemm" and not _attrs(node).get("transB", 0):
        return rows.T.reshape(shape)
    return rows.reshape(shape)


def supported(node: onnx.NodeProto) -> bool:
    if node.op_type == "Gemm":
        return True
    if node.op_type != "Conv":
        return False
    a = _attrs(node)
    return all(d == 1 for d in a.get("dilations", [1, 1])) and len(a.get("strides", [1, 1])) == 2


def _patches(node: onnx.NodeProto, kernel: tuple[int, ...], x: np.ndarray, positions: int,
             rng: np.random.Generator) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Input patches as float32 (images, groups, inputs per group D, positions), in the weights' order.

    About `positions` output positions per image are taken, on a regular sub-grid with a random
    offset per batch (all of them when the map is small). Each kernel tap is one strided slice.
    Also returns the (row, column) slices that pick the same positions from the layer's output.
    """
    if node.op_type == "Gemm":
        return x.reshape(1, 1, x.shape[0], -1).transpose(0, 1, 3, 2), (slice(None), slice(None))
    a = _attrs(node)
    kh, kw = kernel
    sh, sw = a.get("strides", [1, 1])
    t, l, b, r = a.get("pads", [0, 0, 0, 0])
    g = a.get("group", 1)
    n, c, h, w = x.shape
    ho, wo = (h + t + b - kh) // sh + 1, (w + l + r - kw) // sw + 1
    d = (c // g) * kh * kw
    every = max(1, int(np.ceil(np.sqrt(ho * wo / positions))))
    oy, ox = rng.integers(0, every, size=2)
    ny, nx = len(range(oy, ho, every)), len(range(ox, wo, every))
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r))) if t or l or b or r else x
    taps = [xp[:, :, oy * sh + dy::every * sh, ox * sw + dx::every * sw][:, :, :ny, :nx]
            for dy in range(kh) for dx in range(kw)]
    stacked = np.stack(taps, axis=2)  # (N, C, kh*kw, ny, nx): memory order kept, a fast copy
    return stacked.reshape(n, g, d, ny * nx), (slice(oy, oy + ny * every, every), slice(ox, ox + nx * every, every))


def _positions_per_image(node: onnx.NodeProto, kernel: tuple[int, ...], x: np.ndarray) -> int:
    """A D x D second moment needs well over D samples: SAMPLES_PER_INPUT * D per image, capped."""
    d = x.shape[1] // _attrs(node).get("group", 1) * int(np.prod(kernel))
    return min(MAX_POSITIONS, SAMPLES_PER_INPUT * d)


def _active_range(node: onnx.NodeProto, users: dict[str, list[onnx.NodeProto]],
                  constants: dict[str, np.ndarray]) -> tuple[float, float] | None:
    """(lo, hi) when the layer's only consumer is Relu or a constant Clip: outside it, errors vanish."""
    consumers = users.get(node.output[0], [])
    if len(consumers) != 1:
        return None
    act = consumers[0]
    if act.op_type == "Relu":
        return 0.0, np.inf
    if act.op_type == "Clip":
        bounds = [float(constants[n]) if n in constants else None for n in list(act.input[1:3]) + [""] * 2][:2]
        lo = bounds[0] if len(act.input) > 1 and act.input[1] else -np.inf
        hi = bounds[1] if len(act.input) > 2 and act.input[2] else np.inf
        if lo is None or hi is None:
            return None
        return lo, hi
    return None


def _per_row(node: onnx.NodeProto, rows: int) -> bool:
    """Masked moments only for depthwise convs, where each row has its own moment anyway (free).
    For dense layers a moment per row costs rows x D x D; measured on EfficientNet-Lite0 it did
    not pay (80.5% vs 82.8% of fp32 top-1 on 400 crops, at 40% more build time)."""
    return node.op_type == "Conv" and _attrs(node).get("group", 1) == rows


def input_moments(model: onnx.ModelProto, layers: list[onnx.NodeProto], calibration: CalibrationSet,
                  centered: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Per layer (keyed by its output), the second moment of its fp32 input patches: (groups, D, D);
    for a depthwise conv feeding a ReLU/ReLU6, one per output channel counting only active outputs.

    Per-row moments count only the samples where that output channel is inside the activation's
    linear range (AdaRound's point that the activation belongs in the objective: an error on an
    output that the ReLU6 clips anyway costs nothing). With `centered`, errors are measured after
    bias correction removes the mean shift `e . mean(x)`.
    """
    rng = np.random.default_rng(seed)
    kernels = {t.name: tuple(t.dims[2:]) for t in model.graph.initializer}
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if len(t.dims) == 0}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for name in n.input:
            users.setdefault(name, []).append(n)
    sums: dict[str, np.ndarray] = {}
    firsts: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    masked: dict[str, list] = {}  # key -> [sum m x x^T, sum m x, sum m] per row
    by_input: dict[str, list[onnx.NodeProto]] = {}
    active: dict[str, tuple[float, float]] = {}
    for node in layers:
        by_input.setdefault(node.input[0], []).append(node)
        bounds = _active_range(node, users, constants)
        shape = next((t.dims for t in model.graph.initializer if t.name == node.input[1]), None)
        if bounds is not None and shape is not None and _per_row(node, shape[0]):
            active[node.output[0]] = bounds
    tapped = sorted(set(by_input) | set(active))

    def consume(values: dict[str, np.ndarray]) -> None:
        for name in by_input:
            x = values[name]
            for node in by_input[name]:
                key = node.output[0]
                kernel = kernels[node.input[1]]
                xs, (rows, cols) = _patches(node, kernel, x, _positions_per_image(node, kernel, x), rng)
                # xs: (N, g, D, P) float32; products per image (batched BLAS), float64 across batches
                sums[key] = sums.get(key, 0) + (xs @ xs.swapaxes(-1, -2)).sum(axis=0, dtype=np.float64)
                firsts[key] = firsts.get(key, 0) + xs.sum(axis=(0, 3), dtype=np.float64)
                counts[key] = counts.get(key, 0) + xs.shape[0] * xs.shape[3]
                if key in active:
                    lo, hi = active[key]
                    y = values[key][:, :, rows, cols]
                    m = ((y > lo) & (y < hi)).reshape(y.shape[0], y.shape[1], -1).astype(np.float32)  # (N, O, P)
                    xm = xs * m[:, :, None, :]  # (N, O, D, P): depthwise g == O, dense g == 1 broadcasts
                    acc = masked.setdefault(key, [0, 0, 0])
                    acc[0] = acc[0] + (xm @ xs.swapaxes(-1, -2)).sum(axis=0, dtype=np.float64)
                    acc[1] = acc[1] + xm.sum(axis=(0, 3), dtype=np.float64)
                    acc[2] = acc[2] + m.sum(axis=(0, 2), dtype=np.float64)

    run_tapped(model, tapped, calibration, consume)
    moments = {}
    for key, total in sums.items():
        if counts[key] < MIN_SAMPLES_PER_INPUT * total.shape[1]:
            continue  # too few samples for a D x D moment: rounding would fit noise
        mean = firsts[key] / counts[key]  # (g, D)
        if key in masked:
            s_xx, s_x, s_1 = masked[key]
            h = s_xx / counts[key]
            if centered:
                mu = mean if mean.shape[0] == h.shape[0] else np.broadcast_to(mean, (h.shape[0], mean.shape[1]))
                mx = s_x / counts[key]
                h = h - mu[:, :, None] * mx[:, None, :] - mx[:, :, None] * mu[:, None, :] \
                    + (s_1 / counts[key])[:, None, None] * mu[:, :, None] * mu[:, None, :]
        else:
            h = total / counts[key]
            if centered:
                h = h - mean[:, :, None] * mean[:, None, :]
        moments[key] = h
    return moments


def choose_rounding(w: np.ndarray, grid: WeightGrid, h: np.ndarray, sweeps: int = 8) -> np.ndarray:
    """Integer weights (rows, cols) on `grid`, each the floor or ceil of w/s + z, minimizing
    sum_rows e H e^T with e the dequantized error, by greedy coordinate descent from nearest.

    `h` is (groups, D, D) with rows split evenly over groups and cols == D (a depthwise conv has
    one group per channel). Grid points outside the tensor's [min, max] and the extreme weights
    themselves are never chosen anew, so the backend's range, scale and zero point stay the same.
    """
    g, d = h.shape[0], h.shape[1]
    rows = w.shape[0]
    m = rows // g
    scale = grid.scale.reshape(rows, 1)
    zp = grid.zero_point.reshape(rows, 1)
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
    for _ in range(sweeps):
        flipped = 0
        for i in range(d):
            delta = step[:, :, i]
            gain = 2 * delta * grad[:, :, i] + delta * delta * diag[:, i][:, None]
            gs, rs = np.nonzero(can[:, :, i] & (gain < -1e-12 * (np.abs(gain).max() + 1e-30)))
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
                  centered: bool = True) -> onnx.ModelProto:
    """A copy of `model` whose Conv/Gemm weights are moved to output-aware grid points."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    layers = [n for n in out.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1
              and n.input[1] in inits and supported(n)]
    if not layers:
        return out
    moments = input_moments(model, layers, calibration, centered)
    for node in layers:
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        rows = _rows(node, w)
        grid = grid_of(rows, node)
        h = moments.get(node.output[0])
        if h is None or rows.shape[1] != h.shape[1] or rows.shape[0] % h.shape[0]:
            continue  # a layout we did not sample as expected: leave nearest rounding
        q = choose_rounding(rows, grid, h)
        moved = q != grid.nearest
        new_rows = np.where(moved, (q - grid.zero_point[:, None]) * grid.scale[:, None], rows)
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(
            _from_rows(node, new_rows, w.shape).astype(np.float32), node.input[1]))
    return out
