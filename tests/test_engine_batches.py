"""Batches on the engine's worker threads, and Gemm accumulation on ORT's ConvInteger.

A batch is cut into pieces that run on one thread per core, each on one-thread ORT sessions; the
samples are independent, so the result must equal the int64 reference bit for bit, whatever the
piece sizes. A Gemm with constant weights accumulates as a 1x1 ConvInteger (off numpy's BLAS)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import unified
from unified.consistency.tiny_models import tiny_classifier
from unified.engine.integer_graph import IntNode
from unified.engine.interpreter import Interpreter, engine_workers
from unified.engine.ort_accumulate import IntegerGemmAccumulator, integer_gemm_accumulator


@pytest.fixture(scope="module", params=["rknn", "tengine"])
def tiny_quantized(request):
    rng = np.random.default_rng(4)
    cal = [rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    return unified.quantize(tiny_classifier(seed=3), backend=request.param, calibration=cal)


@pytest.mark.parametrize("batch", [2, 5, 19])
def test_batch_on_two_workers_equals_reference(tiny_quantized, monkeypatch, batch) -> None:
    """5 samples on 2 workers run as pieces of 3 and 2; 19 as pieces of 4 (at most 8 in flight)."""
    monkeypatch.setenv("UNIFIED_ENGINE_THREADS", "2")
    g = tiny_quantized.artifact.graph
    info = np.iinfo(np.dtype(g.dtype))
    x = np.random.default_rng(batch).integers(info.min, info.max + 1, (batch, 3, 16, 16)).astype(g.dtype)
    fast = Interpreter(g)
    got = fast.run(x)
    np.testing.assert_array_equal(got, Interpreter(g, reference=True).run(x))
    np.testing.assert_array_equal(got, np.concatenate([fast.run(x[i:i + 1]) for i in range(batch)]))
    narrow = fast._narrow
    assert narrow is not None  # the workers ran, on their own one-thread sessions
    sessions = [a.session for a in narrow.accelerators.values() if hasattr(a, "session")]
    assert sessions and all(s.get_session_options().intra_op_num_threads == 1 for s in sessions)


def test_one_worker_keeps_the_calling_thread(tiny_quantized, monkeypatch) -> None:
    monkeypatch.setenv("UNIFIED_ENGINE_THREADS", "1")
    assert engine_workers() == 1
    g = tiny_quantized.artifact.graph
    fast = Interpreter(g)
    x = np.zeros((4, 3, 16, 16), g.dtype)
    np.testing.assert_array_equal(fast.run(x), Interpreter(g, reference=True).run(x))
    assert fast._narrow is None


def test_gemm_runs_on_the_integer_accumulator(tiny_quantized) -> None:
    g = tiny_quantized.artifact.graph
    gemm = next(n for n in g.nodes if n.op == "gemm")
    assert isinstance(Interpreter(g).graph.accelerators[gemm.name], IntegerGemmAccumulator)


@pytest.mark.parametrize("dtype,qmin,qmax,zx", [("int8", -128, 127, 5), ("uint8", 0, 255, 120)])
def test_gemm_accumulator_equals_int64_matmul(dtype, qmin, qmax, zx) -> None:
    """Rows (..., K) of any leading shape; per-row weight offsets far apart (the box-sum correction)."""
    rng = np.random.default_rng(7)
    offsets = rng.integers(-60, 60, 6)
    w = (rng.integers(-128, 128, (6, 40)) - offsets.reshape(-1, 1)).astype(np.int16)
    node = IntNode("gemm", "fc", ["x"], ["y"], "Gemm", attrs={"zx": zx}, arrays={"w": w})
    acc = integer_gemm_accumulator(node, dtype, qmin, qmax)
    assert acc is not None and acc.offsets is not None
    x = rng.integers(qmin, qmax + 1, (2, 3, 40)).astype(dtype)
    expected = (x.astype(np.int64) - zx) @ w.T.astype(np.int64)
    got = acc.run(None, {"x": x})[0]
    np.testing.assert_array_equal(got.reshape(2, 3, 6), expected)


def test_matmul_with_constant_weights_on_3d_input_equals_reference(monkeypatch) -> None:
    """A token-wise MatMul (N, T, K) @ (K, M): the accumulator reads (N*T) rows and the output
    keeps (N, T, M), on one thread and on two."""
    rng = np.random.default_rng(9)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (16, 8)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "w"], ["out"], name="proj")], "m",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    cal = [rng.normal(0, 1, (1, 4, 16)).astype(np.float32) for _ in range(8)]
    qm = unified.quantize(model, backend="rknn", calibration=cal)
    g = qm.artifact.graph
    assert [n.op for n in g.nodes] == ["gemm"]
    x = rng.integers(-128, 128, (3, 4, 16)).astype(np.int8)
    reference = Interpreter(g, reference=True).run(x)
    assert reference.shape == (3, 4, 8)
    for workers in ("1", "2"):
        monkeypatch.setenv("UNIFIED_ENGINE_THREADS", workers)
        np.testing.assert_array_equal(Interpreter(g).run(x), reference)


def test_a_replaced_bias_is_not_served_from_the_prepared_requantization(tiny_quantized) -> None:
    """Build steps (the empirical bias correction) replace a node's bias and run the kernels again
    on the same interpreter: the run must use the new bias, as the reference does."""
    from copy import deepcopy

    g = deepcopy(tiny_quantized.artifact.graph)
    fast = Interpreter(g)
    node = next(n for n in fast.graph.nodes if n.name in fast.graph.requantizers)
    info = np.iinfo(np.dtype(g.dtype))
    x = np.random.default_rng(0).integers(info.min, info.max + 1, (2, 3, 16, 16)).astype(g.dtype)
    before = fast.run(x)
    node.arrays["bias"] = node.arrays["bias"] + 3000
    after = fast.run(x)
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, Interpreter(g, reference=True).run(x))


def test_a_conv_feeding_a_depthwise_conv_writes_its_float_carrier(tiny_quantized) -> None:
    """conv1 -> relu -> depthwise: untapped runs hand the depthwise conv x - zx as float32 (same
    integers), taps and run_all still see the 8-bit tensor, and the outputs equal the reference."""
    g = tiny_quantized.artifact.graph
    fast = Interpreter(g)
    carriers = {name for name, p in fast._fast.requantizers.items() if p.dtype == np.float32}
    assert carriers == {next(n.name for n in g.nodes if n.op == "conv" and n.attrs["group"] == 1)}
    info = np.iinfo(np.dtype(g.dtype))
    x = np.random.default_rng(1).integers(info.min, info.max + 1, (3, 3, 16, 16)).astype(g.dtype)
    np.testing.assert_array_equal(fast.run(x), Interpreter(g, reference=True).run(x))
    every = fast.run_all(x)
    assert all(v.dtype == np.dtype(g.dtype) for v in every.values())


@pytest.mark.parametrize("backend", ["rknn", "tengine"])
def test_the_prepared_residual_add_equals_reference(backend) -> None:
    """conv -> conv -> Add(residual): the Add runs on its prepared fused kernel, bit for bit."""
    from tests.test_integer_engine import _residual_model

    rng = np.random.default_rng(8)
    cal = [rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    qm = unified.quantize(_residual_model(), backend=backend, calibration=cal)
    g = qm.artifact.graph
    fast = Interpreter(g)
    adds = [n.name for n in g.nodes if n.op == "add"]
    assert adds and all(type(fast.graph.requantizers[name]).__name__ == "PreparedAdd" for name in adds)
    info = np.iinfo(np.dtype(g.dtype))
    x = rng.integers(info.min, info.max + 1, (3, 3, 16, 16)).astype(g.dtype)
    np.testing.assert_array_equal(fast.run(x), Interpreter(g, reference=True).run(x))
