"""Float statistics that several builds of one model share are computed once per process, and
only for the very same model bytes, calibration content and arguments."""
from __future__ import annotations

import numpy as np
import pytest

import unified
from unified.consistency.tiny_models import tiny_classifier
from unified.graph import float_memo, float_stats
from unified.graph.prepare import prepare
from unified.inputs.calibration import CalibrationSet
from unified.quant import layer_moments


@pytest.fixture()
def tapped_runs(monkeypatch):
    """Counts the calibration passes over a float model."""
    float_memo.clear()
    runs: list[int] = []
    original = float_stats.run_tapped

    def counting(*args, **kwargs):
        runs.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(float_stats, "run_tapped", counting)
    monkeypatch.setattr(layer_moments, "run_tapped", counting)
    yield runs
    float_memo.clear()


def _calibration(seed: int) -> CalibrationSet:
    rng = np.random.default_rng(seed)
    return CalibrationSet([rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(8)], "test")


def test_moments_are_sampled_once_for_the_same_model_and_calibration(tapped_runs) -> None:
    model = prepare(tiny_classifier())
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    first = layer_moments.input_moments(model, layers, _calibration(0), centered=True)
    again = layer_moments.input_moments(model, layers, _calibration(0), centered=True)  # equal content
    assert len(tapped_runs) == 1 and again is first
    other = layer_moments.input_moments(model, layers, _calibration(1), centered=True)
    uncentered = layer_moments.input_moments(model, layers, _calibration(1), centered=False)
    assert len(tapped_runs) == 3
    assert set(other) == set(first)
    assert not np.allclose(other[layers[0].output[0]], first[layers[0].output[0]])
    assert not np.allclose(uncentered[layers[0].output[0]], other[layers[0].output[0]])


def test_a_changed_model_is_not_served_the_old_statistics(tapped_runs) -> None:
    model = prepare(tiny_classifier(seed=0))
    names = [model.graph.node[0].output[0]]
    means = float_stats.channel_means(model, names, _calibration(0))
    changed = prepare(tiny_classifier(seed=1))
    changed_means = float_stats.channel_means(changed, [changed.graph.node[0].output[0]], _calibration(0))
    assert len(tapped_runs) == 2
    assert not np.allclose(means[names[0]], changed_means[changed.graph.node[0].output[0]])


def test_rknn_and_tengine_builds_share_the_float_passes(monkeypatch, tiny_calibration) -> None:
    float_memo.clear()
    computed: list[str] = []
    moments, means = layer_moments._grouped_moments, float_stats._channel_means
    monkeypatch.setattr(layer_moments, "_grouped_moments", lambda *a, **k: computed.append("moments") or moments(*a, **k))
    monkeypatch.setattr(float_stats, "_channel_means", lambda *a, **k: computed.append("means") or means(*a, **k))
    model = tiny_classifier()
    unified.quantize(model, backend="rknn", calibration=tiny_calibration, cache=False)
    # layer moments (adaptive rounding), input means (bias correction), pre-activation means
    # (empirical bias correction)
    assert computed == ["moments", "means", "means"]
    qm = unified.quantize(model, backend="tengine", calibration=tiny_calibration, cache=False)
    assert computed == ["moments", "means", "means"]  # all three reused
    float_memo.clear()
    fresh = unified.quantize(model, backend="tengine", calibration=tiny_calibration, cache=False)
    assert computed[3:] == ["moments", "means", "means"]
    x = np.stack([c[0] for c in tiny_calibration[:4]])
    np.testing.assert_array_equal(qm.run(x), fresh.run(x))
    float_memo.clear()
