"""The classic ONNX Runtime quantization tutorial, done right with `unified`.

1. export the pretrained EfficientNet-Lite0 from PyTorch to ONNX and check it,
2. quantize it dynamically (QUInt8 weights, as the tutorial did) and statically (QDQ),
3. print fp32 and quantized top-5 side by side.

The tutorial this follows printed identical probabilities for fp32 and uint8 because its inference
function ignored its model argument and always loaded the same file. Here each column comes from
its own model, so the probabilities differ, as they must.

Run: python examples/tutorial_flow.py [IMAGE]
"""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import onnx

import unified
from unified.inputs.sample_images import bundled_photo_path
from unified.inputs.zoo import ZOO, export_torch


def main() -> None:
    logging.getLogger().setLevel(logging.ERROR)
    image = sys.argv[1] if len(sys.argv) > 1 else str(bundled_photo_path())
    entry = ZOO["efficientnet_lite0"]

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "efficientnet_lite0.onnx"
        model = export_torch(entry.build_torch())          # 1. export (+ constant folding)
        onnx.checker.check_model(model)                    #    and check
        onnx.save(model, onnx_path)
        print(f"exported and checked {onnx_path.name}: {len(model.graph.node)} nodes")

        runs = {
            "fp32": unified.quantize(str(onnx_path), backend="ort", mode="fp32", preprocess=entry.preprocess),
            "dynamic uint8": unified.quantize(str(onnx_path), backend="ort", mode="dynamic", preprocess=entry.preprocess),
            "static int8": unified.quantize(str(onnx_path), backend="ort", mode="static", preprocess=entry.preprocess),
        }
        results = {name: qm.infer(image) for name, qm in runs.items()}   # 2.+3. each its own model

    print(f"\nimage: {image}\n")
    header = "rank  " + "".join(f"{name:<32}" for name in results)
    print(header)
    print("-" * len(header))
    for rank in range(5):
        cells = []
        for result in results.values():
            _, label, p = result.top5[rank]
            cells.append(f"{label[:22]:<22} {p:7.4f}  ")
        print(f"{rank + 1:<6}" + "".join(cells))


if __name__ == "__main__":
    main()
