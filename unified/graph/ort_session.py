"""ONNX Runtime sessions configured the same way everywhere: the ort backend, the engine's
accelerated convs, calibration taps, the fidelity oracle and the benchmarks."""
from __future__ import annotations

import os
import threading

import onnxruntime as ort

_shared_lock = threading.Lock()
_shared_registered = False


def _register_shared_arena() -> None:
    """One CPU arena in ORT's environment that every session asking for it shares: the engine's
    many one-layer sessions then reuse the same buffers (fast, and memory is one working set, not
    fifty kept peaks). Measured on Lite0: batch 1 23 ms (own arenas 27, none 29); peak RSS at
    batch 25 1.1 GB (own arenas 9 GB)."""
    global _shared_registered
    with _shared_lock:
        if not _shared_registered:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _shared_registered = True


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
                 memory_arena: bool = True, shared_arena: bool = False) -> ort.InferenceSession:
    """`shared_arena=True`: allocate from the one arena all such sessions share (see above)."""
    options = session_options(threads, optimization, memory_arena)
    if shared_arena:
        _register_shared_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    return ort.InferenceSession(model_bytes, sess_options=options,
                                providers=["CPUExecutionProvider"])
