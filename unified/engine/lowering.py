"""Lowering a prepared float ONNX graph to an `IntegerGraph` under a platform `Scheme`.

Per node: choose the output tensor's scale and zero point (from calibration, or fixed where the
math fixes it: ReLU6 is exactly [0, 6], Sigmoid [0, 1], Softmax by the scheme), quantize weights
and biases, and precompute fixed-point multipliers and lookup tables. Everything a kernel needs at
run time is an integer; floats are used here, at build time, only.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from unified.core.errors import ModelError, ScaleFileError, UnsupportedOperatorError
from unified.quant.calibrate import TensorStats
from unified.engine.fixed_point import quantize_multiplier
from unified.engine.integer_graph import IntegerGraph, IntNode
from unified.engine.kernels import pool_output_size
from unified.quant.ranges import ESTIMATORS, weight_ranges
from unified.engine.scheme import Scheme, TensorQ, widen_to_zero
from unified.graph.onnx_model import graph_inputs, node_attributes

BIAS_LIMIT = 2**21  # |bias| * m < 2^52: dead channels stay on the exact float64 requantization path
SHARED_PARAM_OPS = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Split", "Slice", "Pad", "Relu", "Clip"}
LUT_FUNCTIONS: dict[str, Callable[[np.ndarray, dict], np.ndarray]] = {
    "Sigmoid": lambda x, a: 1 / (1 + np.exp(-x)),
    "Tanh": lambda x, a: np.tanh(x),
    "HardSigmoid": lambda x, a: np.clip(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda x, a: x * np.clip(x / 6 + 0.5, 0, 1),
    "LeakyRelu": lambda x, a: np.where(x >= 0, x, a.get("alpha", 0.01) * x),
}
FIXED_RANGES = {"Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0)}
SUPPORTED_OPS = (
    {"Conv", "Gemm", "Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "ReduceMean", "Softmax"}
    | SHARED_PARAM_OPS | set(LUT_FUNCTIONS)
)


def _mult(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    m, s = quantize_multiplier(real)
    return m, s


class Lowering:
    """One lowering run: holds the graph being built and the decisions made so far."""

    def __init__(self, model: onnx.ModelProto, stats: TensorStats, scheme: Scheme, range_method: str,
                 weight_method: str, input_range: tuple[float, float] | None, float_fallback: set[str],
                 given: dict[str, TensorQ] | None = None) -> None:
        self.model = model
        self.given = dict(given or {})
        self.missing: list[str] = []
        self.graph = model.graph
        self.stats = stats
        self.scheme = scheme
        self.estimate = ESTIMATORS.get(range_method, ESTIMATORS["minmax"])
        self.weight_method = weight_method
        self.input_range = input_range
        self.fallback_ops = float_fallback
        self.inits = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.outputs = {o.name for o in self.graph.output}
        self.shapes = self._shapes()
        self.tensors: dict[str, TensorQ] = {}
        self.nodes: list[IntNode] = []
        self.fallback_models: dict[str, bytes] = {}
        self.fused: set[str] = set()

    # -- helpers --------------------------------------------------------------------------------
    def _shapes(self) -> dict[str, list[int]]:
        shapes = {}
        for vi in list(self.graph.value_info) + list(self.graph.input) + list(self.graph.output):
            dims = vi.type.tensor_type.shape.dim
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
        return shapes

    def params_from_range(self, lo: float, hi: float) -> TensorQ:
        return self.scheme.activation_params(*widen_to_zero(lo, hi))

    def calibrated(self, name: str) -> TensorQ:
        if name in self.given:
            return self.given[name]
        if self.stats is None:
            self.missing.append(name)
            return TensorQ(1.0, 0)
        if name not in self.stats.histograms:
            raise ModelError(f"tensor {name!r} has no calibration statistics")
        lo, hi = self.estimate(self.stats.histograms[name], 256)
        return self.params_from_range(lo, hi)

    def q(self, name: str) -> TensorQ:
        if name not in self.tensors:
            if name in self.inits:
                return self.constant(name)
            raise ModelError(f"tensor {name!r} is used before it is produced")
        return self.tensors[name]

    def constant(self, name: str) -> TensorQ:
        """Quantize a constant operand (of Add, Mul, Concat) as a tensor of its own."""
        value = self.inits[name].astype(np.float64)
        tq = self.params_from_range(float(value.min()), float(value.max()))
        qv = np.clip(self.scheme.rounding.round(value / tq.scale) + tq.zero_point, self.scheme.qmin, self.scheme.qmax)
        self.nodes.append(IntNode("const", f"const:{name}", [], [name], "Constant", {}, {"value": qv.astype(np.int64)}))
        self.tensors[name] = tq
        return tq

    def fusable_activation(self, node: onnx.NodeProto) -> onnx.NodeProto | None:
        out = node.output[0]
        users = self.consumers.get(out, [])
        if out in self.outputs or len(users) != 1:
            return None
        act = users[0]
        if act.op_type == "Relu" or (act.op_type == "Clip" and all(n in self.inits for n in act.input[1:] if n)):
            if act.op_type not in self.fallback_ops:
                return act
        return None

    def clip_bounds(self, act: onnx.NodeProto | None) -> tuple[float, float]:
        if act is None:
            return -np.inf, np.inf
        if act.op_type == "Relu":
            return 0.0, np.inf
        a = node_attributes(act)
        lo = float(self.inits[act.input[1]]) if len(act.input) > 1 and act.input[1] else a.get("min", -np.inf)
        hi = float(self.inits[act.input[2]]) if len(act.input) > 2 and act.input[2] else a.get("max", np.inf)
        return lo, hi

    def output_params(self, out_name: str, bounds: tuple[float, float]) -> TensorQ:
        if out_name in self.given or self.stats is None:
            return self.calibrated(out_name)
        lo_b, hi_b = bounds
        if np.isfinite(lo_b) and np.isfinite(hi_b) and lo_b == 0.0:
            return self.params_from_range(0.0, hi_b)  # ReLU6: exactly [0, 6]
        lo, hi = self.estimate(self.stats.histograms[out_name], 256)
        return self.params_from_range(max(lo, lo_b), min(hi, hi_b))

    def clamp_q(self, tq: TensorQ, bounds: tuple[float, float]) -> tuple[int, int]:
        qmin, qmax = self.scheme.qmin, self.scheme.qmax
        lo, hi = bounds
        qlo = qmin if not np.isfinite(lo) else max(qmin, int(self.scheme.rounding.round(lo / tq.scale)) + tq.zero_point)
        qhi = qmax if not np.isfinite(hi) else min(qmax, int(self.scheme.rounding.round(hi / tq.scale)) + tq.zero_point)
        return qlo, qhi

    def quantized_weights(self, w: np.ndarray, bias: np.ndarray | None = None,
                          input_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = weight_ranges(w, self.scheme.per_channel_weights, self.weight_method, 256)
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
        wq = self.scheme.quantize_weight(w, scale, zp)
        return wq, scale, zp

    def exact_dtype(self, w_shifted: np.ndarray, zx: int) -> str:
        """float32 when every partial sum of the GEMM stays an integer below 2^24, else float64."""
        xmax = max(self.scheme.qmax - zx, zx - self.scheme.qmin)
        bound = float(np.abs(w_shifted).reshape(w_shifted.shape[0], -1).sum(axis=1).max()) * xmax
        return "float32" if bound < 2**24 else "float64"

    # -- node lowering --------------------------------------------------------------------------
    def lower_weighted(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        tx = self.q(x)
        a = node_attributes(node)
        w = self.inits[node.input[1]].astype(np.float64)
        bias = self.inits[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else None
        if node.op_type == "Gemm":
            if a.get("transA", 0):
                raise UnsupportedOperatorError(f"Gemm node {node.name!r}: transA=1 is not supported")
            w = w * a.get("alpha", 1.0)
            if not a.get("transB", 0):
                w = w.T
            if bias is not None:
                bias = bias * a.get("beta", 1.0)
        elif node.op_type == "MatMul":
            w = w.T
        act = self.fusable_activation(node)
        out_name = act.output[0] if act is not None else node.output[0]
        bounds = self.clip_bounds(act)
        to = self.output_params(out_name, bounds)
        wq, sw, zw = self.quantized_weights(w, bias, tx.scale)
        w_shifted = (wq - zw.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.int16)
        bias_scale = self.scheme.bias_scale(tx.scale, sw)
        bq = np.zeros(w.shape[0], np.int64) if bias is None else np.clip(
            self.scheme.rounding.round(bias / bias_scale), -(2**31), 2**31 - 1).astype(np.int64)
        mult, shift = _mult(bias_scale / to.scale)
        qlo, qhi = self.clamp_q(to, bounds)
        xmax = max(self.scheme.qmax - tx.zero_point, tx.zero_point - self.scheme.qmin)
        acc_bound = np.abs(w_shifted.astype(np.int64)).reshape(w.shape[0], -1).sum(axis=1) * xmax + np.abs(bq)
        attrs: dict[str, Any] = {"zx": tx.zero_point, "zo": to.zero_point, "act_min": qlo, "act_max": qhi,
                                 "exact": self.exact_dtype(w_shifted, tx.zero_point),
                                 # every |acc| * m < 2^53: float64 computes the requantization exactly
                                 "requant_f64": bool(np.all(acc_bound.astype(np.float64) * mult < 2.0**53)),
                                 "preact": node.output[0]}
        if node.op_type == "Conv":
            kshape = list(w.shape[2:])
            attrs.update(strides=a.get("strides", [1, 1]), pads=a.get("pads", [0, 0, 0, 0]),
                         dilations=a.get("dilations", [1, 1]), group=a.get("group", 1), kernel=kshape)
            if a.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
                raise UnsupportedOperatorError(f"Conv node {node.name!r}: auto_pad={a['auto_pad']} is not supported")
            op = "conv"
        else:
            op = "gemm"
        source = node.op_type + (f"+{act.op_type}" if act is not None else "")
        arrays = {"w": w_shifted, "bias": bq, "mult": mult, "shift": shift,
                  "w_zero_point": zw.astype(np.int64), "w_scale": sw.astype(np.float64)}
        self.nodes.append(IntNode(op, node.name or node.output[0], [x], [out_name], source, attrs, arrays))
        self.tensors[out_name] = to
        if act is not None:
            self.fused.add(act.name or act.output[0])

    def lower_add(self, node: onnx.NodeProto) -> None:
        t1, t2 = self.q(node.input[0]), self.q(node.input[1])
        act = self.fusable_activation(node)
        out_name = act.output[0] if act is not None else node.output[0]
        bounds = self.clip_bounds(act)
        to = self.output_params(out_name, bounds)
        left_shift = 20
        twice_max = 2 * max(t1.scale, t2.scale)
        m1, s1 = _mult(t1.scale / twice_max)
        m2, s2 = _mult(t2.scale / twice_max)
        mo, so = _mult(twice_max / ((1 << left_shift) * to.scale))
        qlo, qhi = self.clamp_q(to, bounds)
        self.nodes.append(IntNode("add", node.name or node.output[0], list(node.input), [out_name],
                                  node.op_type + (f"+{act.op_type}" if act is not None else ""),
                                  {"z1": t1.zero_point, "z2": t2.zero_point, "zo": to.zero_point,
                                   "act_min": qlo, "act_max": qhi, "left_shift": left_shift},
                                  {"m1": m1, "s1": s1, "m2": m2, "s2": s2, "mo": mo, "so": so}))
        self.tensors[out_name] = to
        if act is not None:
            self.fused.add(act.name or act.output[0])

    def lower_mul(self, node: onnx.NodeProto) -> None:
        t1, t2 = self.q(node.input[0]), self.q(node.input[1])
        to = self.calibrated(node.output[0])
        m, s = _mult(t1.scale * t2.scale / to.scale)
        self.nodes.append(IntNode("mul", node.name or node.output[0], list(node.input), [node.output[0]], "Mul",
                                  {"z1": t1.zero_point, "z2": t2.zero_point, "zo": to.zero_point,
                                   "act_min": self.scheme.qmin, "act_max": self.scheme.qmax},
                                  {"mult": m, "shift": s}))
        self.tensors[node.output[0]] = to

    def lower_concat(self, node: onnx.NodeProto) -> None:
        ins = [self.q(n) for n in node.input]
        to = self.calibrated(node.output[0])
        arrays = {}
        for i, t in enumerate(ins):
            arrays[f"m{i}"], arrays[f"s{i}"] = _mult(t.scale / to.scale)
        self.nodes.append(IntNode("concat", node.name or node.output[0], list(node.input), [node.output[0]], "Concat",
                                  {"axis": node_attributes(node)["axis"], "zs": [t.zero_point for t in ins], "zo": to.zero_point,
                                   "same": [t == to for t in ins]}, arrays))
        self.tensors[node.output[0]] = to

    def lower_pool(self, node: onnx.NodeProto) -> None:
        a = node_attributes(node)
        x = node.input[0]
        tx = self.q(x)
        shape = self.shapes.get(x)
        if node.op_type in ("GlobalAveragePool", "ReduceMean"):
            axes = a.get("axes")
            if node.op_type == "ReduceMean":
                if axes is None and len(node.input) > 1 and node.input[1] in self.inits:
                    axes = self.inits[node.input[1]].tolist()
                rank = len(shape) if shape else 4
                axes = sorted(ax % rank for ax in (axes or []))
                if axes != [2, 3]:
                    raise UnsupportedOperatorError(f"ReduceMean node {node.name!r}: only axes [2, 3] are supported, got {axes}")
            if not shape or min(shape[2:]) <= 0:
                raise UnsupportedOperatorError(f"{node.op_type} node {node.name!r} needs a known spatial input shape")
            to = self.calibrated(node.output[0])
            count = int(np.prod(shape[2:]))
            m, s = _mult(tx.scale / (count * to.scale))
            keep = node.op_type == "GlobalAveragePool" or bool(a.get("keepdims", 1))
            self.nodes.append(IntNode("global_avg", node.name or node.output[0], [x], [node.output[0]], node.op_type,
                                      {"zx": tx.zero_point, "zo": to.zero_point, "keepdims": keep}, {"mult": m, "shift": s}))
            self.tensors[node.output[0]] = to
            return
        # AveragePool: per-position divisor (count_include_pad=0 counts only real pixels)
        if not shape or min(shape[2:]) <= 0:
            raise UnsupportedOperatorError(f"AveragePool node {node.name!r} needs a known spatial input shape")
        to = self.calibrated(node.output[0])
        kernel, strides = a["kernel_shape"], a.get("strides", [1, 1])
        pads = a.get("pads", [0, 0, 0, 0])
        ceil = a.get("ceil_mode", 0)
        h, w = shape[2], shape[3]
        oh = pool_output_size(h, kernel[0], strides[0], pads[0], pads[2], ceil)
        ow = pool_output_size(w, kernel[1], strides[1], pads[1], pads[3], ceil)
        ones = np.pad(np.ones((h, w)), ((pads[0], pads[2] + kernel[0]), (pads[1], pads[3] + kernel[1])))
        counts = np.zeros((oh, ow))
        for i in range(oh):
            for j in range(ow):
                y, x0 = i * strides[0], j * strides[1]
                if a.get("count_include_pad", 0):
                    full = np.pad(np.ones((h + pads[0] + pads[2], w + pads[1] + pads[3])), ((0, kernel[0]), (0, kernel[1])))
                    counts[i, j] = full[y:y + kernel[0], x0:x0 + kernel[1]].sum()
                else:
                    counts[i, j] = ones[y:y + kernel[0], x0:x0 + kernel[1]].sum()
        m, s = _mult(tx.scale / (counts.reshape(-1) * to.scale))
        self.nodes.append(IntNode("avgpool", node.name or node.output[0], [x], [node.output[0]], "AveragePool",
                                  {"kernel": kernel, "strides": strides, "pads": pads, "out_hw": [oh, ow],
                                   "zx": tx.zero_point, "zo": to.zero_point, "ceil_mode": ceil,
                                   "count_include_pad": a.get("count_include_pad", 0)},
                                  {"mult": m.reshape(oh, ow), "shift": s.reshape(oh, ow)}))
        self.tensors[node.output[0]] = to

    def lower_shared(self, node: onnx.NodeProto) -> None:
        """Data movement and standalone clamps: outputs keep the input's scale and zero point."""
        x = node.input[0]
        tx = self.q(x)
        a = node_attributes(node)
        op = node.op_type
        name = node.name or node.output[0]
        attrs: dict[str, Any] = {}
        if op == "MaxPool":
            attrs = {"kernel": a["kernel_shape"], "strides": a.get("strides", [1, 1]), "pads": a.get("pads", [0, 0, 0, 0]),
                     "ceil_mode": a.get("ceil_mode", 0), "dilations": a.get("dilations", [1, 1]), "pad_value": self.scheme.qmin}
            kernel = "maxpool"
        elif op in ("Relu", "Clip"):
            qlo, qhi = self.clamp_q(tx, self.clip_bounds(node))
            attrs, kernel = {"lo": qlo, "hi": qhi}, "clamp"
        elif op == "Reshape":
            attrs, kernel = {"shape": self.inits[node.input[1]].astype(int).tolist(), "allowzero": a.get("allowzero", 0)}, "reshape"
        elif op == "Flatten":
            attrs, kernel = {"axis": a.get("axis", 1)}, "flatten"
        elif op == "Transpose":
            attrs, kernel = {"perm": a["perm"]}, "transpose"
        elif op in ("Squeeze", "Unsqueeze"):
            axes = a.get("axes") or (self.inits[node.input[1]].astype(int).tolist() if len(node.input) > 1 else None)
            attrs, kernel = {"axes": axes}, op.lower()
        elif op == "Split":
            split = a.get("split") or (self.inits[node.input[1]].astype(int).tolist() if len(node.input) > 1 and node.input[1] else None)
            attrs, kernel = {"axis": a.get("axis", 0), "split": split, "num_outputs": len(node.output)}, "split"
        elif op == "Slice":
            vals = [self.inits[n].astype(np.int64).tolist() if n in self.inits else None for n in node.input[1:]]
            if any(v is None for v in vals[:2]) or any(n and n not in self.inits for n in node.input[1:]):
                raise UnsupportedOperatorError(f"Slice node {name!r}: starts/ends/axes/steps must be constant")
            starts, ends = vals[0], vals[1]
            axes = vals[2] if len(vals) > 2 and vals[2] is not None else list(range(len(starts)))
            steps = vals[3] if len(vals) > 3 and vals[3] is not None else [1] * len(starts)
            attrs, kernel = {"starts": starts, "ends": ends, "axes": axes, "steps": steps}, "slice"
        elif op == "Pad":
            pads = self.inits[node.input[1]].astype(int).tolist()
            value = float(self.inits[node.input[2]].reshape(-1)[0]) if len(node.input) > 2 and node.input[2] else 0.0
            qv = int(np.clip(self.scheme.rounding.round(value / tx.scale) + tx.zero_point, self.scheme.qmin, self.scheme.qmax))
            mode = a.get("mode", "constant")
            if mode != "constant":
                raise UnsupportedOperatorError(f"Pad node {name!r}: mode {mode!r} is not supported")
            attrs, kernel = {"pads": pads, "value": qv}, "pad"
        else:  # pragma: no cover - guarded by SHARED_PARAM_OPS
            raise UnsupportedOperatorError(f"{op} node {name!r} is not supported")
        self.nodes.append(IntNode(kernel, name, [x], [o for o in node.output], op, attrs, {}))
        for out in node.output:
            self.tensors[out] = tx

    def lower_lut(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        tx = self.q(x)
        fixed = FIXED_RANGES.get(node.op_type)
        given = node.output[0] in self.given or self.stats is None
        to = self.params_from_range(*fixed) if fixed and not given else self.calibrated(node.output[0])
        levels = np.arange(self.scheme.qmin, self.scheme.qmax + 1)
        y = LUT_FUNCTIONS[node.op_type]((levels - tx.zero_point) * tx.scale, node_attributes(node))
        table = np.clip(self.scheme.rounding.round(y / to.scale) + to.zero_point, self.scheme.qmin, self.scheme.qmax)
        self.nodes.append(IntNode("lut", node.name or node.output[0], [x], [node.output[0]], node.op_type,
                                  {"offset": -self.scheme.qmin, "onnx_attrs": node_attributes(node)}, {"table": table.astype(np.int64)}))
        self.tensors[node.output[0]] = to

    def lower_softmax(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        tx = self.q(x)
        to = self.given.get(node.output[0], self.scheme.softmax_output())
        d = np.arange(self.scheme.qmax - self.scheme.qmin + 1)
        exp_table = np.round(np.exp(-d * tx.scale) * (1 << 20)).astype(np.int64)
        inv_out = int(round((1 << 16) / to.scale))
        axis = node_attributes(node).get("axis", -1)
        self.nodes.append(IntNode("softmax", node.name or node.output[0], [x], [node.output[0]], "Softmax",
                                  {"axis": axis, "zo": to.zero_point, "inv_out_q16": inv_out},
                                  {"exp_table": exp_table}))
        self.tensors[node.output[0]] = to

    def lower_fallback(self, node: onnx.NodeProto) -> None:
        inputs = [n for n in node.input if n and n not in self.inits]
        for n in inputs:
            self.q(n)
        graph = helper.make_graph(
            [node], f"fallback_{node.name}",
            [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in inputs],
            [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in node.output],
            [numpy_helper.from_array(self.inits[n], n) for n in node.input if n in self.inits],
        )
        sub = helper.make_model(graph, opset_imports=self.model.opset_import)
        name = node.name or node.output[0]
        self.fallback_models[name] = sub.SerializeToString()
        for out in node.output:
            self.tensors[out] = self.calibrated(out)
        self.nodes.append(IntNode("float", name, inputs, list(node.output), node.op_type + "(float)", {}, {}))

    # -- the walk -------------------------------------------------------------------------------
    def run(self) -> IntegerGraph:
        x = graph_inputs(self.model)[0].name
        if self.input_range and x not in self.given:
            self.tensors[x] = self.params_from_range(*self.input_range)
        else:
            self.tensors[x] = self.calibrated(x)
        unsupported = [f"{n.op_type} (node {n.name or n.output[0]!r})" for n in self.graph.node
                       if n.op_type not in SUPPORTED_OPS and n.op_type not in self.fallback_ops]
        if unsupported:
            raise UnsupportedOperatorError(
                f"the {self.scheme.name} integer engine does not support: {', '.join(unsupported)}; "
                "pass float_fallback=[op types] to run them in float on the CPU")
        for node in self.graph.node:
            key = node.name or node.output[0]
            if key in self.fused:
                continue
            op = node.op_type
            if op in self.fallback_ops:
                self.lower_fallback(node)
            elif op in ("Conv", "Gemm", "MatMul"):
                if node.input[1] not in self.inits:
                    raise UnsupportedOperatorError(f"{op} node {key!r}: weights must be constant")
                self.lower_weighted(node)
            elif op == "Add":
                self.lower_add(node)
            elif op == "Mul":
                self.lower_mul(node)
            elif op == "Concat":
                self.lower_concat(node)
            elif op in ("AveragePool", "GlobalAveragePool", "ReduceMean"):
                self.lower_pool(node)
            elif op in SHARED_PARAM_OPS:
                self.lower_shared(node)
            elif op in LUT_FUNCTIONS:
                self.lower_lut(node)
            elif op == "Softmax":
                if node.output[0] not in self.outputs:
                    raise UnsupportedOperatorError(f"Softmax node {key!r}: only a final Softmax is supported")
                self.lower_softmax(node)
        if self.missing:
            raise ScaleFileError(
                f"the scale table has no entry for {len(self.missing)} tensor(s) the model needs: "
                + ", ".join(sorted(set(self.missing))[:20]) + (" ..." if len(set(self.missing)) > 20 else ""))
        out = self.graph.output[0].name
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "N")
                 for d in graph_inputs(self.model)[0].type.tensor_type.shape.dim]
        return IntegerGraph(self.nodes, self.tensors, x, out, self.scheme.activation_dtype, self.scheme.rounding,
                            self.scheme.describe(), shape, self.fallback_models)


def lower(model: onnx.ModelProto, stats: TensorStats | None, scheme: Scheme, range_method: str = "minmax",
          weight_method: str = "minmax", input_range: tuple[float, float] | None = None,
          float_fallback: set[str] | None = None, given: dict[str, TensorQ] | None = None) -> IntegerGraph:
    """Lower `model`; tensors in `given` (a scale table) take those parameters instead of calibration."""
    return Lowering(model, stats, scheme, range_method, weight_method, input_range, set(float_fallback or ()), given).run()
