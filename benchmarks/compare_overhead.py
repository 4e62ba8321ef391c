"""What the consistency analysis costs on top of inference.

Runs `unified.compare` over N photo crops and 3 backends, and, side by side in the same process,
the same backends' `qm.run` alone on the same images (same batches, models already built and
cached in both cases). Prints both times and their ratio (goal <= 2x).
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np

import unified
from unified.inputs.sample_images import random_crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--backends", nargs="+", default=["ort", "rknn", "tengine"])
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    models = {name: unified.quantize("efficientnet_lite0", backend=name) for name in args.backends}  # build/cache
    pre = next(iter(models.values())).preprocess
    x = np.concatenate([pre(c) for c in random_crops(args.images, seed=0)])

    t = time.perf_counter()
    for qm in models.values():
        for start in range(0, len(x), 25):
            qm.run(x[start:start + 25])
    run_only = time.perf_counter() - t

    t = time.perf_counter()
    report = unified.compare("efficientnet_lite0", x, backends=args.backends)
    with_analysis = time.perf_counter() - t

    print(report.table())
    print(f"\n{args.images} images, backends {', '.join(args.backends)}")
    print(f"  qm.run alone:        {run_only:7.1f} s")
    print(f"  unified.compare:     {with_analysis:7.1f} s  (fp32 reference, output figures, per-layer on {report.layer_images} images)")
    print(f"  ratio compare / run: {with_analysis / run_only:7.2f}  (goal <= 2)")


if __name__ == "__main__":
    main()
