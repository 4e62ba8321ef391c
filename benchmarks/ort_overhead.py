"""What `unified` costs on top of ONNX Runtime, and what static int8 buys over fp32.

Interleaved in one process (A, B, A, B, ...) so machine noise hits both sides equally; 2 intra-op
threads and spinning off for every session (with spinning on, interleaved timings are meaningless:
each session's idle threads spin while the other runs).

Prints:
  overhead ratio  = median qm.run(x) / median InferenceSession.run(x) of the very session qm wraps
                    (two sessions of the same bytes differ by several percent from thread placement
                    alone, which would drown the wrapper's cost; a separate session is shown too)
  fp32/int8 ratio = median fp32 latency / median static-int8 latency (both through bare ORT)
"""
from __future__ import annotations

import argparse
import random
import logging
import statistics
import time

import numpy as np
import onnxruntime as ort

import unified
from unified.graph.ort_session import session_options
from unified.inputs.sample_images import bundled_photo_path


def bare_session(model_bytes: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model_bytes, sess_options=session_options(2), providers=["CPUExecutionProvider"])


def interleaved(fns: dict[str, callable], rounds: int, stat=statistics.median) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(names)  # a fresh order each round: no function always follows the same one
        for name in names:
            fn = fns[name]
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: stat(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    import os

    os.environ["UNIFIED_ORT_THREADS"] = "2"
    fp32 = unified.quantize("efficientnet_lite0", backend="ort", mode="fp32")
    int8 = unified.quantize("efficientnet_lite0", backend="ort", mode="static")
    u8_s8 = int8
    s8_s8 = unified.quantize("efficientnet_lite0", backend="ort", mode="static", activation_type="int8")
    dynamic = unified.quantize("efficientnet_lite0", backend="ort", mode="dynamic")
    x = np.repeat(fp32.preprocess(bundled_photo_path()), args.batch, axis=0)

    bare = {name: bare_session(qm.artifact.model_bytes) for name, qm in
            [("fp32", fp32), ("int8", int8), ("s8s8", s8_s8), ("dynamic", dynamic)]}
    feeds = {"input": x}
    for qm in (fp32, int8, s8_s8):
        qm.run(x)  # warm up sessions
    for s in bare.values():
        s.run(None, feeds)

    inner = int8.artifact.session
    overhead = interleaved({
        "qm.run int8": lambda: u8_s8.run(x),
        "same session": lambda: inner.run(None, feeds),
    }, args.rounds)
    medians = dict(overhead)
    medians.update(interleaved({
        "bare int8": lambda: bare["int8"].run(None, feeds),
        "bare fp32": lambda: bare["fp32"].run(None, feeds),
    }, args.rounds))
    others = interleaved({
        "fp32 (vs others)": lambda: bare["fp32"].run(None, feeds),
        "bare s8s8": lambda: bare["s8s8"].run(None, feeds),
        "bare dynamic": lambda: bare["dynamic"].run(None, feeds),
    }, max(args.rounds // 3, 30))
    medians.update(others)
    print(f"EfficientNet-Lite0, batch {args.batch}, 2 threads, spinning off, {args.rounds} interleaved rounds")
    for name, t in medians.items():
        print(f"  {name:12s} {t * 1e3:8.3f} ms (median)")
    print(f"overhead ratio   qm.run / same ORT session:            {medians['qm.run int8'] / medians['same session']:.3f}  (goal <= 1.03)")
    print(f"fp32 / int8 latency ratio (u8 activations):             {medians['bare fp32'] / medians['bare int8']:.2f}  (goal >= 1.8)")
    print(f"fp32 / int8 latency ratio (s8 activations):             {medians['fp32 (vs others)'] / medians['bare s8s8']:.2f}")
    print(f"dynamic / fp32 latency ratio (ConvInteger):             {medians['bare dynamic'] / medians['fp32 (vs others)']:.2f}")


if __name__ == "__main__":
    main()
