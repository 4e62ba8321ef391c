"""`LoweringContext`: the state of one lowering run and the decisions every op family shares.

It holds the float graph (initializers, consumers, shapes), the scheme, where float ranges come
from (`RangeSource`, chosen by the caller's quantization algorithms), and what has been lowered so
far. Op families (linear, elementwise, pooling, movement, activations, fallback) call its helpers:
output parameters from calibration or fixed by the math, ReLU/ReLU6 fusion and clamp bounds,
quantized weights and biases, and the exactness proofs of the fast executor.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx
from onnx import numpy_helper

from unified.core.errors import CalibrationError, ModelError, UnsupportedOperatorError
from unified.core.quant_params import QuantParams
from unified.engine.fixed_point import quantize_multiplier
from unified.engine.integer_graph import IntNode
from unified.engine.scheme import Scheme, widen_to_zero
from unified.graph.onnx_model import node_attributes

#: |bias| * m < 2^52: dead channels stay on the exact float64 requantization path
BIAS_LIMIT = 2**21
#: a calibrated range narrower than this is degenerate (a tensor constant on the calibration data)
MIN_RANGE = 1e-6
#: a range wider than this cannot be an activation of a working network
MAX_RANGE = 1e12


@dataclass(frozen=True)
class RangeSource:
    """Where lowering gets float ranges: the quantization algorithms decide, the engine applies.

    `activation(name)` is a tensor's calibrated (lo, hi), or None when there is no calibration
    (a scale table gives every tensor's params). `weight(w)` is the (lo, hi) per output channel
    (rows along axis 0) or one pair per tensor, as arrays.
    """

    activation: Callable[[str], tuple[float, float]] | None
    weight: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    #: weights whose (scales, zero points) are given, by initializer name (an imported QDQ model)
    given_weights: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    #: a Softmax inside the graph (attention) takes its calibrated range from 0 instead of the
    #: scheme's fixed [0, 1]: over T tokens its probabilities are near 1/T, far below 1/255
    calibrated_softmax: bool = False
    #: a fused clamp with a lower bound of 0 fixes the output range (a ReLU6 output is exactly
    #: [0, 6], as RKNN and Tengine's min-max give it); False: the fused output's own calibrated
    #: range, as is (Tengine's KL and ACIQ calibrate fused outputs like any other tensor)
    clamp_fixes_range: bool = True


class DegenerateRangeWarning(UserWarning):
    """A tensor's calibrated range was too narrow to quantize and was widened."""


class RequantizationRangeError(CalibrationError):
    """A layer's input and output scales are too far apart for fixed-point requantization (the
    lowering walk names the node)."""


def multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point (multiplier, shift) of a real rescale factor (TFLite's QuantizeMultiplier)."""
    try:
        return quantize_multiplier(real)
    except ValueError as exc:
        raise RequantizationRangeError(f"{exc}; its input and output ranges differ too much to requantize "
                                       "(check the calibration data)") from None


class LoweringContext:
    """One lowering run: the graph being built and the decisions made so far."""

    def __init__(self, model: onnx.ModelProto, scheme: Scheme, ranges: RangeSource,
                 float_fallback: set[str], given: dict[str, QuantParams] | None = None) -> None:
        self.model = model
        self.graph = model.graph
        self.scheme = scheme
        self.ranges = ranges
        self.given = dict(given or {})
        self.fallback_ops = float_fallback
        self.missing: list[str] = []
        self.inits = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.outputs = {o.name for o in self.graph.output}
        self.shapes = self._shapes()
        self.tensors: dict[str, QuantParams] = {}
        self.nodes: list[IntNode] = []
        self.fallback_models: dict[str, bytes] = {}
        self.float_reasons: dict[str, str] = {}    # node key -> why it runs in float
        self.float_produced: set[str] = set()      # tensors a float node produces (float domain)
        self.fused: set[str] = set()

    def _shapes(self) -> dict[str, list[int]]:
        shapes = {}
        for vi in list(self.graph.value_info) + list(self.graph.input) + list(self.graph.output):
            dims = vi.type.tensor_type.shape.dim
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
        return shapes

    # -- emitting -------------------------------------------------------------------------------
    def emit(self, op: str, node: onnx.NodeProto, inputs: list[str], outputs: list[str], source: str,
             attrs: dict[str, Any], arrays: dict[str, np.ndarray], out_params: QuantParams | None = None) -> None:
        """Append an integer node; `out_params` (if given) become every output's parameters."""
        self.nodes.append(IntNode(op, node_key(node), inputs, outputs, source, attrs, arrays))
        if out_params is not None:
            for out in outputs:
                self.tensors[out] = out_params

    # -- activation parameters ------------------------------------------------------------------
    def params_from_range(self, lo: float, hi: float, name: str | None = None) -> QuantParams:
        if not (np.isfinite(lo) and np.isfinite(hi)) or max(abs(lo), abs(hi)) > MAX_RANGE:
            raise CalibrationError(f"tensor {name or '?'!r}: calibrated range [{lo:.4g}, {hi:.4g}] cannot be "
                                   f"quantized (beyond +-{MAX_RANGE:.0e}); check the calibration data's scale")
        lo, hi = widen_to_zero(lo, hi)
        if hi - lo < MIN_RANGE:
            warnings.warn(f"tensor {name or '?'!r} is constant ({lo:.3g}) on the calibration data; its range is "
                          f"widened to {MIN_RANGE:g} (give varied calibration data)", DegenerateRangeWarning, stacklevel=2)
            hi = lo + MIN_RANGE
        return self.scheme.activation_params(lo, hi)

    def calibrated(self, name: str) -> QuantParams:
        if name in self.given:
            return self.given[name]
        if self.ranges.activation is None:
            self.missing.append(name)
            return self.scheme.params(1.0, 0)
        return self.params_from_range(*self.ranges.activation(name), name=name)

    def q(self, name: str) -> QuantParams:
        """Parameters of an operand: already lowered, a constant quantized on first use, or the
        output of a float node, quantized where it enters the integer graph."""
        if name not in self.tensors:
            if name in self.inits:
                return self.constant(name)
            if name in self.float_produced:
                try:
                    self.tensors[name] = self.calibrated(name)
                except ModelError:  # not a float tensor (shapes, indices): it cannot be quantized
                    raise UnsupportedOperatorError(f"input {name!r} is not a quantizable float tensor") from None
                return self.tensors[name]
            raise ModelError(f"tensor {name!r} is used before it is produced")
        return self.tensors[name]

    def checkpoint(self) -> tuple[int, set[str], set[str]]:
        """What to restore if a lowering gives up half-way (it then runs in float)."""
        return len(self.nodes), set(self.tensors), set(self.fused)

    def restore(self, mark: tuple[int, set[str], set[str]]) -> None:
        count, tensors, fused = mark
        del self.nodes[count:]
        for name in set(self.tensors) - tensors:
            del self.tensors[name]
        self.fused = fused

    def constant(self, name: str) -> QuantParams:
        """Quantize a constant operand (of Add, Mul, Concat) as a tensor of its own."""
        value = self.inits[name].astype(np.float64)
        tq = self.params_from_range(float(value.min()), float(value.max()), name=name)
        qv = np.clip(self.scheme.rounding.round(value / tq.scale) + tq.zero_point, self.scheme.qmin, self.scheme.qmax)
        self.nodes.append(IntNode("const", f"const:{name}", [], [name], "Constant", {},
                                  {"value": np.asarray(qv).astype(np.int64)}))
        self.tensors[name] = tq
        return tq

    def output_params(self, out_name: str, bounds: tuple[float, float]) -> QuantParams:
        """Calibrated params narrowed to a fused clamp; a ReLU6 output is exactly [0, 6]."""
        if out_name in self.given or self.ranges.activation is None:
            return self.calibrated(out_name)
        if not self.ranges.clamp_fixes_range:  # the fused output calibrated like any tensor (Tengine KL/ACIQ)
            return self.calibrated(out_name)
        lo_b, hi_b = bounds
        if np.isfinite(lo_b) and np.isfinite(hi_b) and lo_b == 0.0:
            return self.params_from_range(0.0, hi_b, name=out_name)
        lo, hi = self.ranges.activation(out_name)
        return self.params_from_range(max(lo, lo_b), min(hi, hi_b), name=out_name)

    # -- fused activations ----------------------------------------------------------------------
    def fusable_activation(self, node: onnx.NodeProto) -> onnx.NodeProto | None:
        """The Relu or constant Clip that alone consumes `node`'s output, to fuse as clamp bounds."""
        out = node.output[0]
        users = self.consumers.get(out, [])
        if out in self.outputs or len(users) != 1:
            return None
        act = users[0]
        if act.op_type == "Relu" or (act.op_type == "Clip" and all(n in self.inits for n in act.input[1:] if n)):
            if act.op_type not in self.fallback_ops:
                return act
        return None

    def fuse(self, act: onnx.NodeProto | None) -> None:
        if act is not None:
            self.fused.add(node_key(act))

    def clip_bounds(self, act: onnx.NodeProto | None) -> tuple[float, float]:
        if act is None:
            return -np.inf, np.inf
        if act.op_type == "Relu":
            return 0.0, np.inf
        a = node_attributes(act)
        lo = float(self.inits[act.input[1]]) if len(act.input) > 1 and act.input[1] else a.get("min", -np.inf)
        hi = float(self.inits[act.input[2]]) if len(act.input) > 2 and act.input[2] else a.get("max", np.inf)
        return lo, hi

    def clamp_q(self, tq: QuantParams, bounds: tuple[float, float]) -> tuple[int, int]:
        qmin, qmax = self.scheme.qmin, self.scheme.qmax
        lo, hi = bounds
        qlo = qmin if not np.isfinite(lo) else max(qmin, int(self.scheme.rounding.round(lo / tq.scale)) + tq.zero_point)
        qhi = qmax if not np.isfinite(hi) else min(qmax, int(self.scheme.rounding.round(hi / tq.scale)) + tq.zero_point)
        return qlo, qhi

    # -- weights --------------------------------------------------------------------------------
    def quantized_weights(self, w: np.ndarray, bias: np.ndarray | None = None, input_scale: float = 1.0,
                          name: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(integer weights, per-row scales, per-row zero points) under the scheme; an imported
        model's own weight params where it gives them (its weights lie on that grid exactly)."""
        given = (self.ranges.given_weights or {}).get(name or "")
        if given is not None:
            scale = np.broadcast_to(np.asarray(given[0], np.float64), (w.shape[0],)).copy()
            zp = np.broadcast_to(np.asarray(given[1], np.int64), (w.shape[0],)).copy()
            return self.scheme.quantize_weight(w, scale, zp), scale, zp
        lo, hi = self.ranges.weight(w)
        scale, zp = self.scheme.weight_params(lo, hi)
        if bias is not None:
            # A near-dead channel (tiny weights) with a large bias would need an int32 bias near or
            # beyond 2^31 at scale s_in * s_w (and its accumulator would overflow); widen that
            # channel's weight range until the bias fits in 2^21. Its weights round to ~0 anyway.
            limit = np.abs(bias) / (input_scale * float(BIAS_LIMIT))
            if self.scheme.per_channel_weights:
                grow = np.where(scale < limit, limit / np.maximum(scale, 1e-30), 1.0)
            else:
                grow = np.full_like(scale, max(1.0, float((limit / scale[0]).max())))
            if np.any(grow > 1.0):
                scale, zp = self.scheme.weight_params(lo * grow, hi * grow)
        if not self.scheme.per_channel_weights:
            scale = np.full(w.shape[0], float(scale[0]))
            zp = np.full(w.shape[0], int(zp[0]))
        # scales are float32 values, as the real toolkits store them and as a QDQ export writes
        # them: exporting and importing back then gives the very same integer model
        scale = scale.astype(np.float32).astype(np.float64)
        wq = self.scheme.quantize_weight(w, scale, zp)
        return wq, scale, zp

    def exact_dtype(self, w_shifted: np.ndarray, zx: int) -> str:
        """float32 when every partial sum of the GEMM stays an integer below 2^24, else float64."""
        xmax = max(self.scheme.qmax - zx, zx - self.scheme.qmin)
        bound = float(np.abs(w_shifted).reshape(w_shifted.shape[0], -1).sum(axis=1).max()) * xmax
        return "float32" if bound < 2**24 else "float64"

    def constant_ints(self, name: str) -> list[int] | None:
        """A constant operand as a list of ints (shapes, axes, pads), or None when not constant."""
        return self.inits[name].astype(np.int64).tolist() if name in self.inits else None

    def require_constant(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray:
        name = node.input[index] if len(node.input) > index else ""
        if not name or name not in self.inits:
            raise UnsupportedOperatorError(f"{node.op_type} node {node_key(node)!r}: {what} must be constant")
        return self.inits[name]


def node_key(node: onnx.NodeProto) -> str:
    """A node's name, or its first output when unnamed: how integer nodes refer to their source."""
    return node.name or node.output[0]
