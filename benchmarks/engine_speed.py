"""Speed of the emulated NPU backends against ONNX Runtime, measured side by side in one run.

Prints, for EfficientNet-Lite0 (pretrained), ResNet-18 and GoogLeNet (torchvision, random weights,
BatchNorm statistics from photo crops, 224 px):
  * batch-1 latency of ORT fp32, ORT static int8, rknn and tengine (`qm.run`), interleaved in
    random order each round, and each ratio to ORT fp32 (goals: Lite0 <= 2x, the others <= 3x);
  * the per-image time at batch 8 against batch 1 for every backend (goal <= 0.8x);
  * ORT static int8 against fp32 at batch 1 (goal: 1.8x faster).
Build time and memory: `benchmarks/memory.py`.
The CPU flags that decide the kernels (avx2, avx512_vnni...) are printed first.

    python benchmarks/engine_speed.py [--rounds 20] [--models lite0 resnet18 googlenet]
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("UNIFIED_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags)


def load_models(name: str):
    """(fp32, {label: qm}, batch of 8) for one model."""
    import unified

    if name == "lite0":
        model, pre, cal = "efficientnet_lite0", None, None
    else:
        import tests.architectures as arch

        arch.SIZE = 224
        arch.PREPROCESS = unified.Preprocess(resize=256, crop=224, mean=(123.675, 116.28, 103.53),
                                             std=(58.395, 57.12, 57.375))
        model, pre = arch.classifier(name), arch.PREPROCESS
        crops = arch.photo_crops(16, seed=12)
        cal = [crops[i:i + 1] for i in range(len(crops))]
    fp32 = unified.quantize(model, backend="ort", mode="fp32", preprocess=pre)
    models = {"ort int8": unified.quantize(model, backend="ort", mode="static", calibration=cal, preprocess=pre)}
    for backend in ("rknn", "tengine"):
        models[backend] = unified.quantize(model, backend=backend, calibration=cal, preprocess=pre)
    from unified.inputs.sample_images import random_crops

    x = np.concatenate([fp32.preprocess(c) for c in random_crops(8, seed=2)])
    return fp32, models, x


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def speed(name: str, rounds: int) -> None:
    fp32, models, x = load_models(name)
    runs = {"ort fp32": fp32, **models}
    fns = {}
    for label, qm in runs.items():
        fns[(label, 1)] = (lambda q: lambda: q.run(x[:1]))(qm)
        fns[(label, 8)] = (lambda q: lambda: q.run(x))(qm)
    med = interleaved(fns, rounds)
    base = med[("ort fp32", 1)]
    goal = "2x" if name == "lite0" else "3x"
    print(f"{name}: batch 1 latency, {rounds} interleaved rounds (median), and batch 8 per image")
    for label in runs:
        one, eight = med[(label, 1)], med[(label, 8)] / 8
        ratio = f"{one / base:5.2f}x ORT fp32" + (f" (goal <= {goal})" if label in ("rknn", "tengine") else "")
        print(f"  {label:9s} batch 1 {one * 1e3:7.2f} ms  {ratio:32s} batch 8 {eight * 1e3:7.2f} ms/image "
              f"= {eight / one:4.2f}x batch 1 (goal <= 0.8x)")
    print(f"  ORT static int8 is {base / med[('ort int8', 1)]:.2f}x faster than fp32 at batch 1 (goal 1.8x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["lite0", "resnet18", "googlenet"])
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    import warnings

    warnings.simplefilter("ignore")
    from unified.engine import fused

    print(f"CPU: {os.cpu_count()} cores, flags: {cpu_flags()}; UNIFIED_ORT_THREADS="
          f"{os.environ.get('UNIFIED_ORT_THREADS', '0 (ORT chooses)')}; fused numba kernels: {fused.available()}")
    for name in args.models:
        speed(name, args.rounds)


if __name__ == "__main__":
    main()
