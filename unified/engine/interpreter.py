"""Running an `IntegerGraph`: the kernel table applied node by node, with an optional tap.

The tap sees every tensor a node produces ("activation") and every accumulator ("accumulator"),
which is how the tests prove the run is integer-only and how per-layer analysis reads tensors.
Float fallback nodes are the kernel "float" like any other; the interpreter prepares their
evaluators (ONNX's reference evaluator over the node's one-node model) once, up front.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import lru_cache
from typing import Callable

import numpy as np

from unified.core.batching import batch_size, concatenate_outputs, run_in_chunks, take
from unified.core.errors import InputError
from unified.engine import fused
from unified.engine.integer_graph import IntegerGraph
from unified.engine.kernels import KERNELS, requant_reals

Tap = Callable[[str, str, np.ndarray], None]
CHUNK_SAMPLES = 8


def _no_tap(node: str, kind: str, array: np.ndarray) -> None:
    return None


class Interpreter:
    """Executes one IntegerGraph; thread-safe (`run` writes no state but the one-thread sessions
    of the batch workers, built once under a lock).

    `reference=True` keeps every accumulator and requantization in int64 numpy (the readable
    reference); the default also uses float64 carriers where lowering proved them exact
    (`requant_f64`) and the fused kernels of `fused.py`, which is several times faster. Tests check
    that both modes agree bit for bit.
    """

    def __init__(self, graph: IntegerGraph, reference: bool = False) -> None:
        if reference:
            graph = replace(graph, nodes=[replace(n, attrs={**n.attrs, "requant_f64": False, "reference": True})
                                          for n in graph.nodes])
        self.reference = reference
        accelerators = _accelerators(graph, reference, threads=None)
        self.graph = replace(graph, accelerators=accelerators, requantizers=_requantizers(graph, accelerators))
        #: what untapped runs use: as `graph`, but layers feeding a float conv write its float carrier
        self._fast = _with_carriers(self.graph)
        self._narrow: IntegerGraph | None = None   # one-thread sessions for batch workers (lazy)
        self._narrow_lock = threading.Lock()
        graph = self.graph
        last_use: dict[str, int] = {}
        for i, node in enumerate(graph.nodes):
            for name in node.inputs:
                last_use[name] = i
        keep = set(graph.output_names)
        #: node index -> the tensors no later node reads (freed after it runs)
        self.free_after = {i: [n for n, last in last_use.items() if last == i and n not in keep]
                           for i in range(len(graph.nodes))}

    def run(self, x: np.ndarray, tap: Tap | None = None) -> np.ndarray | dict[str, np.ndarray]:
        """The graph's output (a dict by name when the graph has several).

        A batch of several samples is cut into pieces that run on the engine's worker threads, one
        per core, with at most `CHUNK_SAMPLES` samples in flight (samples are independent, so the
        result is the same bit for bit). The convs then run on one-thread ORT sessions and the
        fused kernels release the GIL, so the cores work on different samples instead of waking
        each other for every layer: on 2 cores, Lite0's batch 8 went from 0.85x to 0.55x of the
        batch-1 time per image. The cap keeps the ORT arena the sessions share from growing past a
        batch of 8, whatever batch a caller passes (a 200-image batch held gigabytes for good)."""
        if tap is not None:
            return self._run(x, tap)
        n = batch_size(x)
        workers = engine_workers()
        if self.reference or workers < 2 or n < 2:
            return run_in_chunks(self._run, x, CHUNK_SAMPLES)
        size = min(max(1, CHUNK_SAMPLES // workers), -(-n // workers))  # at most CHUNK_SAMPLES in flight
        graph = self._narrow_graph()
        pieces = [take(x, i, i + size) for i in range(0, n, size)]
        return concatenate_outputs(list(_pool(workers).map(lambda piece: self._run(piece, graph=graph), pieces)))

    def _narrow_graph(self) -> IntegerGraph:
        """The graph with accelerators on one-thread sessions, built on the first batched run."""
        with self._narrow_lock:
            if self._narrow is None:
                accelerators = _accelerators(self.graph, False, threads=1)
                self._narrow = _with_carriers(replace(self.graph, accelerators=accelerators,
                                                      requantizers=_requantizers(self.graph, accelerators)))
            return self._narrow

    def _run(self, x: np.ndarray, tap: Tap | None = None,
             graph: IntegerGraph | None = None) -> np.ndarray | dict[str, np.ndarray]:
        g = graph or (self.graph if tap is not None else self._fast)
        values: dict[str, np.ndarray] = dict(x) if isinstance(x, dict) else {g.input_name: x}
        for name in g.input_names:
            if name not in values:
                raise InputError(f"missing input {name!r}; the model takes {g.input_names}")
            if values[name].dtype != np.dtype(g.dtype):
                raise InputError(f"integer input {name!r} must be {g.dtype}, got {values[name].dtype}")
        listening = tap is not None
        tap = tap or _no_tap
        for name in g.input_names:
            tap("input", "activation", values[name])
        for i, node in enumerate(g.nodes):
            inputs = [values[n] for n in node.inputs]
            outs = KERNELS[node.op](node, inputs, g, tap if listening else None)
            for name, value in zip(node.outputs, outs):
                values[name] = value
                tap(node.name, "activation", value)
            if tap is _no_tap:
                for name in self.free_after[i]:
                    values.pop(name, None)
        if len(g.output_names) == 1:
            return values[g.output_name]
        return {name: values[name] for name in g.output_names}

    def run_all(self, x: np.ndarray, tap: Tap | None = None) -> dict[str, np.ndarray]:
        """Every tensor of one run by name (per-layer analysis and the fidelity oracle)."""
        values: dict[str, np.ndarray] = {}
        g = self.graph
        values.update(x if isinstance(x, dict) else {g.input_name: x})
        for node in g.nodes:
            inputs = [values[n] for n in node.inputs]
            outs = KERNELS[node.op](node, inputs, g, tap)
            values.update(zip(node.outputs, outs))
        return values


def engine_workers() -> int:
    """Threads a batch runs on: `UNIFIED_ENGINE_THREADS`, else the cores this process may use."""
    configured = os.environ.get("UNIFIED_ENGINE_THREADS")
    if configured:
        return max(1, int(configured))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@lru_cache(maxsize=None)
def _pool(workers: int) -> ThreadPoolExecutor:
    """One pool per size for the whole process (its threads only ever run `_run`, never submit)."""
    return ThreadPoolExecutor(workers, thread_name_prefix="unified-engine")


def _accelerators(graph: IntegerGraph, reference: bool, threads: int | None) -> dict[str, object]:
    """The run-time helpers by node name: float-fallback evaluators, gemm weights in their float
    carrier, and (unless `reference`) the exact ORT accumulators of convs and gemms, whose sessions
    get `threads` intra-op threads (None: ORT's choice)."""
    from unified.engine.ort_accumulate import (
        conv_accumulator_session, integer_conv_accumulator, integer_gemm_accumulator,
        split_conv_accumulator_session)

    accelerators: dict[str, object] = {name: _float_evaluator(model) for name, model in graph.float_fallback.items()}
    for node in graph.nodes:
        if node.op != "gemm":
            continue
        integer = None if reference else integer_gemm_accumulator(node, graph.dtype, graph.qmin, graph.qmax, threads)
        # else the weights in their exact float carrier, converted once, not per run
        accelerators[node.name] = integer if integer is not None else np.ascontiguousarray(node.arrays["w"].astype(
            np.float32 if node.attrs.get("exact") == "float32" else np.float64).T)
    if reference:
        return accelerators
    centred = set(_carrier_pairs(graph).values())
    for node in graph.nodes:
        if node.op not in ("conv", "conv_add"):
            continue
        integer = integer_conv_accumulator(node, graph.dtype, graph.qmin, graph.qmax, threads)
        if integer is not None:
            accelerators[node.name] = integer
        elif node.attrs.get("exact") == "float32":
            accelerators[node.name] = conv_accumulator_session(node, graph.dtype, threads, node.name in centred)
        elif node.attrs.get("exact") == "float64":
            session = split_conv_accumulator_session(node, graph.dtype, graph.qmin, graph.qmax, threads)
            if session is not None:
                accelerators[node.name] = session
    return accelerators


def _carrier_pairs(graph: IntegerGraph) -> dict[str, str]:
    """Producer conv -> the depthwise conv that alone reads its output (float32-exact, so run on
    ORT's float Conv): the producer's requantization can write x - zx as float32 straight away."""
    readers: dict[str, int] = {}
    for node in graph.nodes:
        for name in node.inputs:
            readers[name] = readers.get(name, 0) + 1
    producers = {name: node for node in graph.nodes for name in node.outputs}
    pairs = {}
    for node in graph.nodes:
        if node.op != "conv" or node.attrs.get("group", 1) == 1 or node.attrs.get("exact") != "float32":
            continue
        source = producers.get(node.inputs[0])
        if (source is not None and source.op == "conv" and source.attrs.get("requant_f64")
                and readers[node.inputs[0]] == 1 and node.inputs[0] not in graph.output_names):
            pairs[source.name] = node.name
    return pairs


def _with_carriers(graph: IntegerGraph) -> IntegerGraph:
    """`graph` whose carrier producers (`_carrier_pairs`) requantize to float32 x - zx: the same
    integers, shifted by the reader's zero point (exact in float32), so clamp bounds and zero point
    shift with it. Only untapped runs use it: taps and `run_all` see the 8-bit tensors."""
    by_name = {node.name: node for node in graph.nodes}
    carriers = {}
    for producer, reader in _carrier_pairs(graph).items():
        plain = graph.requantizers.get(producer)
        if plain is None or not hasattr(graph.accelerators.get(reader), "zx"):
            continue
        node, zx = by_name[producer], by_name[reader].attrs["zx"]
        carriers[producer] = fused.PreparedRequant(
            plain.real, plain.bias if plain.use_bias else None, node.attrs["zo"] - zx, node.attrs["act_min"] - zx,
            node.attrs["act_max"] - zx, graph.rounding.value, np.float32, plain.coef if plain.use_box else None,
            plain.source)
    return replace(graph, requantizers={**graph.requantizers, **carriers}) if carriers else graph


def _requantizers(graph: IntegerGraph, accelerators: dict[str, object]
                  ) -> dict[str, fused.PreparedRequant | fused.PreparedAdd]:
    """Prepared fused requantizations of the ORT-accumulated convs and gemms whose float64 carrier
    lowering proved exact (`requant_f64`), and of the integer Adds; empty without numba (the
    kernels then run numpy)."""
    if not fused.available():
        return {}
    prepared: dict[str, fused.PreparedRequant | fused.PreparedAdd] = {}
    for node in graph.nodes:
        if node.op == "add" and not node.attrs.get("reference") and fused.PreparedAdd.applies(node.arrays):
            lo = graph.qmin if node.attrs["act_min"] is None else node.attrs["act_min"]
            hi = graph.qmax if node.attrs["act_max"] is None else node.attrs["act_max"]
            prepared[node.name] = fused.PreparedAdd(node.attrs, node.arrays, lo, hi, graph.rounding.value, graph.dtype)
            continue
        accelerated = accelerators.get(node.name)
        if (node.op not in ("conv", "gemm") or accelerated is None or isinstance(accelerated, np.ndarray)
                or not node.attrs.get("requant_f64") or node.attrs.get("reference")):
            continue
        real, bias_real = requant_reals(node, add_bias=True)
        prepared[node.name] = fused.PreparedRequant(
            real, bias_real, node.attrs["zo"], node.attrs["act_min"], node.attrs["act_max"], graph.rounding.value,
            graph.dtype, getattr(accelerated, "offsets", None), fused.PreparedRequant.source_of(node))
    return prepared


def _float_evaluator(model_bytes: bytes):
    """The evaluator of one float-fallback node (ONNX's reference evaluator: any op, any opset)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(onnx.load_from_string(model_bytes))
