"""The fidelity oracle: the integer engine against its own QDQ export run by ONNX Runtime.

Layer by layer, each node of the integer graph is exported alone as a QDQ model and fed exactly
the integer inputs the engine gave it; its integer output is compared with the engine's. Fixed
point vs float requantization and rounding ties explain differences of one step; anything larger
means the engine does not compute what the scheme says.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from unified.engine.integer_graph import IntegerGraph
from unified.engine.interpreter import Interpreter
from unified.engine.qdq_export import export_qdq
from unified.graph.ort_session import make_session


@dataclass(frozen=True)
class LayerAgreement:
    node: str
    source: str
    tensor: str
    elements: int
    within_one_step: float   # share of elements with |engine - export| <= 1
    max_steps: int

    def __str__(self) -> str:
        return (f"{self.node} ({self.source}) -> {self.tensor}: {self.within_one_step:.4%} of {self.elements} "
                f"elements within one step, max {self.max_steps} steps")


def _session(model) -> ort.InferenceSession:
    """No graph optimizations: ORT then evaluates QDQ as written (DequantizeLinear, float op,
    QuantizeLinear), the ONNX semantics. Optimized, it fuses them into int8 kernels that on x86
    CPUs without VNNI multiply uint8 x int8 with VPMADDUBSW, whose int16 pair sums saturate, and
    the oracle would then disagree with an exact engine by up to a hundred steps."""
    return make_session(model.SerializeToString(), threads=1, optimization=ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                        memory_arena=False)


def layer_agreement(graph: IntegerGraph, x: np.ndarray) -> list[LayerAgreement]:
    """Per node: engine output vs the node's QDQ export fed the engine's own integer inputs."""
    values = Interpreter(graph).run_all(x)
    results = []
    for node in graph.nodes:
        if node.op in ("const", "float"):  # float fallback is ONNX's own op, not the engine's arithmetic
            continue
        session = _session(export_qdq(graph, [node]))
        feeds = {i.name: values[i.name] for i in session.get_inputs()}
        outs = session.run(None, feeds)
        for name, ref in zip(node.outputs, outs):
            got = values[name].astype(np.int64)
            diff = np.abs(got - ref.astype(np.int64))
            results.append(LayerAgreement(node.name, node.source, name, int(diff.size),
                                          float((diff <= 1).mean()) if diff.size else 1.0, int(diff.max(initial=0))))
    return results


def end_to_end(graph: IntegerGraph, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(engine output, export output) for the whole graph on the same integer input (the first
    output of a multi-output graph)."""
    engine = Interpreter(graph).run(x)
    if isinstance(engine, dict):
        engine = engine[graph.output_name]
    export = _session(export_qdq(graph)).run(None, x if isinstance(x, dict) else {graph.input_name: x})[0]
    return engine, export
