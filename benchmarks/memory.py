"""Peak memory: `unified compare` on the built-in defaults, and a Lite0 build per backend.

Each measurement runs in a fresh process and reads that process's own peak resident set (VmHWM;
not ru_maxrss, which Linux carries across exec from the parent):
  * `unified compare` with defaults (50 crops, ort/rknn/tengine, per-layer analysis on 8 images),
    once with the builds already cached and once on an empty cache (builds included);
  * `unified.quantize` of EfficientNet-Lite0 per backend with `cache=False` on the default
    calibration (100 photo crops).
Goals: compare <= 2 GB; builds <= 1.5 GB.

    python benchmarks/memory.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, logging, os, sys, time, warnings
logging.getLogger().setLevel(logging.ERROR)
warnings.simplefilter("ignore")
import unified
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
t = time.perf_counter()
if sys.argv[1] == "compare":
    unified.compare()
else:
    unified.quantize("efficientnet_lite0", backend=sys.argv[1], cache=False)
print(json.dumps({"peak_mb": hwm(), "seconds": time.perf_counter() - t}))
"""


def measure(what: str, cache_dir: str) -> dict:
    env = dict(os.environ, UNIFIED_CACHE_DIR=cache_dir, UNIFIED_PROGRESS="0")
    out = subprocess.run([sys.executable, "-c", CHILD, what], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as cold:
        # the zoo export (torch) once, so the cold compare measures the builds, not the export
        subprocess.run([sys.executable, "-c", "import unified; unified.inputs.zoo.load_zoo_model('efficientnet_lite0')"],
                       env=dict(os.environ, UNIFIED_CACHE_DIR=cold), check=True, capture_output=True)
        first = measure("compare", cold)
        warm = measure("compare", cold)
        print(f"unified compare, defaults, empty build cache: peak {first['peak_mb']:.0f} MB, {first['seconds']:.0f} s "
              "(goal <= 2048 MB)")
        print(f"unified compare, defaults, builds cached:     peak {warm['peak_mb']:.0f} MB, {warm['seconds']:.0f} s "
              "(goal <= 2048 MB)")
        for backend in ("ort", "rknn", "tengine"):
            build = measure(backend, cold)
            print(f"Lite0 build, {backend:8s} 100 calibration crops: peak {build['peak_mb']:.0f} MB, "
                  f"{build['seconds']:.0f} s (goal <= 1536 MB)")


if __name__ == "__main__":
    main()
