"""`IntegerArtifact`: an `IntegerGraph` plus its interpreter, as a backend's quantized model."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from unified.core.errors import InputError
from unified.engine.integer_graph import IntegerGraph
from unified.engine.interpreter import Interpreter, Tap


class IntegerArtifact:
    """What rknn and tengine return from quantize. `layout` is the native input layout."""

    def __init__(self, graph: IntegerGraph, layout: str, extra: dict[str, Any] | None = None) -> None:
        self.graph = graph
        self.layout = layout
        self.extra = dict(extra or {})
        self.interpreter = Interpreter(graph)
        # The documented I/O params are the graph's own (same rounding rule), in the native layout.
        self.input_quant = replace(graph.input_q, layout=layout)
        self.output_quant = replace(graph.output_q, layout="NC")

    @property
    def channels_hw(self) -> tuple[int, int, int] | None:
        shape = self.graph.input_shape
        dims = shape[1:] if len(shape) == 4 else None
        if dims and all(isinstance(d, int) and d > 0 for d in dims):
            return tuple(dims)  # type: ignore[return-value]
        return None

    def check_native(self, q: np.ndarray) -> None:
        if q.dtype != np.dtype(self.graph.dtype):
            raise InputError(f"{self.graph.scheme['name']}: native input must be {self.graph.dtype}, got {q.dtype}")
        chw = self.channels_hw
        if chw is None:
            return
        c, h, w = chw
        expected = (h, w, c) if self.layout == "NHWC" else (c, h, w)
        if q.ndim != 4 or tuple(q.shape[1:]) != expected:
            raise InputError(f"{self.graph.scheme['name']}: input shape {q.shape} does not match the model's "
                             f"{self.layout} input (N, {', '.join(map(str, expected))})")

    def quantize_float(self, x: np.ndarray) -> np.ndarray:
        """A float NCHW batch -> native integer tensor (quantized with the input's scale/zero point)."""
        if x.ndim != 4:
            raise InputError(f"expected a float NCHW batch, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise InputError("input batch contains NaN or Inf values")
        g = self.graph
        q = g.input_q.quantize(x)
        native = np.ascontiguousarray(q.transpose(0, 2, 3, 1)) if self.layout == "NHWC" else q
        self.check_native(native)
        return native

    def run(self, native: np.ndarray, tap: Tap | None = None) -> np.ndarray:
        self.check_native(native)
        x = np.ascontiguousarray(native.transpose(0, 3, 1, 2)) if self.layout == "NHWC" else native
        return self.interpreter.run(x, tap)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return self.graph.output_q.dequantize(q).astype(np.float32)

    def to_files(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        blobs, meta = self.graph.to_files()
        return blobs, {"graph": meta, "layout": self.layout, "extra": self.extra}

    @classmethod
    def from_files(cls, blobs: dict[str, bytes], meta: dict[str, Any]) -> "IntegerArtifact":
        return cls(IntegerGraph.from_files(blobs, meta["graph"]), meta["layout"], meta.get("extra"))
