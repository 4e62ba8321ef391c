"""Empirical bias correction: after it, every conv/Gemm's mean pre-activation per channel on the
calibration images equals fp32's to within half a bias step, measured on the integer graph
itself with all earlier layers corrected; it is on by default for rknn and tengine under `best`,
and refused under the toolkit profile."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import unified
from tests.helpers import normal_calibration
from unified.consistency.tiny_models import tiny_classifier
from unified.core.errors import BackendError
from unified.graph.float_stats import channel_means
from unified.graph.prepare import prepare
from unified.inputs.calibration import CalibrationSet
from unified.quant.empirical_bias import _correctable


def _mean_errors(qm, model, calibration) -> dict[str, np.ndarray]:
    """Per corrected layer: |engine mean - fp32 mean| per channel, in units of the bias step."""
    graph = qm.artifact.graph
    layers = {n.name: n for n in graph.nodes if _correctable(n)}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def tap(name: str, kind: str, array: np.ndarray) -> None:
        if kind == "accumulator" and name in layers:
            axes = (0,) + tuple(range(2, array.ndim))
            sums[name] = sums.get(name, 0) + array.astype(np.float64).sum(axis=axes)
            counts[name] = counts.get(name, 0) + array.size // array.shape[1]

    qm.artifact.interpreter.run(graph.input_q.quantize(np.concatenate(calibration)), tap=tap)
    fp32 = channel_means(prepare(model), sorted(n.attrs["preact"] for n in layers.values()),
                         CalibrationSet(calibration, "test"))
    errors = {}
    for name, node in layers.items():
        step = graph.tensors[node.inputs[0]].scale * node.arrays["w_scale"]
        errors[name] = np.abs(sums[name] / counts[name] * step - fp32[node.attrs["preact"]]) / step
    return errors


def test_each_layer_matches_fp32_means_to_half_a_step() -> None:
    model, calibration = tiny_classifier(), normal_calibration()
    corrected = unified.quantize(model, backend="tengine", calibration=calibration, cache=False)
    plain = unified.quantize(model, backend="tengine", calibration=calibration, cache=False,
                             empirical_bias_correction=False)
    after, before = _mean_errors(corrected, model, calibration), _mean_errors(plain, model, calibration)
    assert set(after) == {"conv1", "dwconv", "fc"}
    for name, error in after.items():
        assert error.max() <= 0.5 + 1e-6, (name, error)
    assert max(e.max() for e in before.values()) > 2.0  # without it, some channel is off by steps
    # only int32 biases change: weights, scales and zero points are the scheme's
    for a, b in zip(corrected.artifact.graph.nodes, plain.artifact.graph.nodes):
        for key in a.arrays:
            if key != "bias":
                np.testing.assert_array_equal(a.arrays[key], b.arrays[key])
    assert corrected.artifact.graph.tensors == plain.artifact.graph.tensors


def test_defaults_per_backend_and_toolkit_refusal() -> None:
    model, calibration = tiny_classifier(), normal_calibration()
    for backend in ("rknn", "tengine"):
        default = unified.quantize(model, backend=backend, calibration=calibration, cache=False)
        off = unified.quantize(model, backend=backend, calibration=calibration, cache=False,
                               empirical_bias_correction=False)
        changed = [n.name for n, m in zip(default.artifact.graph.nodes, off.artifact.graph.nodes)
                   if "bias" in n.arrays and not np.array_equal(n.arrays["bias"], m.arrays["bias"])]
        assert changed, backend  # on by default under best: the biases differ from the build without it
        with pytest.raises(BackendError, match="empirical_bias_correction"):
            unified.quantize(model, backend=backend, calibration=calibration, cache=False, profile="toolkit",
                             empirical_bias_correction=True)


def _with_reshape_head(shape: list[int]) -> onnx.ModelProto:
    """tiny_classifier with its Flatten replaced by Reshape(shape), as a torch `x.view(-1, C)` exports."""
    model = tiny_classifier()
    nodes = list(model.graph.node)
    i = next(k for k, n in enumerate(nodes) if n.op_type == "Flatten")
    nodes[i] = helper.make_node("Reshape", ["gap", "head_shape"], ["flat"], name="head_reshape")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), "head_shape"))
    onnx.checker.check_model(model)
    return model


def test_a_classifier_head_reshape_keeps_the_correction() -> None:
    """A head that flattens with Reshape(-1, C) keeps every sample on axis 0, so the correction
    runs (it used to refuse every graph holding a Reshape: torch-exported classifiers lost it)."""
    model, calibration = _with_reshape_head([-1, 8]), normal_calibration()
    corrected = unified.quantize(model, backend="tengine", calibration=calibration, cache=False)
    for name, error in _mean_errors(corrected, model, calibration).items():
        assert error.max() <= 0.5 + 1e-6, (name, error)


def test_a_reshape_that_moves_samples_leaves_the_biases_alone() -> None:
    """Reshape(-1, 4) turns each sample's 8 channels into two rows: chunk-wise running would mix
    the bookkeeping, so the graph keeps lowering's biases exactly (the analytical correction only)."""
    from unified.engine.integer_graph import IntegerGraph
    from unified.quant.empirical_bias import correct_biases_empirically

    model, calibration = _with_reshape_head([-1, 4]), normal_calibration()
    fc_w = next(t for t in model.graph.initializer if t.name == "fc_w")  # (10, 4) for the (2N, 4) rows
    fc_w.CopyFrom(numpy_helper.from_array(np.random.default_rng(2).normal(0, 0.5, (10, 4)).astype(np.float32), "fc_w"))
    plain = unified.quantize(model, backend="tengine", calibration=calibration, cache=False,
                             empirical_bias_correction=False)
    graph: IntegerGraph = plain.artifact.graph
    before = {n.name: n.arrays["bias"].copy() for n in graph.nodes if _correctable(n)}
    assert correct_biases_empirically(graph, prepare(model), CalibrationSet(calibration, "test")) == 0
    for n in graph.nodes:
        if n.name in before:
            np.testing.assert_array_equal(n.arrays["bias"], before[n.name])


def test_the_correction_measures_on_the_first_fifty_images() -> None:
    from unified.quant.empirical_bias import MAX_SAMPLES, measurement_set

    rng = np.random.default_rng(0)
    images = [rng.normal(0, 1, (1, 3, 4, 4)).astype(np.float32) for _ in range(MAX_SAMPLES + 7)]
    subset = measurement_set(CalibrationSet(images, "photos"))
    assert MAX_SAMPLES == 50 and len(subset) == 50
    assert all(a is b for a, b in zip(subset.tensors, images[:50]))
    small = CalibrationSet(images[:12], "few")
    assert measurement_set(small) is small


def test_a_transpose_that_keeps_the_images_first_keeps_the_correction() -> None:
    """A Transpose with perm[0] == 0 (ShuffleNet's channel shuffle, a spatial swap) moves nothing
    across images: the correction runs through it."""
    model, calibration = tiny_classifier(), normal_calibration()
    nodes = list(model.graph.node)
    i = next(k for k, n in enumerate(nodes) if n.name == "relu1")
    nodes.insert(i + 1, helper.make_node("Transpose", ["r1"], ["r1t"], name="swap_hw", perm=[0, 1, 3, 2]))
    for n in nodes[i + 2:]:
        n.input[:] = ["r1t" if x == "r1" else x for x in n.input]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    corrected = unified.quantize(model, backend="tengine", calibration=calibration, cache=False)
    assert "transpose" in {n.op for n in corrected.artifact.graph.nodes}
    for name, error in _mean_errors(corrected, model, calibration).items():
        assert error.max() <= 0.5 + 1e-6, (name, error)
