"""QDQ interop on EfficientNet-Lite0, 200 photo crops (seed 0), default builds:

  * round trip: `export_qdq` then import on the same backend: are the integers identical?
  * ONNX Runtime running each export: top-1 agreement with the engine (goal >= 99%);
  * an ORT-made QDQ Lite0 (quantize_static, QDQ, per channel, 100 calibration crops): unified's
    ort output against a bare ORT session on the file, and rknn / tengine importing it without
    calibration: top-1 agreement with ORT on it (goal for rknn >= 97%).

    python benchmarks/interop.py [--diagnose]

`--diagnose` also prints why ORT and the engine disagree where they do: the share of elements
each op kind computes differently when both are fed the same integer inputs, how those
differences grow when each side feeds its own outputs onward (8 crops), and for every top-1
disagreement the gap between the two highest outputs, in output steps, on each side.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("UNIFIED_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def diagnose(qm, x: np.ndarray, by_ort: np.ndarray, by_engine: np.ndarray) -> None:
    """Print where a backend's engine and ORT on its export part (see the module docstring)."""
    from collections import defaultdict

    from unified.engine.fidelity import divergence_by_depth, layer_agreement

    art = qm.artifact
    graph = art.graph
    x8 = art.to_model(qm.quantize_input(x[:8]))
    op_of = {node.name: node.op for node in graph.nodes}
    differing: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for layer in layer_agreement(graph, x8):
        counts = differing[op_of[layer.node]]
        counts[0] += round((1 - layer.equal) * layer.elements)
        counts[1] += layer.elements
    print("    fed the same integer inputs, elements computed differently: " + ", ".join(
        f"{op} {d}/{n} ({d / n:.1e})" for op, (d, n) in sorted(differing.items()) if n))
    drift = divergence_by_depth(graph, x8)
    marks = sorted({round(i * (len(drift) - 1) / 7) for i in range(8)})
    print("    each side feeding its own outputs onward, share of elements differing by depth: " + ", ".join(
        f"#{i} {drift[i].differing:.1e}" for i in marks))
    step = float(graph.tensors[graph.output_name].scale)

    def gap(row: np.ndarray) -> float:
        top = np.sort(row)[-2:]
        return float(top[1] - top[0]) / step

    split = np.nonzero(by_ort.argmax(1) != by_engine.argmax(1))[0]
    print(f"    {len(split)} top-1 disagreements; gap between the two highest outputs, in output steps "
          "(engine / ORT): " + ", ".join(f"{gap(by_engine[i]):.0f}/{gap(by_ort[i]):.0f}" for i in split))


def main() -> None:
    logging.getLogger().setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    import unified
    from unified.inputs.sample_images import random_crops
    from unified.inputs.zoo import load_zoo_model

    fp32 = unified.quantize("efficientnet_lite0", backend="ort", mode="fp32")
    x = np.concatenate([fp32.preprocess(c) for c in random_crops(200, seed=0)])
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("rknn", "tengine"):
            qm = unified.quantize("efficientnet_lite0", backend=backend)
            path = os.path.join(tmp, f"{backend}.onnx")
            qm.export_qdq(path)
            again = unified.quantize(path, backend=backend, preprocess=qm.preprocess)
            native = qm.quantize_input(x)
            same = np.array_equal(again.run_quantized(native), qm.run_quantized(native))
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            by_ort = session.run(None, {session.get_inputs()[0].name: x})[0]
            by_engine = qm.run(x)
            agree = float((by_ort.argmax(1) == by_engine.argmax(1)).mean())
            print(f"{backend:8s} export -> import integers identical: {same}; ORT on the export agrees with the "
                  f"engine on {agree:.1%} of top-1 (goal >= 99%)")
            if "--diagnose" in sys.argv[1:]:
                diagnose(qm, x, by_ort, by_engine)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter([{"input": fp32.preprocess(c)} for c in random_crops(100, seed=1)])

            def get_next(self):
                return next(self.items, None)

        model = load_zoo_model("efficientnet_lite0")
        src, qdq = os.path.join(tmp, "lite0.onnx"), os.path.join(tmp, "lite0.qdq.onnx")
        import onnx

        onnx.save(model, src)
        quantize_static(src, qdq, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        session = ort.InferenceSession(qdq, providers=["CPUExecutionProvider"])
        bare = session.run(None, {"input": x})[0]
        mine = unified.quantize(qdq, backend="ort", preprocess=fp32.preprocess).run(x)
        print(f"ORT-made QDQ Lite0: unified ort equals a bare ORT session: {np.array_equal(mine, bare)}")
        for backend in ("rknn", "tengine"):
            qm = unified.quantize(qdq, backend=backend, preprocess=fp32.preprocess)
            by_engine = qm.run(x)
            agree = float((by_engine.argmax(1) == bare.argmax(1)).mean())
            print(f"  {backend:8s} imports it ({len(qm.import_report)} tensors re-fitted) and agrees with ORT on "
                  f"{agree:.1%} of top-1" + (" (goal >= 97%)" if backend == "rknn" else ""))
            if "--diagnose" in sys.argv[1:] and backend == "rknn":
                diagnose(qm, x, bare, by_engine)


if __name__ == "__main__":
    main()
