"""Per-layer tensors of an integer graph for consistency analysis (RKNN's accuracy_analysis style).

"entire": every tensor of a normal run, dequantized. "single": each node fed the fp32 reference
tensors quantized with its inputs' own parameters, so only that layer's error shows.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from unified.engine.integer_artifact import IntegerArtifact
from unified.engine.kernels import KERNELS


def layer_outputs(artifact: IntegerArtifact, native: np.ndarray,
                  reference: Mapping[str, np.ndarray] | None) -> dict[str, dict[str, np.ndarray]]:
    g = artifact.graph
    x = artifact.to_model(native)
    values = artifact.interpreter.run_all(x)
    constants = {o for n in g.nodes if n.op == "const" for o in n.outputs}
    entire = {name: g.tensors[name].dequantize(v).astype(np.float32)
              for name, v in values.items() if name in g.tensors and name not in constants and name not in g.input_names}
    single: dict[str, np.ndarray] = {}
    if reference is not None:
        for node in g.nodes:
            if node.op == "const" or not all(i in reference or i in constants for i in node.inputs):
                continue
            inputs = [values[i] if i in constants else
                      g.tensors[i].quantize(reference[i])
                      for i in node.inputs]
            outs = KERNELS[node.op](node, inputs, artifact.interpreter.graph, None)
            for name, out in zip(node.outputs, outs):
                single[name] = g.tensors[name].dequantize(out).astype(np.float32)
    return {"entire": entire, "single": single}
