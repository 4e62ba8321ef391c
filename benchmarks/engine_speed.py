"""Speed and memory of the emulated NPU backends against ONNX Runtime fp32 on EfficientNet-Lite0.

Prints, measured side by side in one run:
  * batch-1 latency of each backend's qm.run against ORT fp32 on the same input, interleaved
    (random order each round, 2 threads, ORT spinning off), and their ratio (goal <= 3x);
  * the quantize (build) time for 100 calibration images;
  * the peak memory of a build (resident set growth, measured in a fresh subprocess).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import time

import numpy as np

os.environ.setdefault("UNIFIED_ORT_THREADS", "2")

BUILD_SCRIPT = r"""
import json, logging, resource, sys, time
import numpy as np
logging.getLogger().setLevel(logging.ERROR)
import unified
backend = sys.argv[1]
cal = list(np.load(sys.argv[2])[:, None])   # 100 preprocessed crops, made by the parent process
model = unified.inputs.zoo.load_zoo_model("efficientnet_lite0")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
unified.quantize(model, backend=backend, calibration=cal, cache=False)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "growth_mb": (peak - before) / 1024}))
"""


def measure_build(backend: str, calibration_file: str) -> dict:
    """Build in a fresh process so its peak RSS is the build's (plus imports and the model)."""
    out = subprocess.run([sys.executable, "-c", BUILD_SCRIPT, backend, calibration_file],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--backends", nargs="*", default=None)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    import unified
    from unified.inputs.sample_images import bundled_photo_path

    names = args.backends or [b.name for b in unified.backends() if b.io == "integer"]
    fp32 = unified.quantize("efficientnet_lite0", backend="ort", mode="fp32")
    models = {name: unified.quantize("efficientnet_lite0", backend=name) for name in names}
    x = fp32.preprocess(bundled_photo_path())
    session = fp32.artifact.session
    fns = {"ort fp32": lambda: session.run(None, {"input": x})}
    for name, qm in models.items():
        fns[name] = (lambda q: (lambda: q.run(x)))(qm)
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for name in order:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"EfficientNet-Lite0, batch 1, {args.rounds} interleaved rounds, 2 threads, ORT spinning off")
    print(f"  {'ort fp32':10s} {med['ort fp32'] * 1e3:8.2f} ms")
    for name in names:
        print(f"  {name:10s} {med[name] * 1e3:8.2f} ms   ratio to ORT fp32: {med[name] / med['ort fp32']:.1f}x  (goal <= 3x)")
    import tempfile

    from unified.inputs.sample_images import random_crops

    with tempfile.TemporaryDirectory() as tmp:
        cal_file = os.path.join(tmp, "cal.npy")
        np.save(cal_file, np.concatenate([fp32.preprocess(c) for c in random_crops(100, seed=1)]))
        builds = {name: measure_build(name, cal_file) for name in names}
    for name in names:
        b = builds[name]
        print(f"  {name:10s} quantize on 100 calibration images: {b['seconds']:.1f} s, "
              f"peak RSS {b['peak_mb']:.0f} MB, of which the build added {b['growth_mb']:.0f} MB (goal <= 1 GB)")


if __name__ == "__main__":
    main()
