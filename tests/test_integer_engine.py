"""The integer engine: rounding, fixed point, the RKNN scheme, integer-only execution, fidelity."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import unified
from unified.backends.rknn.scheme import RknnScheme
from unified.core.rounding import RoundingPolicy
from unified.engine.fidelity import divergence_by_depth, end_to_end, layer_agreement
from unified.engine.fixed_point import (
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    requantize,
)

PRE16 = unified.Preprocess(resize=16, crop=16)
TIES = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])


@pytest.mark.parametrize("policy, expected", [
    (RoundingPolicy.TIES_TO_EVEN, [-2, -2, 0, 0, 2, 2]),
    (RoundingPolicy.TIES_AWAY, [-3, -2, -1, 1, 2, 3]),
    (RoundingPolicy.TRUNCATE, [-2, -1, 0, 0, 1, 2]),
])
def test_rounding_policy_table(policy: RoundingPolicy, expected: list[int]) -> None:
    assert policy.round(TIES).tolist() == expected
    # the same policy on the integer path: x / 2 for x = 2 * value
    assert policy.divide_by_pot((TIES * 2).astype(np.int64), 1).tolist() == expected
    # and through the fused requantization with a multiplier of exactly 1/2
    m, s = quantize_multiplier(0.5)
    assert requantize((TIES * 2).astype(np.int64), m, s, policy).tolist() == expected


def test_quantize_multiplier_matches_tflite() -> None:
    m, s = quantize_multiplier(np.array([0.5, 0.25, 1.0, 0.0]))
    assert m.tolist() == [1 << 30, 1 << 30, 1 << 30, 0]
    assert s.tolist() == [0, -1, 1, 0]
    m, s = quantize_multiplier(0.0123)
    assert abs(m[0] * 2.0 ** (s[0] - 31) - 0.0123) < 1e-10


def test_requantization_is_within_half_a_step_of_the_real_product() -> None:
    rng = np.random.default_rng(0)
    real = rng.uniform(1e-5, 0.9, size=64)
    m, s = quantize_multiplier(real)
    acc = rng.integers(-(2**24), 2**24, size=(1000, 64))
    for policy in (RoundingPolicy.TIES_TO_EVEN, RoundingPolicy.TIES_AWAY):
        err = np.abs(requantize(acc, m, s, policy) - acc * real)
        assert err.max() <= 0.5 + 2**24 * 2.0**-31  # rounding + the multiplier's own 31-bit error


@pytest.mark.parametrize("policy", list(RoundingPolicy))
def test_fused_requantize_is_bit_identical(policy: RoundingPolicy) -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        m, s = quantize_multiplier(rng.uniform(1e-6, 100.0, size=16))
        acc = rng.integers(-(2**26), 2**26, size=(2, 16, 40)).astype(np.int64)
        acc[0, :, :4] = [0, 1, -1, 1 << 20]
        ref = multiply_by_quantized_multiplier(acc, m.reshape(1, -1, 1), s.reshape(1, -1, 1), policy)
        assert np.array_equal(requantize(acc, m.reshape(1, -1, 1), s.reshape(1, -1, 1), policy), ref)


def test_rknn_normal_scales_by_hand() -> None:
    scheme = RknnScheme("channel")
    t = scheme.activation_params(-1.0, 3.0)
    assert t.scale == pytest.approx(4.0 / 255)
    assert t.zero_point == -128 - round(-1.0 / (4.0 / 255))  # = -64 (round(-63.75) = -64)
    assert t.zero_point == -64
    # a range not containing 0 is widened to contain it
    t = scheme.activation_params(0.5, 2.0)
    assert (t.scale, t.zero_point) == (pytest.approx(2.0 / 255), -128)
    # per-channel weights: each channel its own asymmetric range
    w = np.array([[-0.5, 0.25, 1.0], [-2.0, -1.0, 0.0]])
    lo, hi = np.minimum(w.min(1), 0), np.maximum(w.max(1), 0)
    scale, zp = scheme.weight_params(lo, hi)
    assert scale.tolist() == pytest.approx([1.5 / 255, 2.0 / 255])
    assert zp.tolist() == [-128 - round(-0.5 / (1.5 / 255)), 127]
    q = scheme.quantize_weight(w, scale, zp)
    assert q.tolist()[1] == [-128, np.rint(-1.0 / (2 / 255)) + 127, 127]
    # lite0's input: mean 127, std 128 -> scale 1/128, zero point -1 (q = pixel - 128)
    t = scheme.activation_params(-127 / 128, 1.0)
    assert (t.scale, t.zero_point) == (pytest.approx(1 / 128), -1)


def test_mean_std_are_folded_into_an_exact_int8_input(tiny_model) -> None:
    pre = unified.Preprocess(resize=16, crop=16)
    cal = [pre(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)) for i in range(8)]
    qm = unified.quantize(tiny_model, backend="rknn", calibration=cal, preprocess=pre)
    assert qm.input_quant.dtype == "int8" and qm.input_quant.layout == "NHWC"
    assert (qm.input_quant.scale, qm.input_quant.zero_point) == (pytest.approx(1 / 128), -1)
    pixels = np.random.default_rng(5).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    q = qm.quantize_input(pixels)
    assert q.dtype == np.int8 and q.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(q.astype(int), pixels.astype(int) - 128)
    np.testing.assert_array_equal(qm.quantize_input(pre.normalize(pixels)), q)  # float path agrees


@pytest.fixture(scope="module")
def tiny_rknn(tiny_model, tiny_calibration):
    return unified.quantize(tiny_model, backend="rknn", calibration=tiny_calibration, preprocess=PRE16)


def test_integer_only_between_quantize_and_dequantize(tiny_rknn, tiny_batch) -> None:
    from unified.engine.interpreter import Interpreter

    seen: list[tuple[str, str, np.dtype]] = []
    q = np.ascontiguousarray(tiny_rknn.quantize_input(tiny_batch).transpose(0, 3, 1, 2))
    reference = Interpreter(tiny_rknn.artifact.graph, reference=True)
    out = reference.run(q, tap=lambda node, kind, arr: seen.append((node, kind, arr.dtype)))
    activations = [d for _, k, d in seen if k == "activation"]
    accumulators = [d for _, k, d in seen if k == "accumulator"]
    assert len(activations) >= 6 and len(accumulators) >= 4
    assert all(d == np.int8 for d in activations), activations
    assert all(np.issubdtype(d, np.integer) for d in accumulators), accumulators
    # the fast path (float64 carriers where lowering proved exactness) is bit-identical
    np.testing.assert_array_equal(tiny_rknn.artifact.interpreter.run(q), out)


def test_fast_and_reference_interpreters_agree_on_lite0_sized_values(tiny_model) -> None:
    """Random weights and inputs spanning the whole int8 range: fast and reference paths agree."""
    from unified.engine.interpreter import Interpreter

    rng = np.random.default_rng(11)
    cal = [rng.uniform(-3, 3, (1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    for algorithm in ("normal", "mmse"):
        qm = unified.quantize(tiny_model, backend="rknn", calibration=cal, preprocess=PRE16, quantized_algorithm=algorithm)
        g = qm.artifact.graph
        assert any(n.attrs.get("requant_f64") for n in g.nodes)
        x = rng.integers(-128, 128, (6, 3, 16, 16)).astype(np.int8)
        fast, ref = Interpreter(g).run_all(x), Interpreter(g, reference=True).run_all(x)
        for name in ref:
            np.testing.assert_array_equal(fast[name], ref[name], err_msg=name)


def test_conv_accumulation_is_exact_integer_math(tiny_rknn, tiny_batch) -> None:
    """The BLAS-based accumulation equals a pure int64 convolution, element for element."""
    graph = tiny_rknn.artifact.graph
    conv = next(n for n in graph.nodes if n.op == "conv" and n.attrs["group"] == 1)
    x = np.ascontiguousarray(tiny_rknn.quantize_input(tiny_batch).transpose(0, 3, 1, 2))
    accs = []
    tiny_rknn.artifact.interpreter.run(x, tap=lambda node, kind, arr: accs.append(arr) if node == conv.name and kind == "accumulator" else None)
    xs = np.pad(x.astype(np.int64) - conv.attrs["zx"], ((0, 0), (0, 0), (1, 1), (1, 1)))
    w = conv.arrays["w"].astype(np.int64)
    ref = np.zeros(accs[0].shape, np.int64)
    for i in range(3):
        for j in range(3):
            ref += np.einsum("nchw,oc->nohw", xs[:, :, i:i + 16, j:j + 16], w[:, :, i, j])
    ref += conv.arrays["bias"].reshape(1, -1, 1, 1)
    np.testing.assert_array_equal(accs[0], ref)


def test_run_quantized_and_dequantize_by_hand(tiny_rknn, tiny_batch) -> None:
    q_in = tiny_rknn.quantize_input(tiny_batch)
    q_out = tiny_rknn.run_quantized(q_in)
    assert q_out.dtype == np.int8 and q_out.shape == (4, 10)
    oq = tiny_rknn.output_quant
    by_hand = (q_out.astype(np.float64) - oq.zero_point) * oq.scale
    np.testing.assert_allclose(tiny_rknn.run(tiny_batch), by_hand, rtol=1e-6)


def test_close_to_fp32(tiny_model, tiny_rknn, tiny_batch) -> None:
    ref = unified.quantize(tiny_model, backend="ort", mode="fp32").run(tiny_batch)
    out = tiny_rknn.run(tiny_batch)
    assert np.abs(out - ref).max() <= 4 * tiny_rknn.output_quant.scale + 0.02 * np.abs(ref).max()


@pytest.mark.parametrize("algorithm", ["normal", "mmse", "kl_divergence"])
@pytest.mark.parametrize("method", ["channel", "layer"])
def test_algorithms_and_methods(tiny_model, tiny_calibration, tiny_batch, algorithm, method) -> None:
    qm = unified.quantize(tiny_model, backend="rknn", calibration=tiny_calibration, preprocess=PRE16,
                          quantized_algorithm=algorithm, quantized_method=method)
    ref = unified.quantize(tiny_model, backend="ort", mode="fp32").run(tiny_batch)
    out = qm.run(tiny_batch)
    cos = (out * ref).sum() / np.linalg.norm(out) / np.linalg.norm(ref)
    assert cos > 0.97, (algorithm, method, cos)
    scales = [n.arrays["w_scale"] for n in qm.artifact.graph.nodes if n.op == "conv"]
    assert all((len(set(s.tolist())) == 1) == (method == "layer") for s in scales)


def test_fidelity_on_tiny_model(tiny_rknn, tiny_batch) -> None:
    x = np.ascontiguousarray(tiny_rknn.quantize_input(tiny_batch).transpose(0, 3, 1, 2))
    for layer in layer_agreement(tiny_rknn.artifact.graph, x):
        assert layer.within_one_step >= 0.999, str(layer)
    engine, export = end_to_end(tiny_rknn.artifact.graph, x)
    assert np.abs(engine.astype(int) - export.astype(int)).max() <= 2


def test_fidelity_counts_exact_agreement_and_drift_by_depth(tiny_rknn, tiny_batch) -> None:
    """`equal` is the stricter share (never above `within_one_step`); the drift list follows the
    graph's tensors in order and ends on the very comparison `end_to_end` makes."""
    graph = tiny_rknn.artifact.graph
    x = np.ascontiguousarray(tiny_rknn.quantize_input(tiny_batch).transpose(0, 3, 1, 2))
    layers = layer_agreement(graph, x)
    assert all(0.99 <= layer.equal <= layer.within_one_step for layer in layers), [str(r) for r in layers]
    drift = divergence_by_depth(graph, x)
    expected = [o for n in graph.nodes if n.op not in ("const", "float") for o in n.outputs if o in graph.tensors]
    assert [d.tensor for d in drift] == expected
    assert drift[-1].tensor == graph.output_name
    engine, export = end_to_end(graph, x)
    assert drift[-1].differing == float((engine != export).mean())
    assert drift[-1].max_steps == int(np.abs(engine.astype(int) - export.astype(int)).max())


# -- graphs with ops the engine must refuse or fall back on --------------------------------------

def _model_with_op(op: str) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c"], ["e"], name="strange_node"),
             helper.make_node("GlobalAveragePool", ["e"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["logits"], name="flat")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_strict_refuses_an_unsupported_op_naming_it(tiny_calibration) -> None:
    with pytest.raises(unified.UnsupportedOperatorError,
                       match=r"LpNormalization x1 \('strange_node': no integer kernel for LpNormalization\)"):
        unified.quantize(_model_with_op("LpNormalization"), backend="rknn", calibration=tiny_calibration[:2], preprocess=PRE16,
                         strict=True)


@pytest.mark.parametrize("backend", ["rknn", "tengine"])
def test_an_unsupported_op_runs_in_float_on_its_own_and_is_recorded(backend, tiny_calibration, tiny_batch) -> None:
    model = _model_with_op("LpNormalization")
    calibration = list(tiny_calibration) + [tiny_batch[i:i + 1] for i in range(4)]
    qm = unified.quantize(model, backend=backend, calibration=calibration, preprocess=PRE16)
    assert qm.float_nodes == {"strange_node": "no integer kernel for LpNormalization"}
    assert [n.source for n in qm.artifact.graph.nodes if n.op == "float"] == ["LpNormalization(float)"]
    ref = unified.quantize(model, backend="ort", mode="fp32").run(tiny_batch)
    np.testing.assert_allclose(qm.run(tiny_batch), ref, atol=4 * qm.output_quant.scale)


def test_float_fallback_option_forces_a_supported_op_to_float(tiny_calibration, tiny_batch) -> None:
    model = _model_with_op("Relu")
    qm = unified.quantize(model, backend="rknn", calibration=tiny_calibration, preprocess=PRE16,
                          float_fallback=["Relu"], quantized_algorithm="normal")
    assert qm.float_nodes == {"strange_node": "float_fallback option"}
    assert unified.quantize(model, backend="rknn", calibration=tiny_calibration, preprocess=PRE16,
                            float_fallback=["Relu"], strict=True).float_nodes == {"strange_node": "float_fallback option"}


def _model_with_float_island() -> onnx.ModelProto:
    """Conv -> [LpNormalization, ArgMax -> Cast (a float island)] -> Add -> GlobalAveragePool: the island's int64
    tensor needs no calibration; only its float outputs enter the integer graph."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("LpNormalization", ["c"], ["e"], name="norm", axis=1),
             helper.make_node("ArgMax", ["e"], ["idx"], name="argmax", axis=1, keepdims=1),
             helper.make_node("Cast", ["idx"], ["idx_f"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["idx_f", "tenth"], ["scaled"], name="scale"),
             helper.make_node("Add", ["e", "scaled"], ["r"], name="add"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["logits"], name="flat")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                              [w, numpy_helper.from_array(np.float32(0.1), "tenth")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_float_island_needs_no_statistics_for_shape_tensors(tiny_calibration, tiny_batch) -> None:
    model = _model_with_float_island()
    calibration = list(tiny_calibration) + [tiny_batch[i:i + 1] for i in range(4)]
    qm = unified.quantize(model, backend="rknn", calibration=calibration, preprocess=PRE16)
    ref = unified.quantize(model, backend="ort", mode="fp32").run(tiny_batch)
    np.testing.assert_allclose(qm.run(tiny_batch), ref, atol=4 * qm.output_quant.scale)
    assert qm.float_nodes == {"norm": "no integer kernel for LpNormalization", "argmax": "no integer kernel for ArgMax",
                              "cast": "no integer kernel for Cast"}
    integer_inputs = {i for n in qm.artifact.graph.nodes if n.op != "float" for i in n.inputs}
    assert "idx" not in qm.artifact.graph.tensors and "idx" not in integer_inputs


# -- bad input --------------------------------------------------------------------------------

def test_nan_and_inf_calibration(tiny_model, tiny_calibration, tmp_path) -> None:
    bad = [t.copy() for t in tiny_calibration[:3]]
    bad[1][0, 0, 0, 0] = np.inf
    with pytest.raises(unified.CalibrationError, match="item 1.*Inf"):
        unified.quantize(tiny_model, backend="rknn", calibration=bad, preprocess=PRE16)


def test_wrong_image_size_and_channels(tiny_rknn) -> None:
    with pytest.raises(unified.InputError, match="does not match"):
        tiny_rknn.run_quantized(np.zeros((1, 20, 20, 3), np.int8))
    with pytest.raises(unified.InputError, match="NHWC RGB"):
        tiny_rknn.quantize_input(np.zeros((1, 16, 16, 4), np.uint8))
    with pytest.raises(unified.InputError, match="shape"):
        tiny_rknn.run(np.zeros((1, 1, 16, 16), np.float32))
    with pytest.raises(unified.InputError, match="NaN"):
        tiny_rknn.run(np.full((1, 3, 16, 16), np.nan, np.float32))


def test_save_load_is_bit_exact_and_rejects_damage(tiny_rknn, tiny_batch, tmp_path) -> None:
    path = tmp_path / "tiny.rknn-emu"
    tiny_rknn.save(path)
    loaded = unified.load(path)
    assert loaded.backend == "rknn"
    np.testing.assert_array_equal(loaded.run(tiny_batch), tiny_rknn.run(tiny_batch))
    assert loaded.input_quant == tiny_rknn.input_quant
    data = path.read_bytes()
    (tmp_path / "cut").write_bytes(data[:-100])
    with pytest.raises(unified.SavedModelError):
        unified.load(tmp_path / "cut")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut", "tiny.rknn-emu"]


def test_unknown_options_are_rejected(tiny_model, tiny_calibration) -> None:
    with pytest.raises(unified.BackendError, match="quantized_algorithm='fast'"):
        unified.quantize(tiny_model, backend="rknn", calibration=tiny_calibration, quantized_algorithm="fast")
    with pytest.raises(unified.BackendError, match="unknown options.*'colour'"):
        unified.quantize(tiny_model, backend="rknn", calibration=tiny_calibration, colour="red")


def test_dataset_txt_calibration(tmp_path, tiny_model) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        lines.append(f"im{i}.png")
    (tmp_path / "dataset.txt").write_text("\n".join(lines) + "\n")
    qm = unified.quantize(tiny_model, backend="rknn", calibration=str(tmp_path / "dataset.txt"), preprocess=PRE16)
    assert qm.run(np.zeros((1, 3, 16, 16), np.float32)).shape == (1, 10)


@pytest.mark.parametrize("op", ["Erf", "Gelu", "Mish", "Softplus", "Elu"])
@pytest.mark.parametrize("backend", ["rknn", "tengine"])
def test_unary_functions_are_integer_tables_checked_by_the_oracle(op, backend, tiny_calibration, tiny_batch) -> None:
    model = _model_with_op(op)
    model.opset_import[0].version = 20  # Gelu is opset 20
    qm = unified.quantize(model, backend=backend, calibration=tiny_calibration, preprocess=PRE16)
    assert qm.float_nodes == {}
    assert [n.source for n in qm.artifact.graph.nodes if n.op == "lut"] == [op]
    x = qm.artifact.to_model(qm.quantize_input(tiny_batch))
    for layer in layer_agreement(qm.artifact.graph, x):
        assert layer.within_one_step >= 0.999, str(layer)


def _upsampling_model(mode: str, coords: str, nearest: str) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "", "scales"], ["up"], name="up", mode=mode,
                              coordinate_transformation_mode=coords, nearest_mode=nearest),
             helper.make_node("Conv", ["up", "w2"], ["logits"], name="conv2", pads=[1, 1, 1, 1])]
    w2 = numpy_helper.from_array(np.random.default_rng(1).normal(0, 0.3, (2, 4, 3, 3)).astype(np.float32), "w2")
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2, 32, 32])], [w, w2, scales])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("coords, nearest", [("asymmetric", "floor"), ("half_pixel", "round_prefer_floor")])
def test_nearest_upsampling_is_integer_and_matches_onnx(coords, nearest, tiny_calibration, tiny_batch) -> None:
    model = _upsampling_model("nearest", coords, nearest)
    qm = unified.quantize(model, backend="rknn", calibration=tiny_calibration, preprocess=PRE16)
    assert qm.float_nodes == {}
    assert "upsample_nearest" in [n.op for n in qm.artifact.graph.nodes]
    x = qm.artifact.to_model(qm.quantize_input(tiny_batch))
    for layer in layer_agreement(qm.artifact.graph, x):
        assert layer.within_one_step >= 0.999, str(layer)


def test_bilinear_upsampling_runs_in_float_and_says_why(tiny_calibration) -> None:
    qm = unified.quantize(_upsampling_model("linear", "half_pixel", "round_prefer_floor"), backend="rknn",
                          calibration=tiny_calibration, preprocess=PRE16)
    assert list(qm.float_nodes) == ["up"] and "only nearest upsampling" in qm.float_nodes["up"]


def test_sub_and_div_by_constants_run_as_integer_add_and_mul(tiny_calibration, tiny_batch) -> None:
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    mean = numpy_helper.from_array(np.array([0.1, -0.2, 0.3, 0.0], np.float32).reshape(1, 4, 1, 1), "mean")
    std = numpy_helper.from_array(np.array([0.5, 2.0, 1.5, 1.0], np.float32).reshape(1, 4, 1, 1), "std")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sub", ["c", "mean"], ["s"], name="sub"),
             helper.make_node("Div", ["s", "std"], ["d"], name="div"),
             helper.make_node("GlobalAveragePool", ["d"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["logits"], name="flat")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [w, mean, std])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calibration = list(tiny_calibration) + [tiny_batch[i:i + 1] for i in range(4)]
    qm = unified.quantize(model, backend="rknn", calibration=calibration, preprocess=PRE16)
    assert qm.float_nodes == {}
    assert [n.source for n in qm.artifact.graph.nodes if n.op in ("add", "mul")] == ["Add", "Mul"]
    ref = unified.quantize(model, backend="ort", mode="fp32").run(tiny_batch)
    np.testing.assert_allclose(qm.run(tiny_batch), ref, atol=4 * qm.output_quant.scale)


def _conv_then(op_nodes, extra_inits, out_shape) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])] + op_nodes
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)], [w] + extra_inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("backend", ["rknn", "tengine"])
def test_prelu_and_gather_are_integer(backend, tiny_calibration, tiny_batch) -> None:
    slope = numpy_helper.from_array(np.array([0.1, 0.25, -0.5, 1.5], np.float32).reshape(4, 1, 1), "slope")
    idx = numpy_helper.from_array(np.array([3, 0, 2], np.int64), "idx")
    model = _conv_then([helper.make_node("PRelu", ["c", "slope"], ["p"], name="prelu"),
                        helper.make_node("Gather", ["p", "idx"], ["out"], name="pick", axis=1)],
                       [slope, idx], ["N", 3, 16, 16])
    calibration = list(tiny_calibration) + [tiny_batch[i:i + 1] for i in range(4)]
    qm = unified.quantize(model, backend=backend, calibration=calibration, preprocess=PRE16)
    assert qm.float_nodes == {}
    assert [n.op for n in qm.artifact.graph.nodes][-2:] == ["channel_lut", "gather"]
    ref = unified.quantize(model, backend="ort", mode="fp32").run(tiny_batch)
    # a slope of 1.5 carries 1.5 input half-steps into the output, on top of the conv's own error
    np.testing.assert_allclose(qm.run(tiny_batch), ref, atol=4 * qm.output_quant.scale)
    x = qm.artifact.to_model(qm.quantize_input(tiny_batch))
    for layer in layer_agreement(qm.artifact.graph, x):
        assert layer.within_one_step >= 0.999, str(layer)


def test_strict_message_is_short_and_names_each_op_type_once(tiny_calibration) -> None:
    nodes = [helper.make_node("LpNormalization", [f"n{i}" if i else "c"], [f"n{i + 1}"], name=f"norm{i}", axis=1)
             for i in range(40)]
    nodes.append(helper.make_node("Hardmax", ["n40"], ["out"], name="hard", axis=1))
    model = _conv_then(nodes, [], ["N", 4, 16, 16])
    with pytest.raises(unified.UnsupportedOperatorError) as info:
        unified.quantize(model, backend="tengine", calibration=tiny_calibration, preprocess=PRE16, strict=True)
    message = str(info.value)
    assert len(message) < 600, len(message)
    assert "LpNormalization x40 ('norm0' and 39 more" in message and "Hardmax x1 ('hard'" in message


@pytest.mark.parametrize("strides, pads, output_padding", [([2, 2], [0, 0, 0, 0], [0, 0]), ([2, 2], [1, 1, 1, 1], [1, 1]),
                                                           ([1, 1], [1, 1, 1, 1], [0, 0])])
@pytest.mark.parametrize("backend", ["rknn", "tengine"])
def test_conv_transpose_is_integer_and_matches_its_export(backend, strides, pads, output_padding, tiny_calibration,
                                                          tiny_batch) -> None:
    rng = np.random.default_rng(3)
    wt = numpy_helper.from_array(rng.normal(0, 0.3, (4, 5, 3, 3)).astype(np.float32), "wt")  # (C_in, C_out, kh, kw)
    bt = numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(np.float32), "bt")
    h = (16 - 1) * strides[0] + output_padding[0] + 3 - pads[0] - pads[2]
    model = _conv_then([helper.make_node("ConvTranspose", ["c", "wt", "bt"], ["out"], name="up", strides=strides,
                                         pads=pads, output_padding=output_padding)], [wt, bt], ["N", 5, h, h])
    calibration = list(tiny_calibration) + [tiny_batch[i:i + 1] for i in range(4)]
    qm = unified.quantize(model, backend=backend, calibration=calibration, preprocess=PRE16)
    assert qm.float_nodes == {}
    ref = unified.quantize(model, backend="ort", mode="fp32").run(tiny_batch)
    out = qm.run(tiny_batch)
    assert out.shape == ref.shape == (4, 5, h, h)
    # within 4 output steps except where the default range estimator clips a rare outlier
    assert (np.abs(out - ref) <= 4 * qm.output_quant.scale).mean() >= 0.999
    x = qm.artifact.to_model(qm.quantize_input(tiny_batch))
    for layer in layer_agreement(qm.artifact.graph, x):
        assert layer.within_one_step >= 0.999, str(layer)
    from unified.engine.interpreter import Interpreter

    reference = Interpreter(qm.artifact.graph, reference=True).run(x)
    np.testing.assert_array_equal(Interpreter(qm.artifact.graph).run(x), reference)


def _residual_model() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b2")
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["out"], name="residual")]
    graph = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 16, 16])], [w1, w2, b2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_rknn_fuses_a_conv_with_its_residual_add_on_request(tiny_calibration, tiny_batch, tmp_path) -> None:
    """fuse_residual_add=True: the conv before a residual Add writes the Add's output with one
    rounding (as RKNN-Toolkit2 does); exact between executors, faithful to its QDQ export, and an
    export imports back to the same integers."""
    from unified.engine.interpreter import Interpreter

    model = _residual_model()
    plain = unified.quantize(model, backend="rknn", calibration=tiny_calibration, preprocess=PRE16)
    fused = unified.quantize(model, backend="rknn", calibration=tiny_calibration, preprocess=PRE16,
                             fuse_residual_add=True)
    assert [n.op for n in plain.artifact.graph.nodes] == ["conv", "conv", "add"]
    g = fused.artifact.graph
    assert [n.op for n in g.nodes] == ["conv", "conv_add"]
    assert g.nodes[1].outputs == ["out"] and g.nodes[1].inputs[1] == "r1" and "c2" not in g.tensors
    x = fused.artifact.to_model(fused.quantize_input(tiny_batch))
    np.testing.assert_array_equal(Interpreter(g).run(x), Interpreter(g, reference=True).run(x))
    for layer in layer_agreement(g, x):
        assert layer.within_one_step >= 0.999, str(layer)
    ref = unified.quantize(model, backend="ort", mode="fp32").run(tiny_batch)
    assert np.abs(fused.run(tiny_batch) - ref).max() <= 4 * fused.output_quant.scale
    fused.export_qdq(tmp_path / "m.onnx")
    again = unified.quantize(str(tmp_path / "m.onnx"), backend="rknn", preprocess=PRE16, fuse_residual_add=True)
    assert again.import_report == []
    native = fused.quantize_input(tiny_batch)
    np.testing.assert_array_equal(again.run_quantized(native), fused.run_quantized(native))
