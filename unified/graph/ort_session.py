"""ONNX Runtime sessions configured the same way everywhere: the ort backend, the engine's
accelerated convs, calibration taps, the fidelity oracle and the benchmarks."""
from __future__ import annotations

import os

import onnxruntime as ort


def session_options(threads: int | None = None,
                    optimization: ort.GraphOptimizationLevel | None = None,
                    memory_arena: bool = True) -> ort.SessionOptions:
    """Spinning off: on a shared 2-core machine spinning threads steal the time they wait for.

    `UNIFIED_ORT_THREADS` (or `threads`) fixes the intra-op thread count; 0 lets ORT choose.
    `memory_arena=False` for the many small helper sessions (one per engine conv, calibration
    taps): an arena keeps the largest batch's buffers for the session's whole life, which across
    fifty sessions per model held gigabytes.
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads if threads is not None else int(os.environ.get("UNIFIED_ORT_THREADS", "0"))
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = memory_arena
    if optimization is not None:
        so.graph_optimization_level = optimization
    return so


def make_session(model_bytes: bytes, threads: int | None = None,
                 optimization: ort.GraphOptimizationLevel | None = None,
                 memory_arena: bool = True) -> ort.InferenceSession:
    return ort.InferenceSession(model_bytes, sess_options=session_options(threads, optimization, memory_arena),
                                providers=["CPUExecutionProvider"])
