"""Dataset-scale evaluation on Ray: throughput with 1 and 2 workers, and the driver's memory.

Writes N offline photo crops as JPEG files into a labelled class-per-folder tree (labels from the
fp32 model's own top-1, so accuracy is meaningful), builds EfficientNet-Lite0 for every backend
once (cache), then, in one run, evaluates the tree with:
  * executor="local" (this process, ORT free to use every core),
  * executor="ray" with 1 worker and with 2 workers (embedded Ray, one CPU and one ORT thread
    per worker),
each in its own process after a warm-up pass (Ray start, workers loading the models), and prints
images/s, the 2-worker/1-worker ratio (goal >= 1.7x), whether the three reports are equal to the
last digit, and each driver's peak resident set (Ray's workers are processes of their own).

    python benchmarks/ray_scaling.py [--images 200]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("UNIFIED_PROGRESS", "0")


def make_tree(root: Path, n: int) -> None:
    import numpy as np

    import unified
    from unified.inputs.sample_images import random_crops

    crops = random_crops(n, seed=7)
    fp32 = unified.quantize("efficientnet_lite0", backend="ort", mode="fp32")
    labels = fp32.run(crops).argmax(1)
    for i, (crop, label) in enumerate(zip(crops, labels)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        crop.convert("RGB").save(folder / f"crop{i:05d}.jpg", quality=92)
    assert len(list(root.rglob("*.jpg"))) == n and np.unique(labels).size >= 2


def timed(executor: str, root: Path, workers: int | None) -> tuple[float, object]:
    import unified

    kwargs = dict(backends=["ort", "rknn", "tengine"], layer_images=0, executor=executor, shard_size=10)
    if executor == "ray":
        import ray

        ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False)
    try:
        unified.evaluate("efficientnet_lite0", root, **kwargs)  # warm-up: workers load the models
        t = time.perf_counter()
        report = unified.evaluate("efficientnet_lite0", root, **kwargs)
        return time.perf_counter() - t, report
    finally:
        if executor == "ray":
            ray.shutdown()


def peak_mb() -> float:
    """This process's peak resident set. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec,
    so a child would report its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(executor: str, root: Path, workers: int | None, out: Path) -> None:
    logging.getLogger().setLevel(logging.ERROR)
    seconds, report = timed(executor, root, workers)
    data = {"seconds": seconds, "report": report.to_json(), "table": report.table(),
            "peak_mb": peak_mb()}
    out.write_text(json.dumps(data, default=float))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        executor, root, workers, out = args.child
        return child(executor, Path(root), int(workers) or None, Path(out))
    logging.getLogger().setLevel(logging.ERROR)
    import unified

    for b in ("ort", "rknn", "tengine"):
        unified.quantize("efficientnet_lite0", backend=b)  # into the cache, outside the timings
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "crops"
        make_tree(root, args.images)
        runs = {}
        for name, executor, workers in (("local", "local", 0), ("ray x1", "ray", 1), ("ray x2", "ray", 2)):
            out = Path(tmp) / f"{executor}{workers}.json"
            subprocess.run([sys.executable, __file__, "--child", executor, str(root), str(workers), str(out)],
                           check=True)
            runs[name] = json.loads(out.read_text())
            report = runs[name]["report"]
            print(f"{name:8s} {report['images_per_second']:6.2f} images/s over the shards, "
                  f"{runs[name]['seconds']:6.1f} s for the whole call, driver peak {runs[name]['peak_mb']:.0f} MB")
    one, two = runs["ray x1"]["report"], runs["ray x2"]["report"]
    print(f"2 workers / 1 worker throughput: {two['images_per_second'] / one['images_per_second']:.2f}x (goal >= 1.7x)")
    plain = [_without_timings(runs[name]["report"]) for name in runs]
    print(f"reports equal to the last digit (local, ray x1, ray x2): {plain[0] == plain[1] == plain[2]}")
    print(runs["ray x2"]["table"])
    print(f"cpu: {os.cpu_count()} cores, {sys.platform}")


def _without_timings(report: dict) -> dict:
    from unified.evaluation.report import TIMING_FIELDS, _without

    return _without(report, TIMING_FIELDS + ("executor", "shards", "shard_workers"))


if __name__ == "__main__":
    main()
