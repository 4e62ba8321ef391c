"""Second moments of each layer's fp32 input patches, the quadratic form of a layer's output error.

A layer computes y = W x over input patches x (a Conv's receptive fields, a Gemm's rows). If its
weights change by e, its output changes by e x, and the expected squared change is e H e^T with
H = E[x x^T]. Weight rounding (`weight_rounding`) minimizes exactly that, so it needs H for every
layer: we tap every layer input with ONNX Runtime, sample patches, and accumulate.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from unified.graph.float_stats import run_tapped
from unified.graph.onnx_model import node_attributes
from unified.inputs.calibration import CalibrationSet
from unified.terminal.progress import progress

#: input patches sampled per image and layer: SAMPLES_PER_INPUT per patch element, at most MAX_POSITIONS
SAMPLES_PER_INPUT = 8
MAX_POSITIONS = 512
#: layers seeing fewer samples than this per patch element (a classifier fed 100 pooled vectors
#: of 1280 values) keep nearest rounding: their moment is too noisy to optimize against
MIN_SAMPLES_PER_INPUT = 4
#: at most this many bytes of moments are accumulated in one pass over the calibration set; the
#: layers of a large network (ResNet-50: 4608 x 4608 moments) are split over several passes
MOMENT_BUDGET_BYTES = int(os.environ.get("UNIFIED_MOMENT_BUDGET_MB", "384")) * 2**20


def _patches(node: onnx.NodeProto, kernel: tuple[int, ...], x: np.ndarray, positions: int,
             rng: np.random.Generator) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Input patches as float32 (images, groups, inputs per group D, positions), in the weights' order.

    About `positions` output positions per image are taken, on a regular sub-grid with a random
    offset per batch (all of them when the map is small). Each kernel tap is one strided slice.
    Also returns the (row, column) slices that pick the same positions from the layer's output.
    """
    if node.op_type == "Gemm":
        return x.reshape(1, 1, x.shape[0], -1).transpose(0, 1, 3, 2), (slice(None), slice(None))
    a = node_attributes(node)
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
    d = x.shape[1] // node_attributes(node).get("group", 1) * int(np.prod(kernel))
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
    if act.op_type != "Clip":
        return None

    def bound(index: int, default: float) -> float | None:
        if len(act.input) <= index or not act.input[index]:
            return float(node_attributes(act).get("min" if index == 1 else "max", default))  # opset < 11 attributes
        name = act.input[index]
        return float(constants[name]) if name in constants else None  # computed bounds: unknown

    lo, hi = bound(1, -np.inf), bound(2, np.inf)
    return None if lo is None or hi is None else (lo, hi)


def _per_row(node: onnx.NodeProto, rows: int) -> bool:
    """Masked moments only for depthwise convs, where each row has its own moment anyway (free).
    For dense layers a moment per row costs rows x D x D; measured on EfficientNet-Lite0 it did
    not pay (80.5% vs 82.8% of fp32 top-1 on 400 crops, at 40% more build time)."""
    return node.op_type == "Conv" and node_attributes(node).get("group", 1) == rows


def _moment_bytes(node: onnx.NodeProto, dims: dict[str, tuple[int, ...]]) -> int:
    """Bytes of a layer's float64 moment(s): groups x D x D, or one D x D per row when masked."""
    w = dims[node.input[1]]
    d = int(np.prod(w[1:]))
    groups = node_attributes(node).get("group", 1) if node.op_type == "Conv" else 1
    return 8 * d * d * max(groups, 1) * 2


def input_moments(model: onnx.ModelProto, layers: list[onnx.NodeProto], calibration: CalibrationSet,
                  centered: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Per layer (keyed by its output), the second moment of its fp32 input patches (see
    `_input_moments`), over as many passes as `MOMENT_BUDGET_BYTES` needs. Memoized per process
    (`float_memo`): the rknn and tengine builds of one model sample the same moments."""
    from unified.graph.float_memo import memoized

    arguments = ([node.output[0] for node in layers], centered, seed, MOMENT_BUDGET_BYTES)
    return memoized("input_moments", model, calibration, arguments,
                    lambda: _grouped_moments(model, layers, calibration, centered, seed))


def _grouped_moments(model: onnx.ModelProto, layers: list[onnx.NodeProto], calibration: CalibrationSet,
                     centered: bool, seed: int) -> dict[str, np.ndarray]:
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    groups: list[list[onnx.NodeProto]] = [[]]
    used = 0
    for node in layers:
        size = _moment_bytes(node, dims)
        if groups[-1] and used + size > MOMENT_BUDGET_BYTES:
            groups.append([])
            used = 0
        groups[-1].append(node)
        used += size
    moments: dict[str, np.ndarray] = {}
    for index, group in enumerate(groups):
        label = "layer moments" if len(groups) == 1 else f"layer moments {index + 1}/{len(groups)}"
        moments.update(_input_moments(model, group, calibration, centered, seed, label))
    return moments


def _input_moments(model: onnx.ModelProto, layers: list[onnx.NodeProto], calibration: CalibrationSet,
                   centered: bool, seed: int, label: str) -> dict[str, np.ndarray]:
    """Per layer (keyed by its output), the second moment of its fp32 input patches: (groups, D, D);
    for a depthwise conv feeding a ReLU/ReLU6, one per output channel counting only active outputs.

    Per-row moments count only the samples where that output channel is inside the activation's
    linear range (AdaRound's point that the activation belongs in the objective: an error on an
    output that the ReLU6 clips anyway costs nothing). With `centered`, errors are measured after
    bias correction removes the mean shift `e . mean(x)`.
    """
    rng = np.random.default_rng(seed)
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
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
        if bounds is not None and _per_row(node, dims[node.input[1]][0]):
            active[node.output[0]] = bounds
    tapped = sorted(set(by_input) | set(active))
    batch = 4  # the tapped run holds every layer input of a batch at once: 4 images keep that small
    ticker = iter(progress(range(-(-len(calibration) // batch)), -(-len(calibration) // batch), label,
                           f"{len(calibration)} images"))
    skipped: set[str] = set()

    def consume(values: dict[str, np.ndarray]) -> None:
        next(ticker, None)
        for name in by_input:
            x = values[name]
            for node in by_input[name]:
                key = node.output[0]
                if key in skipped:
                    continue
                kernel = dims[node.input[1]][2:]
                xs, (rows, cols) = _patches(node, kernel, x, _positions_per_image(node, kernel, x), rng)
                if xs.shape[3] * len(calibration) < MIN_SAMPLES_PER_INPUT * xs.shape[2]:
                    skipped.add(key)  # too few samples over the whole set: not worth accumulating
                    continue
                # xs: (N, g, D, P) -> (g, D, N*P): one float32 GEMM per layer and batch (the images
                # of a batch summed inside BLAS, not by a float64 reduction over N), float64 across batches
                n, g, d, p = xs.shape
                xt = np.ascontiguousarray(xs.transpose(1, 2, 0, 3)).reshape(g, d, n * p)
                firsts[key] = firsts.get(key, 0) + xt.sum(axis=2, dtype=np.float64)
                counts[key] = counts.get(key, 0) + n * p
                if key not in active:
                    sums[key] = sums.get(key, 0) + (xt @ xt.swapaxes(-1, -2)).astype(np.float64)
                else:  # only outputs inside the activation's range count (per-row layers: g == O)
                    lo, hi = active[key]
                    y = values[key][:, :, rows, cols]
                    m = ((y > lo) & (y < hi)).reshape(n, y.shape[1], -1).astype(np.float32)  # (N, O, P)
                    mt = np.ascontiguousarray(m.transpose(1, 0, 2)).reshape(-1, n * p)    # (O, N*P)
                    xm = xt * mt[:, None, :]
                    acc = masked.setdefault(key, [0, 0, 0])
                    acc[0] = acc[0] + (xm @ xt.swapaxes(-1, -2)).astype(np.float64)
                    acc[1] = acc[1] + xm.sum(axis=2, dtype=np.float64)
                    acc[2] = acc[2] + mt.sum(axis=1, dtype=np.float64)

    run_tapped(model, tapped, calibration, consume, batch_size=batch)
    for _ in ticker:
        pass
    moments = {}
    for key, count in counts.items():
        d = firsts[key].shape[1]
        if count < MIN_SAMPLES_PER_INPUT * d:
            continue  # too few samples for a D x D moment: rounding would fit noise
        mean = firsts[key] / count  # (g, D)
        if key in masked:
            s_xx, s_x, s_1 = masked[key]
            h = s_xx / count
            if centered:  # E[m (x - mu)(x - mu)^T], mu the unmasked mean that bias correction uses
                mx = s_x / count
                h = h - mean[:, :, None] * mx[:, None, :] - mx[:, :, None] * mean[:, None, :] \
                    + (s_1 / count)[:, None, None] * mean[:, :, None] * mean[:, None, :]
        else:
            h = sums[key] / count
            if centered:
                h = h - mean[:, :, None] * mean[:, None, :]
        moments[key] = h
    return moments
