"""Residual-stream equalization: exact in float, every channel of a stream on one range, and only
streams whose every producer and reader is linear."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import unified
from unified.inputs.calibration import CalibrationSet
from unified.quant.stream_equalization import MAX_FACTOR, channel_abs_maxima, equalize_streams, find_streams

#: how far apart the stream's channels are made to range (max 8x, min 1/4 of the first)
SPREAD = np.array([1.0, 2.0, 4.0, 8.0, 0.5, 0.25], np.float32)
STREAM = ["s0", "d", "s1"]


def _residual_model(read_by_pool: bool = False) -> onnx.ModelProto:
    """stem Conv+Relu -> project P1 (s0) -> expand E + Relu -> project P2 (d) -> Add (s1) -> reader.
    The stream is {s0, d, s1}; the reader is a 1x1 Conv, or (`read_by_pool`) a GlobalAveragePool,
    which is not linear in the sense the transform needs (it would have to rescale its output)."""
    rng = np.random.default_rng(0)

    def conv(name: str, c_out: int, c_in: int, k: int, scale_rows: np.ndarray | None = None) -> list:
        w = rng.normal(0, 0.5, (c_out, c_in, k, k)).astype(np.float32)
        b = rng.normal(0, 0.1, c_out).astype(np.float32)
        if scale_rows is not None:
            w, b = w * scale_rows[:, None, None, None], b * scale_rows
        return [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]

    inits = (conv("stem", 8, 3, 3) + conv("p1", 6, 8, 1, SPREAD) + conv("e", 12, 6, 1) + conv("p2", 6, 12, 1, SPREAD)
             + conv("r", 4, 6, 1))
    nodes = [helper.make_node("Conv", ["x", "stem_w", "stem_b"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "p1_w", "p1_b"], ["s0"]),
             helper.make_node("Conv", ["s0", "e_w", "e_b"], ["e"]),
             helper.make_node("Relu", ["e"], ["er"]),
             helper.make_node("Conv", ["er", "p2_w", "p2_b"], ["d"]),
             helper.make_node("Add", ["s0", "d"], ["s1"])]
    if read_by_pool:
        nodes += [helper.make_node("GlobalAveragePool", ["s1"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    else:
        nodes += [helper.make_node("Conv", ["s1", "r_w", "r_b"], ["rr"]), helper.make_node("GlobalAveragePool", ["rr"], ["g"]),
                  helper.make_node("Flatten", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6 if read_by_pool else 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_finds_the_stream_with_its_producers_and_readers() -> None:
    streams = find_streams(_residual_model())
    assert len(streams) == 1
    stream = streams[0]
    assert stream.tensors == sorted(STREAM)
    assert sorted(n.input[1] for n in stream.producers) == ["p1_w", "p2_w"]
    assert sorted(n.input[1] for n in stream.readers) == ["e_w", "r_w"]


def test_exact_in_float_and_every_channel_on_one_range(tiny_calibration, tiny_batch) -> None:
    model = _residual_model()
    calibration = CalibrationSet(tiny_calibration, "tiny")
    before = channel_abs_maxima(model, STREAM, calibration)
    stream_max = np.max([before[t] for t in STREAM], axis=0)
    assert stream_max.max() / stream_max.min() > 10  # the premise: channels far apart
    equalized, count = equalize_streams(model, calibration)
    assert count == 1
    np.testing.assert_allclose(_run(equalized, tiny_batch), _run(model, tiny_batch), rtol=1e-4, atol=1e-5)
    after = channel_abs_maxima(equalized, STREAM, calibration)
    per_channel = np.max([after[t] for t in STREAM], axis=0)
    # each channel divided by its own maximum over the stream times their geometric mean
    np.testing.assert_allclose(per_channel, np.exp(np.log(stream_max).mean()), rtol=1e-4)
    assert stream_max.max() / stream_max.min() < MAX_FACTOR ** 2  # no factor was capped here


def test_a_stream_read_by_a_pool_is_left_alone(tiny_calibration) -> None:
    model = _residual_model(read_by_pool=True)
    assert find_streams(model) == []
    equalized, count = equalize_streams(model, CalibrationSet(tiny_calibration, "tiny"))
    assert count == 0
    assert equalized.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("backend", ["rknn", "tengine"])
def test_the_builds_quantize_the_equalized_stream(backend, tiny_calibration) -> None:
    """With the stream's widest channel scaled down, its 8-bit range (hence its step) shrinks; the
    stream tensor keeps its name, so everything downstream of the build still finds it."""
    model = _residual_model()
    pre = unified.Preprocess(resize=16, crop=16)
    steps = {}
    for on in (False, True):
        qm = unified.quantize(model, backend=backend, calibration=tiny_calibration, preprocess=pre, cache=False,
                              stream_equalization=on)
        steps[on] = qm.artifact.graph.tensors["s1"].scale
    assert steps[True] < steps[False] / 2
