"""Any real model, at full size: per-output cosine vs fp32 for every backend with default options.

    python benchmarks/any_model.py [--size 224] [--models resnet18 tiny_yolo ...] [--images 16]

Torchvision classifiers (random weights, BatchNorm statistics from real photo crops), a YOLO-style
detector (three outputs), a U-Net and a small ViT, each passed as a torch module, as a user would.
Prints one row per model and backend: the lowest per-image cosine of each output, the number of
nodes that ran in float, and the build time; then the rows below the 0.98 target.

`--bound` adds a row per model, backend "int8 act. only": ORT's own QDQ model with every weight and
bias DequantizeLinear replaced by the float tensor, so only the activations are quantized
(per-tensor uint8, ranges chosen by the ort backend's defaults). It is what per-tensor 8-bit
activations cost that model before any weight is rounded: a backend whose scheme quantizes every
activation per tensor to 8 bits cannot be expected to do better by choosing weights.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import unified  # noqa: E402
import tests.architectures as arch  # noqa: E402
from unified.terminal.table import format_table  # noqa: E402


def min_cosine(out, ref) -> dict[str, float]:
    out = out if isinstance(out, dict) else {"output": out}
    ref = ref if isinstance(ref, dict) else {"output": ref}
    result = {}
    for name in ref:
        a, b = out[name].reshape(len(out[name]), -1), ref[name].reshape(len(ref[name]), -1)
        result[name] = float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())
    return result


def activation_only_run(net, calibration, images):
    """Outputs of ORT's default QDQ model with float weights and biases (see --bound)."""
    import onnx
    import onnxruntime as ort

    from unified.graph.prepare import prepare
    from unified.inputs.model_source import resolve_model

    qm = unified.quantize(net, backend="ort", calibration=calibration, preprocess=arch.PREPROCESS, cache=False)
    qdq = onnx.load_from_string(qm.artifact.model_bytes)
    floats = {t.name: t for t in prepare(resolve_model(net, arch.PREPROCESS).proto).graph.initializer}
    quantized_inits = {t.name for t in qdq.graph.initializer}
    kept, rename = [], {}
    for node in qdq.graph.node:
        source = node.input[0] if node.input else ""
        base = source[:-len("_quantized")] if source.endswith("_quantized") else None
        if node.op_type == "DequantizeLinear" and source in quantized_inits and base in floats:
            rename[node.output[0]] = base
            qdq.graph.initializer.append(floats[base])
        else:
            kept.append(node)
    for node in kept:
        node.input[:] = [rename.get(name, name) for name in node.input]
    del qdq.graph.node[:]
    qdq.graph.node.extend(kept)
    session = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, {session.get_inputs()[0].name: images})
    return outputs[0] if len(outputs) == 1 else dict(zip(names, outputs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=16, help="calibration crops (evaluation uses 8 others)")
    parser.add_argument("--models", nargs="+", default=list(arch.CLASSIFIERS) + list(arch.BUILDERS))
    parser.add_argument("--backends", nargs="+", default=["ort", "rknn", "tengine"])
    parser.add_argument("--bound", action="store_true", help="add the activation-only (fp32 weights) row")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    arch.SIZE = args.size
    arch.PREPROCESS = unified.Preprocess(resize=int(round(args.size * 256 / 224)), crop=args.size,
                                         mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    crops = arch.photo_crops(args.images, seed=12)
    calibration = [crops[i:i + 1] for i in range(len(crops))]
    images = arch.photo_crops(8, seed=13)
    rows, below = [], []
    for name in args.models:
        net = arch.custom(name) if name in arch.BUILDERS else arch.classifier(name)
        ref = unified.quantize(net, backend="ort", mode="fp32", preprocess=arch.PREPROCESS).run(images)
        for backend in args.backends:
            start = time.perf_counter()
            try:
                qm = unified.quantize(net, backend=backend, calibration=calibration, preprocess=arch.PREPROCESS)
                figures = min_cosine(qm.run(images), ref)
                worst = min(figures.values())
                rows.append((name, backend, " ".join(f"{v:.4f}" for v in figures.values()), len(qm.float_nodes),
                             f"{time.perf_counter() - start:.1f}s"))
                if worst < 0.98:
                    below.append(f"{name}/{backend} {worst:.4f}")
            except unified.UnifiedError as exc:
                rows.append((name, backend, f"error: {str(exc)[:60]}", "-", "-"))
                below.append(f"{name}/{backend} error")
            print(f"{rows[-1]}", file=sys.stderr, flush=True)
        if args.bound:
            figures = min_cosine(activation_only_run(net, calibration, images), ref)
            rows.append((name, "int8 act. only", " ".join(f"{v:.4f}" for v in figures.values()), "-", "-"))
            print(f"{rows[-1]}", file=sys.stderr, flush=True)
    print(f"size {args.size}, {args.images} calibration crops, 8 evaluation crops, default options")
    print(format_table(["model", "backend", "min cosine per output", "float nodes", "build+run"], rows))
    print("below 0.98:", ", ".join(below) if below else "none")


if __name__ == "__main__":
    main()
