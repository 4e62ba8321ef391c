"""Running an `IntegerGraph`: the kernel table applied node by node, with an optional tap.

The tap sees every tensor a node produces ("activation") and every accumulator ("accumulator"),
which is how the tests prove the run is integer-only and how per-layer analysis reads tensors.
Float fallback nodes are the kernel "float" like any other; the interpreter prepares their
evaluators (ONNX's reference evaluator over the node's one-node model) once, up front.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from unified.core.batching import run_in_chunks
from unified.core.errors import InputError
from unified.engine.integer_graph import IntegerGraph
from unified.engine.kernels import KERNELS

Tap = Callable[[str, str, np.ndarray], None]
CHUNK_SAMPLES = 8


def _no_tap(node: str, kind: str, array: np.ndarray) -> None:
    return None


class Interpreter:
    """Executes one IntegerGraph; thread-safe (no state is written during `run`).

    `reference=True` keeps every accumulator and requantization in int64 numpy (the readable
    reference); the default also uses float64 carriers where lowering proved them exact
    (`requant_f64`) and the fused kernels of `fused.py`, which is several times faster. Tests check
    that both modes agree bit for bit.
    """

    def __init__(self, graph: IntegerGraph, reference: bool = False) -> None:
        accelerators: dict[str, object] = {name: _float_evaluator(model) for name, model in graph.float_fallback.items()}
        accelerators.update({  # gemm weights in their exact float carrier, converted once, not per run
            node.name: np.ascontiguousarray(node.arrays["w"].astype(
                np.float32 if node.attrs.get("exact") == "float32" else np.float64).T)
            for node in graph.nodes if node.op == "gemm"})
        if reference:
            graph = replace(graph, nodes=[replace(n, attrs={**n.attrs, "requant_f64": False, "reference": True})
                                          for n in graph.nodes])
        else:
            from unified.engine.ort_accumulate import (
                conv_accumulator_session, integer_conv_accumulator, split_conv_accumulator_session)

            convs = ("conv", "conv_add")
            for node in graph.nodes:
                if node.op not in convs:
                    continue
                integer = integer_conv_accumulator(node, graph.dtype, graph.qmin, graph.qmax)
                if integer is not None:
                    accelerators[node.name] = integer
                elif node.attrs.get("exact") == "float32":
                    accelerators[node.name] = conv_accumulator_session(node, graph.dtype)
                elif node.attrs.get("exact") == "float64":
                    session = split_conv_accumulator_session(node, graph.dtype, graph.qmin, graph.qmax)
                    if session is not None:
                        accelerators[node.name] = session
        self.graph = replace(graph, accelerators=accelerators)
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

        A large batch runs `CHUNK_SAMPLES` samples at a time (samples are independent, so the
        result is the same): per image, batch 8 is the fastest size measured (0.8-0.85x batch 1
        on Lite0), and the ORT arena the engine's sessions share then never grows past a batch
        of 8, whatever batch a caller passes (a 200-image batch held gigabytes for good)."""
        if tap is not None:
            return self._run(x, tap)
        return run_in_chunks(self._run, x, CHUNK_SAMPLES)

    def _run(self, x: np.ndarray, tap: Tap | None = None) -> np.ndarray | dict[str, np.ndarray]:
        g = self.graph
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


def _float_evaluator(model_bytes: bytes):
    """The evaluator of one float-fallback node (ONNX's reference evaluator: any op, any opset)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(onnx.load_from_string(model_bytes))
