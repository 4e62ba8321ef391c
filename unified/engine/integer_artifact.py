"""`IntegerArtifact`: an `IntegerGraph` plus its interpreter, as a backend's quantized model."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from unified.core.errors import InputError
from unified.engine import fused
from unified.engine.integer_graph import IntegerGraph
from unified.engine.interpreter import Interpreter, Tap


class IntegerArtifact:
    """What rknn and tengine return from quantize.

    `layout` is the native input layout the backend takes (RKNN: NHWC images); `model_layout` is
    the float model's own. A 4-D input is transposed between them when they differ.
    """

    def __init__(self, graph: IntegerGraph, layout: str, extra: dict[str, Any] | None = None,
                 model_layout: str = "NCHW") -> None:
        self.graph = graph
        self.layout = layout
        self.model_layout = model_layout
        self.extra = dict(extra or {})
        self.interpreter = Interpreter(graph)
        # The documented I/O params are the graph's own (same rounding rule), in the native layout;
        # per input name when the model has several (those keep the model's own layout).
        if len(graph.input_names) == 1:
            self.input_quant = replace(graph.input_q, layout=layout)
        else:
            self.input_quant = {name: replace(graph.tensors[name], layout="") for name in graph.input_names}
        outs = {name: replace(graph.tensors[name], layout="NC" if len(graph.output_names) == 1 else "")
                for name in graph.output_names}
        self.output_quant = next(iter(outs.values())) if len(outs) == 1 else outs

    @property
    def fixed_batch(self) -> int | None:
        return self.graph.fixed_batch

    @property
    def float_nodes(self) -> dict[str, str]:
        return dict(self.graph.float_reasons)

    def _transposes(self, ndim: int) -> bool:
        return ndim == 4 and self.layout != self.model_layout and len(self.graph.input_names) == 1

    def to_native(self, q: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        """Model layout -> native layout (NCHW -> NHWC or back), a no-op when they agree."""
        if isinstance(q, dict) or not self._transposes(q.ndim):
            return q
        perm = (0, 2, 3, 1) if self.layout == "NHWC" else (0, 3, 1, 2)
        return np.ascontiguousarray(q.transpose(perm))

    def to_model(self, native: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        if isinstance(native, dict) or not self._transposes(native.ndim):
            return native
        perm = (0, 3, 1, 2) if self.layout == "NHWC" else (0, 2, 3, 1)
        return np.ascontiguousarray(native.transpose(perm))

    def check_native(self, q: np.ndarray | dict[str, np.ndarray]) -> None:
        if isinstance(q, dict):
            if set(q) != set(self.graph.input_names):
                raise InputError(f"{self.graph.scheme['name']}: inputs {sorted(q)}, the model takes {self.graph.input_names}")
            for index, input_name in enumerate(self.graph.input_names):
                self._check_one(q[input_name], self.graph.input_shapes[index])
            return
        self._check_one(q, self.graph.input_shape)

    def _check_one(self, q: np.ndarray, shape: list[int | str]) -> None:
        name = self.graph.scheme["name"]
        if q.dtype != np.dtype(self.graph.dtype):
            raise InputError(f"{name}: native input must be {self.graph.dtype}, got {q.dtype}")
        dims = list(shape[1:])
        expected = dims
        if self._transposes(len(dims) + 1):
            perm = (1, 2, 0) if self.layout == "NHWC" else (2, 0, 1)
            expected = [dims[i] for i in perm]
        if q.ndim != len(dims) + 1 or any(isinstance(e, int) and e > 0 and e != g for e, g in zip(expected, q.shape[1:])):
            raise InputError(f"{name}: input shape {tuple(q.shape)} does not match the model's "
                             f"{self.layout} input (N, {', '.join(map(str, expected))})")

    def quantize_float(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        """A float batch in the model's layout -> native integer tensor (the input's scale/zero point);
        a dict by input name for a model with several inputs."""
        if isinstance(x, dict):  # (NaN/Inf and empty batches are refused once, by QuantizedModel)
            native = {name: self.graph.tensors[name].quantize(v) for name, v in x.items() if name in self.graph.tensors}
            self.check_native(native)
            return native
        if x.ndim != len(self.graph.input_shape):
            raise InputError(f"expected a float batch of rank {len(self.graph.input_shape)} "
                             f"({self.model_layout} for images), got shape {x.shape}")
        to_nhwc = self._transposes(x.ndim) and self.layout == "NHWC"
        q = fused.quantize(x, self.graph.input_q, to_nhwc) if x.dtype in (np.float32, np.float64) else None
        if q is None:
            native = self.to_native(self.graph.input_q.quantize(x))
        else:
            native = q if to_nhwc else self.to_native(q)
        self.check_native(native)
        return native

    def run(self, native: np.ndarray, tap: Tap | None = None) -> np.ndarray:
        self.check_native(native)
        return self.interpreter.run(self.to_model(native), tap)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        if isinstance(q, dict):
            return {name: self.graph.tensors[name].dequantize(v) for name, v in q.items()}
        return self.graph.output_q.dequantize(q).astype(np.float32)

    def to_files(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        blobs, meta = self.graph.to_files()
        return blobs, {"graph": meta, "layout": self.layout, "model_layout": self.model_layout, "extra": self.extra}

    @classmethod
    def from_files(cls, blobs: dict[str, bytes], meta: dict[str, Any]) -> "IntegerArtifact":
        return cls(IntegerGraph.from_files(blobs, meta["graph"]), meta["layout"], meta.get("extra"),
                   meta.get("model_layout", "NCHW"))
