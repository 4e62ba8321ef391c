"""`IntegerGraph`: the lowered, integer-only program, and its pickle-free serialization.

Nodes name a kernel (`op`), their input/output tensors, JSON attributes and integer arrays
(weights minus zero point, int32 biases, fixed-point multipliers and shifts, lookup tables). Every
tensor between nodes is an 8-bit integer tensor with its `QuantParams`; the graph's input and output are
too, so quantize_input and dequantize_output are the only float steps.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unified.core.errors import SavedModelError
from unified.core.quant_params import IntegerBound, QuantParams
from unified.core.rounding import RoundingPolicy

GRAPH_FORMAT = 1


@dataclass
class IntNode:
    op: str                      # kernel name in the kernel table
    name: str                    # the ONNX node it comes from (fused ops: the first)
    inputs: list[str]
    outputs: list[str]
    source: str                  # original ONNX op type(s), e.g. "Conv+Clip"
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class IntegerGraph:
    nodes: list[IntNode]
    tensors: dict[str, QuantParams]
    input_names: list[str]       # graph inputs in graph order (most models have one)
    output_names: list[str]      # graph outputs in graph order (most models have one)
    dtype: str                   # "int8" | "uint8": every activation tensor
    rounding: RoundingPolicy
    scheme: dict[str, Any]
    input_shapes: list[list[int | str]]
    float_fallback: dict[str, bytes] = field(default_factory=dict)  # node name -> single-node ONNX
    float_reasons: dict[str, str] = field(default_factory=dict)     # node name -> why it runs in float
    #: run-time only, never saved: exact fast accumulators by node name (see ort_accumulate)
    accelerators: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    qmin = IntegerBound("dtype", 0)
    qmax = IntegerBound("dtype", 1)

    @property
    def input_q(self) -> QuantParams:
        return self.tensors[self.input_name]

    @property
    def output_q(self) -> QuantParams:
        return self.tensors[self.output_name]

    @property
    def input_name(self) -> str:
        return self.input_names[0]

    @property
    def input_shape(self) -> list[int | str]:
        return self.input_shapes[0]

    @property
    def output_name(self) -> str:
        return self.output_names[0]

    # -- serialization: JSON + one .npz (loaded with allow_pickle=False) ------------------------
    def to_files(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        nodes = []
        for i, node in enumerate(self.nodes):
            keys = {}
            for key, arr in node.arrays.items():
                slot = f"n{i}.{key}"
                arrays[slot] = np.asarray(arr)
                keys[key] = slot
            nodes.append({"op": node.op, "name": node.name, "inputs": node.inputs, "outputs": node.outputs,
                          "source": node.source, "attrs": node.attrs, "arrays": keys})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        meta = {
            "graph_format": GRAPH_FORMAT, "nodes": nodes,
            "tensors": {k: v.to_json() for k, v in self.tensors.items()},
            "input_names": self.input_names, "output_names": self.output_names, "dtype": self.dtype,
            "rounding": self.rounding.value, "scheme": self.scheme, "input_shapes": self.input_shapes,
            "float_fallback": sorted(self.float_fallback), "float_reasons": self.float_reasons,
        }
        blobs = {"arrays.npz": buffer.getvalue()}
        for name, data in self.float_fallback.items():
            blobs[f"fallback/{name}.onnx"] = data
        return blobs, meta

    @classmethod
    def from_files(cls, blobs: dict[str, bytes], meta: dict[str, Any]) -> "IntegerGraph":
        if meta.get("graph_format") != GRAPH_FORMAT:
            raise SavedModelError(f"unsupported integer graph format {meta.get('graph_format')!r}")
        try:
            with np.load(io.BytesIO(blobs["arrays.npz"]), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (ValueError, OSError, KeyError) as exc:
            raise SavedModelError(f"integer graph arrays are unreadable: {exc}") from exc
        nodes = [IntNode(op=n["op"], name=n["name"], inputs=list(n["inputs"]), outputs=list(n["outputs"]),
                         source=n["source"], attrs=n["attrs"], arrays={k: arrays[slot] for k, slot in n["arrays"].items()})
                 for n in meta["nodes"]]
        rounding = RoundingPolicy(meta["rounding"])
        inside = bool(meta["scheme"].get("zero_point_inside_round"))
        return cls(
            nodes=nodes,
            tensors={k: QuantParams(float(v[0]), int(v[1]), meta["dtype"], rounding=rounding, zero_point_inside_round=inside)
                     for k, v in meta["tensors"].items()},
            input_names=list(meta["input_names"]), output_names=list(meta["output_names"]), dtype=meta["dtype"],
            rounding=rounding, scheme=meta["scheme"], input_shapes=[list(s) for s in meta["input_shapes"]],
            float_fallback={name: blobs[f"fallback/{name}.onnx"] for name in meta.get("float_fallback", [])},
            float_reasons=dict(meta.get("float_reasons", {})),
        )
