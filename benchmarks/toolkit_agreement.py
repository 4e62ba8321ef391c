"""unified's rknn backend against the real RKNN-Toolkit2 simulator, algorithm by algorithm.

Needs a virtual environment holding RKNN-Toolkit2 (recipe: ../shared/oracles/README.md); it never
runs in CI. For each RKNN configuration (quantized_algorithm x quantized_method), both sides
quantize EfficientNet-Lite0 on the same calibration pixels and run the same evaluation crops:

  * the real toolkit: `hybrid_quantization_step1` (its own table), then step2 on that unchanged
    table and its PC simulator;
  * unified: `quantize(backend="rknn", quantized_algorithm=..., quantized_method=...,
    bias_correction=False)`, which is the toolkit's algorithm without unified's additions, and
    with `--fuse-residual-add` the toolkit's Conv+Add fusion too.

It prints per configuration the top-1 agreement between the two, each one's share of fp32's top-1
decisions, and the largest ratio between the two sides' scales over the tensors both name.

    python benchmarks/toolkit_agreement.py --rknn-venv /tmp/rknn-venv [--calib 50] [--images 200]
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("UNIFIED_PROGRESS", "0")

CONFIGS = [("normal", "channel"), ("normal", "layer"), ("kl_divergence", "channel")]

TOOLKIT_SCRIPT = r"""
import json, os, sys
import numpy as np
from rknn.api import RKNN
work, algorithm, method = sys.argv[1], sys.argv[2], sys.argv[3]
os.chdir(work)
tag = f"{algorithm}_{method}"
os.makedirs(tag, exist_ok=True)
os.chdir(tag)
r = RKNN(verbose=False)
r.config(mean_values=[[127, 127, 127]], std_values=[[128, 128, 128]], target_platform="rk3588",
         quantized_dtype="w8a8", quantized_algorithm=algorithm, quantized_method=method)
assert r.load_onnx("../model.onnx", inputs=["input"], input_size_list=[[1, 3, 224, 224]]) == 0
assert r.hybrid_quantization_step1(dataset="../dataset.txt", proposal=False) == 0
r2 = RKNN(verbose=False)
assert r2.hybrid_quantization_step2(model_input="model.model", data_input="model.data",
                                    model_quantization_cfg="model.quantization.cfg") == 0
assert r2.init_runtime() == 0
images = np.load("../eval_u8.npy")
out = np.concatenate([r2.inference(inputs=[im[None]], data_format="nhwc")[0] for im in images])
np.save("outputs.npy", out)
print(json.dumps({"done": tag}))
"""


def toolkit_scales(table: str) -> dict[str, float]:
    """tensor -> scale from a `.quantization.cfg` (int8 tensors only)."""
    scales, current, lines = {}, None, table.splitlines()
    for i, line in enumerate(lines):
        key = re.match(r"^    ([^ ].*):$", line)
        if key:
            current = key.group(1)
        elif current and line.strip() == "scale:" and i + 1 < len(lines) and lines[i + 1].strip().startswith("-"):
            scales[current] = float(lines[i + 1].split()[-1])
    return scales


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rknn-venv", required=True, help="virtual environment holding rknn-toolkit2")
    parser.add_argument("--calib", type=int, default=50, help="calibration crops (seed 1)")
    parser.add_argument("--images", type=int, default=200, help="evaluation crops (seed 0)")
    parser.add_argument("--fuse-residual-add", action="store_true",
                        help="unified's side with fuse_residual_add=True (RKNN's Conv+Add fusion)")
    parser.add_argument("--configs", nargs="+", default=[f"{a}/{m}" for a, m in CONFIGS],
                        help="algorithm/method pairs (default: %(default)s)")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    import onnx

    import unified
    from unified.graph.prepare import prepare
    from unified.inputs.sample_images import random_crops
    from unified.inputs.zoo import load_zoo_model

    python = Path(args.rknn_venv) / "bin" / "python"
    if not python.exists():
        sys.exit(f"no python in {args.rknn_venv}: install RKNN-Toolkit2 there first (../shared/oracles/README.md)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the toolkit reads the float model with Pads folded (its own Pad fusion fails on read-only arrays)
        onnx.save(prepare(load_zoo_model("efficientnet_lite0")), work / "model.onnx")
        calib = [c.convert("RGB").resize((224, 224)) for c in random_crops(args.calib, seed=1)]
        for i, image in enumerate(calib):
            image.save(work / f"cal{i:03d}.png")
        (work / "dataset.txt").write_text("".join(f"{work / f'cal{i:03d}.png'}\n" for i in range(len(calib))))
        pixels = np.stack([np.asarray(c.convert("RGB").resize((224, 224))) for c in random_crops(args.images, seed=0)])
        np.save(work / "eval_u8.npy", pixels)
        x = ((pixels.astype(np.float32) - 127) / 128).transpose(0, 3, 1, 2).copy()
        cal = [((np.asarray(c, np.float32) - 127) / 128).transpose(2, 0, 1)[None].copy() for c in calib]
        fp32 = unified.quantize("efficientnet_lite0", backend="ort", mode="fp32").run(x).argmax(1)
        print(f"EfficientNet-Lite0, {args.calib} calibration crops, {args.images} evaluation crops")
        for algorithm, method in (c.split("/") for c in args.configs):
            proc = subprocess.run([str(python), "-c", TOOLKIT_SCRIPT, str(work), algorithm, method],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"  {algorithm}/{method}: the toolkit failed: {proc.stderr.strip().splitlines()[-1][:200]}")
                continue
            folder = work / f"{algorithm}_{method}"
            theirs = np.load(folder / "outputs.npy")
            qm = unified.quantize("efficientnet_lite0", backend="rknn", calibration=cal, quantized_algorithm=algorithm,
                                  quantized_method=method, bias_correction=False,
                                  fuse_residual_add=args.fuse_residual_add)
            ours = qm.run(x)
            scales = toolkit_scales((folder / "model.quantization.cfg").read_text())
            ratios = [max(s, t.scale) / min(s, t.scale) for name, s in scales.items()
                      if (t := qm.artifact.graph.tensors.get(name)) is not None and s > 0]
            print(f"  {algorithm}/{method}: top-1 agreement {np.mean(theirs.argmax(1) == ours.argmax(1)):.1%}; "
                  f"kept fp32 top-1: toolkit {np.mean(theirs.argmax(1) == fp32):.1%}, unified "
                  f"{np.mean(ours.argmax(1) == fp32):.1%}; largest scale ratio {max(ratios):.3f} over {len(ratios)} "
                  f"tensors")


if __name__ == "__main__":
    main()
