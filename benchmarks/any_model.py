"""Any real model, at full size: per-output cosine vs fp32 for every backend with default options.

    python benchmarks/any_model.py [--size 224] [--models resnet18 tiny_yolo ...] [--images 16]

Torchvision classifiers (random weights, BatchNorm statistics from real photo crops), a YOLO-style
detector (three outputs), a U-Net and a small ViT, each passed as a torch module, as a user would.
Prints one row per model and backend: the lowest per-image cosine of each output, the number of
nodes that ran in float, and the build time; then the rows below the 0.98 target.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=16, help="calibration crops (evaluation uses 8 others)")
    parser.add_argument("--models", nargs="+", default=list(arch.CLASSIFIERS) + list(arch.BUILDERS))
    parser.add_argument("--backends", nargs="+", default=["ort", "rknn", "tengine"])
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
    print(f"size {args.size}, {args.images} calibration crops, 8 evaluation crops, default options")
    print(format_table(["model", "backend", "min cosine per output", "float nodes", "build+run"], rows))
    print("below 0.98:", ", ".join(below) if below else "none")


if __name__ == "__main__":
    main()
