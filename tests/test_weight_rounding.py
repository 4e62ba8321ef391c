"""Output-aware weight rounding (AdaRound's objective, solved by coordinate descent) on tiny models."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import unified
from unified.backends.tengine.scheme import TengineScheme
from unified.graph.prepare import prepare
from unified.inputs.calibration import CalibrationSet
from unified.quant.bias_correction import correct_biases
from unified.quant.layer_moments import _patches, input_moments
from unified.quant.pipeline import fake_quantizer, weight_grid
from unified.quant.weight_rounding import WeightGrid, choose_rounding, round_weights

PRE16 = unified.Preprocess(resize=16, crop=16)


def _conv_model(w: np.ndarray, group: int, strides: list[int], pads: list[int]) -> onnx.ModelProto:
    c_in = w.shape[1] * group
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=group, strides=strides, pads=pads,
                            kernel_shape=list(w.shape[2:]))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c_in, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("group, c_out, kernel, strides, pads", [
    (1, 5, 3, [2, 2], [0, 0, 1, 1]),   # stem-like: stride 2, TF-style asymmetric padding
    (4, 4, 3, [1, 1], [1, 1, 1, 1]),   # depthwise
    (2, 6, 1, [1, 1], [0, 0, 0, 0]),   # grouped 1x1
])
def test_patches_line_up_with_the_weights(group, c_out, kernel, strides, pads) -> None:
    """Every sampled patch, dotted with its output channel's weight row, gives that conv output."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(c_out, 4 // group, kernel, kernel)).astype(np.float32)
    model = _conv_model(w, group, strides, pads)
    x = rng.normal(size=(2, 4, 9, 9)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    patches, picked = _patches(model.graph.node[0], w.shape[2:], x, positions=10_000, rng=rng)  # all, row-major
    n, g, d, p = patches.shape
    assert (n, g, p) == (2, group, y.shape[2] * y.shape[3])
    rows = w.reshape(group, c_out // group, d)
    by_patches = np.einsum("gmd,ngdp->ngmp", rows, patches).reshape(2, c_out, *y.shape[2:])
    np.testing.assert_allclose(by_patches, y, rtol=1e-4, atol=1e-4)
    assert y[:, :, picked[0], picked[1]].shape == y.shape  # the output slices pick the same positions


def test_correlated_inputs_by_hand() -> None:
    """Two identical inputs, weights 0.4 and 0.4 on a step-1 grid: nearest rounds both to 0, an
    output error of 0.8 per unit input; rounding one up and one down leaves 0.2."""
    w = np.array([[0.4, 0.4, -2.0, 3.0]])
    grid = WeightGrid(np.array([1.0]), np.array([2]), 0, 255, np.array([[2, 2, 0, 5]]))
    h = np.zeros((1, 4, 4))
    h[0, :2, :2] = 1.0                         # x0 == x1, the extremes see no input
    q = choose_rounding(w, grid, h)
    assert sorted(q[0, :2].tolist()) == [2, 3]  # one of them rounded up
    assert q[0, 2:].tolist() == [0, 5]          # the tensor's min and max never move
    err = (q - 2) * 1.0 - w
    assert (err @ h[0] @ err.T).item() == pytest.approx(0.04)


def test_never_worse_than_nearest_and_stays_on_the_grid() -> None:
    rng = np.random.default_rng(1)
    d, rows = 12, 20
    basis = rng.normal(size=(d, 3))
    x = rng.normal(size=(5000, 3)) @ basis.T + 0.1 * rng.normal(size=(5000, d))  # strongly correlated
    h = (x.T @ x / len(x))[None]
    w = rng.normal(0, 0.2, size=(rows, d))
    scheme = TengineScheme()
    grid = weight_grid(scheme, "minmax", w)
    q = choose_rounding(w, grid, h)
    zp, s = grid.zero_point[:, None], grid.scale[:, None]

    def loss(qq: np.ndarray) -> float:
        e = (qq - zp) * s - w
        return float(np.einsum("ri,ij,rj->", e, h[0], e))

    assert loss(q) < 0.5 * loss(grid.nearest)
    base = np.floor(w / s + zp)
    assert np.all((q == base) | (q == base + 1)) and q.min() >= 0 and q.max() <= 255
    moved = np.where(q != grid.nearest, (q - zp) * s, w)
    assert moved.min() == w.min() and moved.max() == w.max()  # so the scale and zero point stay


@pytest.fixture(scope="module")
def prepared_tiny(tiny_model) -> onnx.ModelProto:
    return prepare(tiny_model)


def test_rounded_model_quantizes_to_the_chosen_integers(prepared_tiny, tiny_calibration) -> None:
    scheme = TengineScheme()
    cal = CalibrationSet(list(tiny_calibration), "tiny")
    rounded = round_weights(prepared_tiny, cal, lambda rows, node: weight_grid(scheme, "minmax", rows))
    before = {t.name: numpy_helper.to_array(t) for t in prepared_tiny.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in rounded.graph.initializer}
    layers = [n for n in prepared_tiny.graph.node if n.op_type in ("Conv", "Gemm")]
    moments = input_moments(prepared_tiny, layers, cal, centered=True)
    improved = 0
    for node in layers:
        w0 = before[node.input[1]].astype(np.float64)
        w1 = after[node.input[1]].astype(np.float64)
        rows0, rows1 = w0.reshape(w0.shape[0], -1), w1.reshape(w1.shape[0], -1)
        g0, g1 = weight_grid(scheme, "minmax", rows0), weight_grid(scheme, "minmax", rows1)
        np.testing.assert_array_equal(g0.scale, g1.scale)              # the scheme sees the same range
        np.testing.assert_array_equal(g0.zero_point, g1.zero_point)
        assert np.all(np.abs(g1.nearest - g0.nearest) <= 1)             # floor or ceil of the original
        if node.op_type == "Gemm":  # 8 pooled vectors for 8 inputs: too few samples, kept nearest
            assert node.output[0] not in moments
            np.testing.assert_array_equal(g1.nearest, g0.nearest)
            continue
        h = moments[node.output[0]]
        groups = h.shape[0]

        def loss(q: np.ndarray) -> float:
            e = ((q - g0.zero_point[:, None]) * g0.scale[:, None] - rows0).reshape(groups, -1, h.shape[1])
            return float(np.einsum("gmi,gij,gmj->", e, h, e))

        assert loss(g1.nearest) < loss(g0.nearest)
        improved += 1
    assert improved == 2


def test_bias_correction_measures_the_shift_from_the_original_weights(prepared_tiny, tiny_calibration) -> None:
    """After rounding moved weights onto the grid, the shift to undo is quantized minus *original*."""
    scheme = TengineScheme()
    cal = CalibrationSet(list(tiny_calibration), "tiny")
    quantize = fake_quantizer(scheme, "minmax")
    rounded = round_weights(prepared_tiny, cal, lambda rows, node: weight_grid(scheme, "minmax", rows))
    against_original = correct_biases(rounded, cal, quantize, prepared_tiny)
    against_itself = correct_biases(rounded, cal, quantize)
    moved_nodes = [n for n in prepared_tiny.graph.node if n.op_type == "Conv"]
    b_orig = {t.name: numpy_helper.to_array(t) for t in against_original.graph.initializer}
    b_self = {t.name: numpy_helper.to_array(t) for t in against_itself.graph.initializer}
    assert any(not np.allclose(b_orig[n.input[2]], b_self[n.input[2]]) for n in moved_nodes)
    # the quantized network's mean output per channel matches fp32 better with the right reference
    fp32 = unified.quantize(prepared_tiny, backend="ort", mode="fp32").run(np.concatenate(tiny_calibration))
    errors = []
    for corrected in (against_original, against_itself):
        fq = onnx.ModelProto()
        fq.CopyFrom(corrected)
        inits = {t.name: t for t in fq.graph.initializer}
        for node in fq.graph.node:
            if node.op_type in ("Conv", "Gemm"):
                w = numpy_helper.to_array(inits[node.input[1]])
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(quantize(w, node), node.input[1]))
        out = unified.quantize(fq, backend="ort", mode="fp32").run(np.concatenate(tiny_calibration))
        errors.append(float(np.abs((out - fp32).mean(axis=0)).mean()))
    assert errors[0] < errors[1]


def test_tengine_rounding_option(tiny_model, tiny_calibration) -> None:
    common = dict(backend="tengine", calibration=tiny_calibration, preprocess=PRE16, cache=False)  # leave no cache entry
    adaptive = unified.quantize(tiny_model, **common)
    nearest = unified.quantize(tiny_model, rounding="nearest", **common)
    assert (adaptive.artifact.extra["rounding"], nearest.artifact.extra["rounding"]) == ("adaptive", "nearest")
    w_a = [n.arrays["w"] for n in adaptive.artifact.graph.nodes if n.op == "conv"]
    w_n = [n.arrays["w"] for n in nearest.artifact.graph.nodes if n.op == "conv"]
    assert any(not np.array_equal(a, b) for a, b in zip(w_a, w_n))
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(w_a, w_n))
    with pytest.raises(unified.BackendError, match="rounding='up' is not one of adaptive, nearest"):
        unified.quantize(tiny_model, rounding="up", **common)


def test_moments_count_only_outputs_the_activation_passes() -> None:
    """Depthwise conv -> Relu with one channel always negative (clipped: its errors cost nothing)
    and one always positive: that row's moment is zero, the other's is the plain centered moment."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(2, 1, 2, 2)).astype(np.float32)
    b = np.array([-100.0, 100.0], np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="dw", group=2),
             helper.make_node("Relu", ["y"], ["r"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    xs = [rng.normal(size=(1, 2, 4, 4)).astype(np.float32) for _ in range(6)]
    h = input_moments(model, list(model.graph.node[:1]), CalibrationSet(xs, "x"), centered=True)["y"]
    assert h.shape == (2, 4, 4)                                  # one moment per output channel
    np.testing.assert_allclose(h[0], 0.0, atol=1e-12)
    windows = np.lib.stride_tricks.sliding_window_view(np.concatenate(xs)[:, 1], (2, 2), axis=(1, 2))
    patches = windows.reshape(-1, 4).astype(np.float64)      # all 3 x 3 positions of 6 images
    np.testing.assert_allclose(h[1], np.cov(patches.T, bias=True), rtol=1e-5, atol=1e-7)


def test_per_channel_rounding_keeps_every_rows_range() -> None:
    """On a per-channel grid a weight may not leave its own row's [min, max] (that would change the
    row's scale); a per-tensor grid only keeps the tensor's."""
    rng = np.random.default_rng(5)
    w = rng.normal(size=(4, 12)) * np.array([[0.1], [1.0], [3.0], [0.5]])
    h = np.eye(12)[None] + 0.9  # strongly correlated taps: many flips pay off
    lo, hi = w.min(axis=1), w.max(axis=1)
    scale = (hi - lo) / 255
    zp = np.rint(-lo / scale) - 128
    grid = WeightGrid(scale, zp.astype(np.int64), -128, 127, np.clip(np.rint(w / scale[:, None] + zp[:, None]), -128, 127))
    q = choose_rounding(w, grid, h, per_channel=True)
    moved = q != grid.nearest
    written = np.where(moved, (q - zp[:, None]) * scale[:, None], w)  # what round_weights writes back
    np.testing.assert_array_equal(written.min(axis=1), lo)
    np.testing.assert_array_equal(written.max(axis=1), hi)
    assert moved.any()


@pytest.mark.parametrize("backend", ["ort", "rknn"])
def test_adaptive_rounding_on_per_channel_backends(tiny_model, tiny_calibration, backend) -> None:
    """rknn and ort round weights adaptively by default (best) and land on the chosen integers:
    the integers differ from nearest rounding by at most one step, and some differ."""
    common = dict(backend=backend, calibration=tiny_calibration, preprocess=PRE16, cache=False)

    def conv_integers(qm) -> list[np.ndarray]:
        if backend == "rknn":
            return [n.arrays["w"].astype(np.int64) for n in qm.artifact.graph.nodes if n.op == "conv"]
        qdq = onnx.load_from_string(qm.artifact.model_bytes)
        inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
        dq = [n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
              and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim == 4]
        return [inits[n.input[0]].astype(np.int64) for n in dq]

    adaptive, nearest = unified.quantize(tiny_model, **common), unified.quantize(tiny_model, rounding="nearest", **common)
    a, n = conv_integers(adaptive), conv_integers(nearest)
    assert len(a) == len(n) >= 2
    assert all(np.abs(x - y).max() <= 1 for x, y in zip(a, n))
    assert any(not np.array_equal(x, y) for x, y in zip(a, n))
    with pytest.raises(unified.BackendError, match="rounding='adaptive' is unified's own addition"):
        unified.quantize(tiny_model, profile="toolkit", rounding="adaptive", **common)
