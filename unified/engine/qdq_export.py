"""Export an `IntegerGraph` as an ONNX QDQ model with the same scales and zero points.

This is the fidelity oracle: ONNX Runtime runs the export (float math between Dequantize and
Quantize), and the integer engine must agree with it within one quantization step on nearly every
element, layer by layer when both are fed the same integer inputs. The model's input and output
are the same 8-bit tensors the engine takes and gives (NCHW).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from unified.engine.integer_graph import IntegerGraph, IntNode

_ELEM = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}


class _Builder:
    def __init__(self, g: IntegerGraph) -> None:
        self.g = g
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def uid(self, base: str) -> str:
        self.count += 1
        return f"{base}__{self.count}"

    def const(self, value: np.ndarray, base: str) -> str:
        name = self.uid(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def zp(self, z: int | np.ndarray, dtype: str | None = None) -> np.ndarray:
        return np.asarray(z, dtype=dtype or self.g.dtype)

    def dq(self, tensor: str) -> str:
        if tensor not in self.g.tensors:  # a float-domain tensor between float-fallback nodes
            return tensor
        t = self.g.tensors[tensor]
        out = self.uid(f"{tensor}_dq")
        self.nodes.append(helper.make_node("DequantizeLinear", [tensor, self.const(np.float32(t.scale), "s"),
                                                                self.const(self.zp(t.zero_point), "z")], [out]))
        return out

    def q(self, float_name: str, tensor: str) -> None:
        if tensor not in self.g.tensors:  # stays float: only float-fallback nodes consume it
            self.nodes.append(helper.make_node("Identity", [float_name], [tensor]))
            return
        t = self.g.tensors[tensor]
        self.nodes.append(helper.make_node("QuantizeLinear", [float_name, self.const(np.float32(t.scale), "s"),
                                                              self.const(self.zp(t.zero_point), "z")], [tensor]))

    def act_clip(self, value: str, node: IntNode, out_tensor: str) -> str:
        a = node.attrs
        t = self.g.tensors[out_tensor]
        if a["act_min"] <= self.g.qmin and a["act_max"] >= self.g.qmax:
            return value
        lo = np.float32((a["act_min"] - t.zero_point) * t.scale)
        hi = np.float32((a["act_max"] - t.zero_point) * t.scale)
        out = self.uid("act")
        self.nodes.append(helper.make_node("Clip", [value, self.const(lo, "lo"), self.const(hi, "hi")], [out]))
        return out

    def weights(self, node: IntNode, scale_in: float) -> tuple[str, str]:
        arr = node.arrays
        zw = arr["w_zero_point"]
        shape = (-1,) + (1,) * (arr["w"].ndim - 1)
        wq = (arr["w"].astype(np.int64) + zw.reshape(shape)).astype(self.g.scheme["weight_dtype"])
        wdq = self.uid("w_dq")
        self.nodes.append(helper.make_node(
            "DequantizeLinear", [self.const(wq, "wq"), self.const(arr["w_scale"].astype(np.float32), "ws"),
                                 self.const(zw.astype(self.g.scheme["weight_dtype"]), "wz")], [wdq], axis=0))
        bdq = self.uid("b_dq")
        bias_scale = (scale_in * arr["w_scale"]).astype(np.float32)
        self.nodes.append(helper.make_node(
            "DequantizeLinear", [self.const(arr["bias"].astype(np.int32), "bq"), self.const(bias_scale, "bs"),
                                 self.const(np.zeros(len(bias_scale), np.int32), "bz")], [bdq], axis=0))
        return wdq, bdq

    def emit(self, node: IntNode) -> None:
        op, a = node.op, node.attrs
        out = node.outputs[0]
        if op == "const":
            self.inits.append(numpy_helper.from_array(node.arrays["value"].astype(self.g.dtype), out))
            return
        ins = [self.dq(n) for n in node.inputs]
        y = self.uid("y")
        if op == "conv":
            w, b = self.weights(node, self.g.tensors[node.inputs[0]].scale)
            self.nodes.append(helper.make_node("Conv", [ins[0], w, b], [y], strides=a["strides"], pads=a["pads"],
                                               dilations=a["dilations"], group=a["group"]))
            y = self.act_clip(y, node, out)
        elif op == "conv_add":  # the conv's output stays float, as the fused kernel never rounds it
            w, b = self.weights(node, self.g.tensors[node.inputs[0]].scale)
            conv_out = self.uid("conv")
            self.nodes.append(helper.make_node("Conv", [ins[0], w, b], [conv_out], strides=a["strides"],
                                               pads=a["pads"], dilations=a["dilations"], group=a["group"]))
            self.nodes.append(helper.make_node("Add", [conv_out, ins[1]], [y]))
            y = self.act_clip(y, node, out)
        elif op == "conv_transpose":
            w, b = self.weights(node, self.g.tensors[node.inputs[0]].scale)
            wt = self.uid("wt")  # per-channel weights are (co, ci, kh, kw); ConvTranspose takes (ci, co, kh, kw)
            self.nodes.append(helper.make_node("Transpose", [w], [wt], perm=[1, 0, 2, 3]))
            self.nodes.append(helper.make_node("ConvTranspose", [ins[0], wt, b], [y], strides=a["strides"],
                                               pads=a["pads"], output_padding=a["output_padding"]))
            y = self.act_clip(y, node, out)
        elif op == "gemm":
            w, b = self.weights(node, self.g.tensors[node.inputs[0]].scale)
            if a.get("input_rank", 2) == 2:
                self.nodes.append(helper.make_node("Gemm", [ins[0], w, b], [y], transB=1))
            else:  # N-D input: MatMul + Add
                wt, prod = self.uid("wt"), self.uid("prod")
                self.nodes.append(helper.make_node("Transpose", [w], [wt], perm=[1, 0]))
                self.nodes.append(helper.make_node("MatMul", [ins[0], wt], [prod]))
                self.nodes.append(helper.make_node("Add", [prod, b], [y]))
            y = self.act_clip(y, node, out)
        elif op in ("add", "mul"):
            self.nodes.append(helper.make_node("Add" if op == "add" else "Mul", ins, [y]))
            if op == "add":
                y = self.act_clip(y, node, out)
        elif op == "concat":
            self.nodes.append(helper.make_node("Concat", ins, [y], axis=a["axis"]))
        elif op == "global_avg":
            axes = np.array(a.get("axes", [2, 3]), np.int64)
            self.nodes.append(helper.make_node("ReduceMean", [ins[0], self.const(axes, "axes")], [y],
                                               keepdims=int(bool(a["keepdims"]))))
        elif op == "avgpool":
            self.nodes.append(helper.make_node("AveragePool", ins, [y], kernel_shape=a["kernel"], strides=a["strides"],
                                               pads=a["pads"], ceil_mode=a.get("ceil_mode", 0),
                                               count_include_pad=a.get("count_include_pad", 0)))
        elif op == "maxpool":
            self.nodes.append(helper.make_node("MaxPool", ins, [y], kernel_shape=a["kernel"], strides=a["strides"],
                                               pads=a["pads"], ceil_mode=a["ceil_mode"], dilations=a["dilations"]))
        elif op == "clamp":
            t = self.g.tensors[node.inputs[0]]
            lo, hi = np.float32((a["lo"] - t.zero_point) * t.scale), np.float32((a["hi"] - t.zero_point) * t.scale)
            self.nodes.append(helper.make_node("Clip", [ins[0], self.const(lo, "lo"), self.const(hi, "hi")], [y]))
        elif op == "lut":
            self.nodes.append(helper.make_node(node.source, ins, [y], **a.get("onnx_attrs", {})))
        elif op == "softmax":
            self.nodes.append(helper.make_node("Softmax", ins, [y], axis=a["axis"]))
        elif op == "reshape":
            self.nodes.append(helper.make_node("Reshape", [ins[0], self.const(np.array(a["shape"], np.int64), "shape")], [y]))
        elif op == "flatten":
            self.nodes.append(helper.make_node("Flatten", ins, [y], axis=a["axis"]))
        elif op == "transpose":
            self.nodes.append(helper.make_node("Transpose", ins, [y], perm=a["perm"]))
        elif op in ("squeeze", "unsqueeze"):
            self.nodes.append(helper.make_node(op.capitalize(), [ins[0], self.const(np.array(a["axes"], np.int64), "axes")], [y]))
        elif op == "split":
            ys = [self.uid("y") for _ in node.outputs]
            inputs = [ins[0]] + ([self.const(np.array(a["split"], np.int64), "split")] if a["split"] else [])
            extra = {} if a["split"] else {"num_outputs": a["num_outputs"]}
            self.nodes.append(helper.make_node("Split", inputs, ys, axis=a["axis"], **extra))
            for yi, o in zip(ys, node.outputs):
                self.q(yi, o)
            return
        elif op == "slice":
            arrays = [self.const(np.array(a[k], np.int64), k) for k in ("starts", "ends", "axes", "steps")]
            self.nodes.append(helper.make_node("Slice", [ins[0]] + arrays, [y]))
        elif op == "pad":
            t = self.g.tensors[node.inputs[0]]
            value = np.float32((a["value"] - t.zero_point) * t.scale)
            self.nodes.append(helper.make_node("Pad", [ins[0], self.const(np.array(a["pads"], np.int64), "pads"),
                                                       self.const(value, "pv")], [y]))
        elif op == "channel_lut":
            self.nodes.append(helper.make_node("PRelu", [ins[0], self.const(node.arrays["slope"], "slope")], [y]))
        elif op == "gather":
            self.nodes.append(helper.make_node("Gather", [ins[0], self.const(node.arrays["indices"], "idx")], [y],
                                               axis=a["axis"]))
        elif op == "matmul":
            self.nodes.append(helper.make_node("MatMul", ins, [y]))
        elif op == "upsample_nearest":
            scales = np.array([1, 1, *a["factors"]], np.float32)
            self.nodes.append(helper.make_node("Resize", [ins[0], "", self.const(scales, "scales")], [y], **a["onnx_attrs"]))
        elif op == "float":
            sub = onnx.load_from_string(self.g.float_fallback[node.name])
            fnode = onnx.NodeProto()
            fnode.CopyFrom(sub.graph.node[0])
            renames = dict(zip(node.inputs, ins))
            for i, n in enumerate(fnode.input):
                fnode.input[i] = renames.get(n, n)
            ys = [self.uid("y") for _ in fnode.output]
            del fnode.output[:]
            fnode.output.extend(ys)
            self.nodes.append(fnode)
            self.inits.extend(sub.graph.initializer)
            for yi, o in zip(ys, node.outputs):
                self.q(yi, o)
            return
        else:
            raise ValueError(f"QDQ export has no rule for kernel {op!r}")
        self.q(y, out)


def export_qdq(g: IntegerGraph, nodes: Iterable[IntNode] | None = None, opset: int = 21) -> onnx.ModelProto:
    """The whole graph (default) or a sub-list of its nodes as an ONNX QDQ model on integer I/O."""
    chosen = list(g.nodes if nodes is None else nodes)
    b = _Builder(g)
    for node in chosen:
        b.emit(node)
    produced = {o for n in chosen for o in n.outputs}
    needed = []
    for n in chosen:
        for i in n.inputs:
            if i not in produced and i not in needed:
                needed.append(i)
    outputs = list(g.output_names) if nodes is None else [o for o in chosen[-1].outputs]
    elem = _ELEM[g.dtype]
    graph = helper.make_graph(
        b.nodes, "qdq_export",
        [helper.make_tensor_value_info(n, elem, None) for n in needed],
        [helper.make_tensor_value_info(o, elem, None) for o in outputs],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def export_qdq_float_io(g: IntegerGraph, opset: int = 21) -> onnx.ModelProto:
    """The whole graph as a standard QDQ model on float I/O, as other tools exchange them: each
    input is quantized with its own scale and zero point (QuantizeLinear), each output
    dequantized (DequantizeLinear), and the tensor names are the float model's. The params are
    exactly the backend's; QuantizeLinear rounds half to even, as ONNX defines it."""
    from unified.engine.interpreter import Interpreter

    model = export_qdq(g, opset=opset)
    graph = model.graph
    # graph I/O need shapes: the inputs' own (a free batch stays a name), the outputs' from one run
    probe = {name: np.zeros([d if isinstance(d, int) else 1 for d in shape], g.dtype)
             for name, shape in zip(g.input_names, g.input_shapes)}
    produced = Interpreter(g, reference=True).run(probe if len(probe) > 1 else next(iter(probe.values())))
    produced = produced if isinstance(produced, dict) else {g.output_name: produced}
    shapes = dict(zip(g.input_names, g.input_shapes))
    for name, value in produced.items():
        batch = g.input_shapes[0][0] if g.input_shapes and g.input_shapes[0] else 1
        shapes[name] = [batch if i == 0 else d for i, d in enumerate(value.shape)]
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for d in shapes[value.name]:
            dim = dims.add()
            if isinstance(d, int):
                dim.dim_value = d
            else:
                dim.dim_param = str(d)
    renames = {v.name: f"{v.name}__q" for v in list(graph.input) + list(graph.output)}
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)
    boundary = []
    for value in graph.input:
        t = g.tensors[value.name]
        s, z = f"{value.name}__scale", f"{value.name}__zero_point"
        graph.initializer.extend([numpy_helper.from_array(np.float32(t.scale), s),
                                  numpy_helper.from_array(np.asarray(t.zero_point, g.dtype), z)])
        boundary.append(helper.make_node("QuantizeLinear", [value.name, s, z], [renames[value.name]]))
        value.type.tensor_type.elem_type = TensorProto.FLOAT
    for value in graph.output:
        t = g.tensors[value.name]
        s, z = f"{value.name}__out_scale", f"{value.name}__out_zero_point"
        graph.initializer.extend([numpy_helper.from_array(np.float32(t.scale), s),
                                  numpy_helper.from_array(np.asarray(t.zero_point, g.dtype), z)])
        graph.node.append(helper.make_node("DequantizeLinear", [renames[value.name], s, z], [value.name]))
        value.type.tensor_type.elem_type = TensorProto.FLOAT
    nodes = boundary + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model
