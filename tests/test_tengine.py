"""The tengine backend: Tengine's uint8 scheme, the application-side I/O, scale tables."""
from __future__ import annotations

import numpy as np
import pytest

import unified
from unified.backends.tengine.plugin import write_scale_file
from unified.backends.tengine.scheme import TengineScheme
from unified.engine.fidelity import end_to_end, layer_agreement
from unified.graph.prepare import prepare
from unified.quant.equalization import equalize

PRE16 = unified.Preprocess(resize=16, crop=16)


def test_scheme_by_hand() -> None:
    s = TengineScheme()
    t = s.activation_params(-1.0, 3.0)
    # the value Tengine's table prints, as Tengine reads it back (a C float)
    assert t.scale == float(np.float32(f"{4.0 / 255:f}"))
    assert t.zero_point == int(1.0 / (4.0 / 255))          # truncated: 63.75 -> 63 (RKNN would round)
    assert t.zero_point == 63
    t = s.activation_params(-0.3, 0.7)                     # -min/scale = 76.5 -> 76, never 77
    assert t.zero_point == 76
    w = np.array([[-0.5, 0.25, 1.0, 0.0]])
    scale, zp = s.weight_params(np.array([-0.5]), np.array([1.0]))
    assert zp.tolist() == [int(0.5 / (1.5 / 255))]        # 85
    q = s.quantize_weight(w, scale, zp)
    expected = np.clip(np.sign(w / scale[0] + zp[0]) * np.floor(np.abs(w / scale[0] + zp[0]) + 0.5), 0, 255)
    assert q.tolist() == expected.tolist()
    assert s.softmax_output().scale == pytest.approx(1 / 255) and s.softmax_output().zero_point == 0
    sym = TengineScheme(symmetric=True).activation_params(0.0, 6.0)  # ACIQ: zero point 127 on every tensor
    assert sym.zero_point == 127


@pytest.fixture(scope="module")
def tiny_tengine(tiny_model, tiny_calibration):
    return unified.quantize(tiny_model, backend="tengine", calibration=tiny_calibration, preprocess=PRE16)


def test_application_side_io(tiny_tengine, tiny_batch) -> None:
    iq, oq = tiny_tengine.input_quant, tiny_tengine.output_quant
    assert (iq.dtype, iq.layout, oq.dtype) == ("uint8", "NCHW", "uint8")
    u8 = tiny_tengine.quantize_input(tiny_batch)
    by_hand = np.clip(np.sign(tiny_batch / iq.scale + iq.zero_point)
                      * np.floor(np.abs(tiny_batch / iq.scale + iq.zero_point) + 0.5), 0, 255)
    np.testing.assert_array_equal(u8, by_hand.astype(np.uint8))
    raw = tiny_tengine.run_quantized(u8)
    assert raw.dtype == np.uint8
    np.testing.assert_allclose(tiny_tengine.run(tiny_batch), (raw.astype(np.float64) - oq.zero_point) * oq.scale, rtol=1e-6)
    with pytest.raises(unified.InputError, match="normalized float"):
        tiny_tengine.quantize_input(np.zeros((1, 16, 16, 3), np.uint8))


def test_weights_are_uint8_per_tensor(tiny_tengine) -> None:
    for node in tiny_tengine.artifact.graph.nodes:
        if node.op in ("conv", "gemm"):
            assert len(set(node.arrays["w_scale"].tolist())) == 1
            q = node.arrays["w"].astype(np.int64) + node.arrays["w_zero_point"].reshape((-1,) + (1,) * (node.arrays["w"].ndim - 1))
            assert q.min() >= 0 and q.max() <= 255


def test_best_shrinks_the_per_tensor_weight_range_of_a_large_heavy_tailed_layer() -> None:
    """A per-tensor uint8 grid is set by the widest weight. Under best each layer's range is the
    one of least squared rounding error over its weights (`quant.ranges.weight_ranges`, "mse"):
    on a 256x256 1x1 conv with Laplace weights that is 10% narrower than min-max (a layer of a
    few hundred weights keeps its min-max: there, clipping costs more than rounding saves).
    `weight_ranges="minmax"` and the toolkit profile keep Tengine's min-max."""
    from onnx import TensorProto, helper, numpy_helper

    from unified.quant.ranges import weight_ranges

    rng = np.random.default_rng(3)
    w = (rng.laplace(size=(256, 256, 1, 1)) * 0.05).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["output"])], "wide",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 256, 2, 2])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 256, 2, 2])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calibration = [rng.normal(size=(1, 256, 2, 2)).astype(np.float32) for _ in range(4)]
    common = dict(backend="tengine", calibration=calibration, cache=False, rounding="nearest",
                  bias_correction=False, empirical_bias_correction=False)
    scale = lambda qm: next(n for n in qm.artifact.graph.nodes if n.op == "conv").arrays["w_scale"][0]  # noqa: E731
    best, minmax = unified.quantize(model, **common), unified.quantize(model, weight_ranges="minmax", **common)
    lo, hi = weight_ranges(w, False, "mse", 256)
    assert (best.artifact.extra["weight_ranges"], minmax.artifact.extra["weight_ranges"]) == ("mse", "minmax")
    assert scale(minmax) == pytest.approx((w.max() - min(w.min(), 0.0)) / 255, rel=1e-5)
    assert scale(best) == pytest.approx((hi - lo)[0] / 255, rel=1e-5)
    assert scale(best) < 0.95 * scale(minmax)
    with pytest.raises(unified.BackendError, match="weight_ranges"):
        unified.quantize(model, profile="toolkit", weight_ranges="mse", **common)


@pytest.mark.parametrize("algorithm", ["minmax", "kl", "aciq"])
def test_algorithms(tiny_model, tiny_calibration, tiny_batch, algorithm) -> None:
    qm = unified.quantize(tiny_model, backend="tengine", calibration=tiny_calibration, preprocess=PRE16, algorithm=algorithm)
    ref = unified.quantize(tiny_model, backend="ort", mode="fp32").run(tiny_batch)
    out = qm.run(tiny_batch)
    assert (out * ref).sum() / np.linalg.norm(out) / np.linalg.norm(ref) > 0.9
    zps = {t.zero_point for name, t in qm.artifact.graph.tensors.items() if name != "input"}
    if algorithm == "aciq":
        assert zps == {127}


def test_scale_file_round_trip(tmp_path, tiny_model, tiny_calibration, tiny_batch) -> None:
    # Tengine's own flow (nearest rounding, no bias corrections) needs no data beside the table;
    # the weight and bias options need the same calibration images again to reproduce the same model.
    plain = dict(rounding="nearest", bias_correction=False, empirical_bias_correction=False)
    for label, options in [("plain", plain), ("default", {})]:
        qm = unified.quantize(tiny_model, backend="tengine", calibration=tiny_calibration, preprocess=PRE16, **options)
        table = tmp_path / f"table-{label}.txt"
        write_scale_file(qm.artifact, table)
        lines = table.read_text().splitlines()
        assert all(len(line.split()) == 3 for line in lines)
        assert all(len(line.split()[1].split(".")[-1]) == 6 for line in lines)  # %f: 6 decimals
        calibration = None if label == "plain" else tiny_calibration
        again = unified.quantize(tiny_model, backend="tengine", calibration=calibration, preprocess=PRE16,
                                 scale_file=str(table), **options)
        assert again.artifact.graph.tensors == qm.artifact.graph.tensors
        for a, b in zip(qm.artifact.graph.nodes, again.artifact.graph.nodes):
            assert a.arrays.keys() == b.arrays.keys()
            for key in a.arrays:
                np.testing.assert_array_equal(a.arrays[key], b.arrays[key])
        np.testing.assert_array_equal(again.run(tiny_batch), qm.run(tiny_batch))


@pytest.mark.parametrize("content, message", [
    ("input 0.1\n", "expected '<tensor_name> <scale> <zero_point>'"),
    ("input abc 3\n", "cannot read scale"),
    ("input -0.5 3\n", "must be a positive number"),
    ("input 0 3\n", "must be a positive number"),
    ("input 0.1 300\n", r"must be in \[0, 255\]"),
    ("input 0.1 -1\n", r"must be in \[0, 255\]"),
    ("input 0.1 1\nnot_a_tensor 0.1 1\nother 0.2 3\n", "2 tensor name.*not_a_tensor, other"),
    ("input 0.1 1\n", "has no entry for .* tensor"),
])
def test_bad_scale_files(tmp_path, tiny_model, content, message) -> None:
    path = tmp_path / "bad.table"
    path.write_text(content)
    out = tmp_path / "never.uqm"
    with pytest.raises(unified.ScaleFileError, match=message):
        unified.quantize(tiny_model, backend="tengine", preprocess=PRE16, scale_file=str(path),
                         bias_correction=False, rounding="nearest").save(out)
    assert not out.exists()


def test_equalization_keeps_the_float_model_exact(tiny_batch) -> None:
    import onnx

    from unified.consistency.tiny_models import tiny_classifier

    prepared = prepare(tiny_classifier(seed=4))            # conv1 -> Relu -> depthwise conv: eligible
    equalized, pairs = equalize(prepared)
    assert pairs == 1
    before = unified.quantize(prepared, backend="ort", mode="fp32").run(tiny_batch)
    after = unified.quantize(equalized, backend="ort", mode="fp32").run(tiny_batch)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)
    w_before = {t.name: onnx.numpy_helper.to_array(t) for t in prepared.graph.initializer}
    w_after = {t.name: onnx.numpy_helper.to_array(t) for t in equalized.graph.initializer}
    r1 = np.abs(w_after["w1"]).reshape(8, -1).max(1)
    r2 = np.abs(w_after["w2"]).reshape(8, -1).max(1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)           # per-channel ranges equalized
    assert not np.allclose(w_before["w1"], w_after["w1"])
    # with ReLU6 in between the pair is left alone: scaling would change the float model
    relu6 = prepare(tiny_classifier(seed=4))
    for node in relu6.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Clip"
            node.input.extend(["clip_min", "clip_max"])
    assert equalize(relu6)[1] == 0


def test_fidelity_and_save_load(tiny_tengine, tiny_batch, tmp_path) -> None:
    x = tiny_tengine.quantize_input(tiny_batch)
    for layer in layer_agreement(tiny_tengine.artifact.graph, x):
        assert layer.within_one_step >= 0.999, str(layer)
    engine, export = end_to_end(tiny_tengine.artifact.graph, x)
    assert np.abs(engine.astype(int) - export.astype(int)).max() <= 2
    path = tmp_path / "t.uqm"
    tiny_tengine.save(path)
    np.testing.assert_array_equal(unified.load(path).run(tiny_batch), tiny_tengine.run(tiny_batch))
