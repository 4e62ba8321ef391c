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
from unified.core.quant_params import IntegerBound, QuantParams, integer_range
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
    #: run-time only: the prepared fused requantization of accelerated nodes (fused.PreparedRequant)
    requantizers: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

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
    def fixed_batch(self) -> int | None:
        """The batch size the graph was made static at, or None when any batch runs."""
        batch = self.input_shape[0] if self.input_shape else None
        return batch if isinstance(batch, int) and batch > 0 else None

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
        # member names by position: node names come from the model's author and are not safe paths
        for index, name in enumerate(meta["float_fallback"]):
            blobs[f"fallback/{index}.onnx"] = self.float_fallback[name]
        return blobs, meta

    @classmethod
    def from_files(cls, blobs: dict[str, bytes], meta: dict[str, Any]) -> "IntegerGraph":
        """Restore a saved graph; every value is checked (`validate`), every problem a SavedModelError."""
        if not isinstance(meta, dict) or meta.get("graph_format") != GRAPH_FORMAT:
            raise SavedModelError(f"unsupported integer graph format {meta.get('graph_format') if isinstance(meta, dict) else meta!r}")
        try:
            with np.load(io.BytesIO(blobs["arrays.npz"]), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (ValueError, OSError, KeyError, EOFError) as exc:
            raise SavedModelError(f"integer graph arrays are unreadable: {exc}") from exc
        try:
            graph = cls._from_meta(blobs, meta, arrays)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise SavedModelError(f"integer graph description is malformed: {type(exc).__name__}: {str(exc)[:160]}") from exc
        graph.validate()
        return graph

    @classmethod
    def _from_meta(cls, blobs: dict[str, bytes], meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "IntegerGraph":
        nodes = [IntNode(op=str(n["op"]), name=str(n["name"]), inputs=[str(i) for i in n["inputs"]],
                         outputs=[str(o) for o in n["outputs"]], source=str(n["source"]), attrs=dict(n["attrs"]),
                         arrays={str(k): arrays[slot] for k, slot in n["arrays"].items()})
                 for n in meta["nodes"]]
        rounding = RoundingPolicy(meta["rounding"])
        inside = bool(meta["scheme"].get("zero_point_inside_round"))
        fallback_names = [str(n) for n in meta.get("float_fallback", [])]
        return cls(
            nodes=nodes,
            tensors={k: QuantParams(float(v[0]), int(v[1]), meta["dtype"], rounding=rounding, zero_point_inside_round=inside)
                     for k, v in meta["tensors"].items()},
            input_names=list(meta["input_names"]), output_names=list(meta["output_names"]), dtype=meta["dtype"],
            rounding=rounding, scheme=meta["scheme"], input_shapes=[list(s) for s in meta["input_shapes"]],
            float_fallback={name: blobs[f"fallback/{i}.onnx"] for i, name in enumerate(fallback_names)},
            float_reasons=dict(meta.get("float_reasons", {})),
        )

    def validate(self) -> None:
        """Refuse a graph no engine build could have produced: unknown kernels, tensors used but never
        produced or without valid params (scale finite and > 0, zero point inside the dtype), bad
        shapes or attributes. Saved files are untrusted, so `from_files` calls this."""
        from unified.engine.kernels import KERNELS  # the kernel table imports this module

        def bad(message: str) -> None:
            raise SavedModelError(f"integer graph: {message}")

        if self.dtype not in ("int8", "uint8"):
            bad(f"activation dtype {self.dtype!r} is not int8 or uint8")
        qmin, qmax = integer_range(self.dtype)
        for name, params in self.tensors.items():
            scale, zp = params.scale, params.zero_point
            if not isinstance(scale, float) or not np.isfinite(scale) or scale <= 0:
                bad(f"tensor {name!r} has scale {scale!r}; scales must be finite and > 0")
            if not isinstance(zp, int) or not qmin <= zp <= qmax:
                bad(f"tensor {name!r} has zero point {zp!r}, outside {self.dtype} [{qmin}, {qmax}]")
        for shape in self.input_shapes:
            for d in shape:
                if not (isinstance(d, str) or (isinstance(d, int) and 0 < d <= 2**20)):
                    bad(f"input dimension {d!r} is not a positive size (or a name)")
        available = set(self.input_names)
        for node in self.nodes:
            if node.op not in KERNELS:
                bad(f"node {node.name!r} names an unknown kernel {node.op!r}")
            for name in node.inputs:
                if name not in available:
                    bad(f"node {node.name!r} reads tensor {name!r}, which nothing produces before it")
                if node.op != "float" and name not in self.tensors:
                    bad(f"node {node.name!r} reads tensor {name!r}, which has no quantization params")
            if node.op == "float" and node.name not in self.float_fallback:
                bad(f"float node {node.name!r} has no model")
            for key in ("group", "strides", "kernel", "dilations", "factors"):
                values = node.attrs.get(key)
                if values is not None and any(not isinstance(v, int) or v <= 0 for v in np.atleast_1d(values).tolist()):
                    bad(f"node {node.name!r} has {key}={values!r}; it must be positive integers")
            for key in ("mult", "shift"):
                arr = node.arrays.get(key)
                if arr is not None and (arr.dtype.kind not in "iu" or (key == "shift" and np.any(np.abs(arr) > 62))
                                        or (key == "mult" and np.any((arr < 0) | (arr >= 2**31)))):
                    bad(f"node {node.name!r} has an invalid fixed-point {key}")
            available.update(node.outputs)
        for name in self.output_names:
            if name not in available or name not in self.tensors:
                bad(f"output {name!r} is not produced with quantization params")
