"""Profiles: `toolkit` reproduces the real toolkit with nothing added, `best` (the default) adds
unified's improvements as options of their own; and the calibrated range of an internal Softmax."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import unified
from unified.core.errors import BackendError

TOKENS, DIM = 256, 16
pytestmark = pytest.mark.filterwarnings("ignore::unified.inputs.model_source.UnknownNormalizationWarning")


def attention_model() -> onnx.ModelProto:
    """One attention head over 256 tokens: softmax(q k^T / 4) v, the Softmax inside the graph."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.15, (DIM, DIM)).astype(np.float32), n) for n in ("wq", "wk", "wv")]
    inits.append(numpy_helper.from_array(np.array(0.25, np.float32), "temp"))
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]), helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Mul", ["s", "temp"], ["st"]),
        helper.make_node("Softmax", ["st"], ["a"], axis=-1), helper.make_node("MatMul", ["a", "v"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", TOKENS, DIM])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", TOKENS, DIM])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def attention():
    rng = np.random.default_rng(1)
    calibration = [rng.normal(0, 1, (1, TOKENS, DIM)).astype(np.float32) for _ in range(8)]
    x = rng.normal(0, 1, (2, TOKENS, DIM)).astype(np.float32)
    model = attention_model()
    ref = unified.quantize(model, backend="ort", mode="fp32").run(x)
    return model, calibration, x, ref


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _softmax_scale(qm) -> float:
    if qm.backend == "ort":
        qdq = onnx.load_from_string(qm.artifact.model_bytes)
        q = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "a")
        return float(numpy_helper.to_array(next(i for i in qdq.graph.initializer if i.name == q.input[1])))
    return qm.artifact.graph.tensors["a"].scale


@pytest.mark.parametrize("backend", ["ort", "rknn", "tengine"])
def test_internal_softmax_takes_its_calibrated_range(attention, backend) -> None:
    """Over 256 tokens the attention probabilities sit near 1/256: the toolkits' fixed 1/255 step
    rounds most of them to 0 or 1 step; the calibrated range keeps them (best profile)."""
    model, calibration, x, ref = attention
    best = unified.quantize(model, backend=backend, calibration=calibration, cache=False)
    toolkit = unified.quantize(model, backend=backend, calibration=calibration, cache=False,
                               profile="toolkit")
    assert _softmax_scale(toolkit) == pytest.approx(1 / 255, rel=1e-6)
    assert _softmax_scale(best) < 0.5 / 255
    cos_best, cos_toolkit = _cos(best.run(x), ref), _cos(toolkit.run(x), ref)
    assert cos_best >= 0.99 and 1 - cos_best < (1 - cos_toolkit) / 4, (cos_best, cos_toolkit)


def test_a_final_softmax_keeps_the_fixed_range(attention) -> None:
    """Probabilities an application reads are not clipped to a calibrated maximum."""
    model, calibration, x, _ = attention
    final = onnx.ModelProto()
    final.CopyFrom(model)
    final.graph.node[-1].CopyFrom(helper.make_node("Identity", ["a"], ["y"]))
    qm = unified.quantize(final, backend="rknn", calibration=calibration, cache=False)
    assert qm.output_quant.scale == pytest.approx(1 / 255, rel=1e-6)


@pytest.mark.parametrize("backend,options,message", [
    ("rknn", {"profile": "toolkit", "bias_correction": True}, "bias_correction=True is unified's own addition"),
    ("rknn", {"profile": "toolkit", "quantized_algorithm": "mmse"}, "quantized_algorithm='mmse' under profile='toolkit'"),
    ("rknn", {"profile": "toolkit", "fuse_residual_add": False}, "fuse_residual_add=False"),
    ("tengine", {"profile": "toolkit", "rounding": "adaptive"}, "rounding='adaptive' is unified's own addition"),
    ("ort", {"profile": "toolkit", "calibrated_softmax": True}, "calibrated_softmax=True"),
    ("tengine", {"profile": "toolkit", "stream_equalization": True}, "stream_equalization=True is unified's own addition"),
    ("ort", {"profile": "toolkit", "stream_equalization": True}, "stream_equalization=True"),
    ("rknn", {"profile": "fastest"}, "profile='fastest' is not one of best, toolkit"),
])
def test_the_toolkit_profile_refuses_additions(attention, backend, options, message) -> None:
    model, calibration, _, _ = attention
    with pytest.raises(BackendError, match=message.replace("(", r"\(").replace(")", r"\)")):
        unified.quantize(model, backend=backend, calibration=calibration, cache=False, **options)


def test_toolkit_profile_defaults_are_the_toolkits(attention) -> None:
    model, calibration, _, _ = attention
    rknn = unified.quantize(model, backend="rknn", calibration=calibration, cache=False, profile="toolkit")
    tengine = unified.quantize(model, backend="tengine", calibration=calibration, cache=False,
                               profile="toolkit")
    assert (rknn.artifact.extra["profile"], rknn.artifact.extra["quantized_algorithm"]) == ("toolkit", "normal")
    assert (tengine.artifact.extra["algorithm"], tengine.artifact.extra["rounding"]) == ("minmax", "nearest")
    best = unified.quantize(model, backend="rknn", calibration=calibration, cache=False)
    assert (best.artifact.extra["profile"], best.artifact.extra["quantized_algorithm"]) == ("best", "mmse")


def test_a_sequence_input_is_calibrated_not_taken_for_pixels(attention) -> None:
    """rknn folds mean/std into an image input (8-bit pixels); a rank-3 sequence input has no
    pixels, so its range comes from calibration: N(0, 1) tokens reach beyond +-3, not +-1."""
    model, calibration, _, _ = attention
    qm = unified.quantize(model, backend="rknn", calibration=calibration, cache=False)
    p = qm.input_quant
    lo, hi = (-128 - p.zero_point) * p.scale, (127 - p.zero_point) * p.scale
    assert lo < -3 and hi > 3, (lo, hi)


def _activation_scales(qm) -> dict[str, float]:
    qdq = onnx.load_from_string(qm.artifact.model_bytes)
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in qdq.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits and inits[n.input[1]].size == 1}


def test_ort_best_ranges_minimize_mse_unless_a_calibrate_method_is_given(tiny_model) -> None:
    """Under best, every activation gets the range of unified's MSE estimator (pinned on the input,
    whose histogram is the calibration data itself: Gaussian, where MSE clips the rare tails);
    never wider than min-max; naming ORT's own calibrate_method keeps ORT's min-max ranges."""
    from unified.quant.ranges import Histogram, mse as mse_range

    rng = np.random.default_rng(7)
    calibration = [rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(16)]
    values = np.concatenate([c.reshape(-1) for c in calibration])
    h = Histogram(min(float(values.min()), 0.0), max(float(values.max()), 0.0))
    h.add(values)
    lo, hi = mse_range(h, 256)
    common = dict(backend="ort", calibration=calibration, cache=False)
    mse = _activation_scales(unified.quantize(tiny_model, **common))
    calibrated = _activation_scales(unified.quantize(tiny_model, activation_ranges="calibrated", **common))
    named = _activation_scales(unified.quantize(tiny_model, calibrate_method="minmax", **common))
    assert named == calibrated and set(mse) == set(calibrated)
    assert mse["input"] == pytest.approx((hi - lo) / 255, rel=1e-6)
    assert calibrated["input"] == pytest.approx((values.max() - values.min()) / 255, rel=1e-6)
    assert mse["input"] < 0.99 * calibrated["input"]
    assert all(mse[k] <= calibrated[k] * (1 + 1e-6) for k in mse)
