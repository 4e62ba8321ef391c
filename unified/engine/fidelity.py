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
from unified.graph.float_stats import with_outputs
from unified.graph.ort_session import make_session


@dataclass(frozen=True)
class LayerAgreement:
    node: str
    source: str
    tensor: str
    elements: int
    within_one_step: float   # share of elements with |engine - export| <= 1
    max_steps: int
    equal: float = 1.0       # share of elements with engine == export

    def __str__(self) -> str:
        return (f"{self.node} ({self.source}) -> {self.tensor}: {self.within_one_step:.4%} of {self.elements} "
                f"elements within one step ({self.equal:.4%} equal), max {self.max_steps} steps")


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
                                          float((diff <= 1).mean()) if diff.size else 1.0, int(diff.max(initial=0)),
                                          float((diff == 0).mean()) if diff.size else 1.0))
    return results


@dataclass(frozen=True)
class Divergence:
    """One tensor, engine and export each run whole from the same integer input."""
    node: str
    tensor: str
    differing: float  # share of elements where the two differ
    max_steps: int


def divergence_by_depth(graph: IntegerGraph, x: np.ndarray) -> list[Divergence]:
    """Per tensor in graph order: how far engine and export have drifted apart end to end.

    Why: `layer_agreement` shows each layer alone agrees on nearly every element; this shows how
    the few one-step differences (float vs fixed-point requantization) grow when each side feeds
    its own outputs onward, which is what decides whether two implementations pick the same top-1.
    """
    names = [o for node in graph.nodes if node.op not in ("const", "float") for o in node.outputs
             if o in graph.tensors]
    engine = Interpreter(graph).run_all(x)
    session = _session(with_outputs(export_qdq(graph), names))
    wanted = [o.name for o in session.get_outputs()]
    export = dict(zip(wanted, session.run(wanted, x if isinstance(x, dict) else {graph.input_name: x})))
    producer = {o: node.name for node in graph.nodes for o in node.outputs}
    result = []
    for name in names:
        diff = np.abs(engine[name].astype(np.int64) - export[name].astype(np.int64))
        result.append(Divergence(producer[name], name, float((diff > 0).mean()) if diff.size else 0.0,
                                 int(diff.max(initial=0))))
    return result


def end_to_end(graph: IntegerGraph, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(engine output, export output) for the whole graph on the same integer input (the first
    output of a multi-output graph)."""
    engine = Interpreter(graph).run(x)
    if isinstance(engine, dict):
        engine = engine[graph.output_name]
    export = _session(export_qdq(graph)).run(None, x if isinstance(x, dict) else {graph.input_name: x})[0]
    return engine, export
