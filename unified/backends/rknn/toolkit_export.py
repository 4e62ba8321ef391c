"""Carry unified's rknn quantization onto the real RKNN-Toolkit2: a float ONNX model plus the
quantization table (`<model>.quantization.cfg`) in the format `hybrid_quantization_step1` writes and
`hybrid_quantization_step2` reads.

The float model is the backend's own QDQ export with the Q/DQ pairs folded away: its weights are
unified's integer weights dequantized (adaptive rounding and bias correction included), so the
toolkit's per-channel min-max quantization of them lands on the same integers, and its biases are
unified's int32 biases times s_in * s_w. Tensors keep the original model's names. The table gives
every activation's min/max/scale/zero point as unified chose them; a convolution followed by a
fused ReLU/Clip gets its activation's params, as the toolkit lists them.

The toolkit lets a table change an activation's min/max only: step2 derives scale and zero point
from them and refuses a table whose scale or zero point fields differ from what step1 wrote. So the
flow on the real toolkit is: step1 on unified's float model, then `merge_tables` (or
`unified rknn-table`) writes unified's min/max into step1's table, then step2:

    rknn.config(mean_values=..., std_values=..., target_platform=..., quantized_dtype="w8a8")
    rknn.load_onnx("model.onnx", inputs=[...], input_size_list=[...])
    rknn.hybrid_quantization_step1(dataset="dataset.txt")     # model.model, .data, .quantization.cfg
    # unified rknn-table model.quantization.cfg unified.quantization.cfg   (rewrites the first)
    rknn.hybrid_quantization_step2(model_input="model.model", data_input="model.data",
                                   model_quantization_cfg="model.quantization.cfg")

Measured with RKNN-Toolkit2 2.5.0's simulator on EfficientNet-Lite0 (200 photo crops): the model
built this way agrees with unified's rknn backend on 95.5% of top-1 decisions, output cosine 0.9992
on average (0.9963 at worst).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from unified.core.paths import atomic_write
from unified.core.quant_params import QuantParams
from unified.engine.integer_artifact import IntegerArtifact
from unified.engine.qdq_export import export_qdq_float_io
from unified.graph.qdq_import import split_qdq

FUSED_ACTIVATIONS = ("Relu", "Clip")
TOOLKIT_OPSET = 19  # RKNN-Toolkit2 2.5 loads opsets up to 19


def _range(scale: float, zero_point: int, qmin: int, qmax: int) -> tuple[float, float]:
    return (qmin - zero_point) * scale, (qmax - zero_point) * scale


def _entry(name: str, dtype: str, scale: float | None, zero_point: int | None, lo: float, hi: float) -> list[str]:
    """One tensor of the table, in the toolkit's own YAML layout (4-space indents, '-   ' items).

    The toolkit derives scale and zero point from min/max itself ((max - min) / 255 and
    -128 - round(min / scale)) and refuses a table whose scale differs from that derivation, so
    the scale is written as derived from the min/max that encode unified's params."""
    if scale is not None:
        scale = (hi - lo) / 255.0
    lines = [f"    {name}:", "        qtype: asym", "        qmethod: layer", f"        dtype: {dtype}",
             "        min:", f"        -   {lo!r}", "        max:", f"        -   {hi!r}"]
    if scale is None:
        lines += ["        scale: []", "        zero_point: []"]
    else:
        lines += ["        scale:", f"        -   {scale!r}", "        zero_point:", f"        -   {zero_point}"]
    lines += ["        ori_min:", f"        -   {lo!r}", "        ori_max:", f"        -   {hi!r}"]
    return lines


def _restore_fused_activations(model: onnx.ModelProto, g) -> None:
    """Put back the ReLU/Clip that the QDQ export leaves to the output's saturation (a [0, 6]
    output range already clamps like ReLU6): as a float model for the toolkit, it needs them. The
    conv's output takes its original name, the activation the engine tensor's."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    for int_node in g.nodes:
        activation = int_node.source.split("+")[-1] if "+" in int_node.source else None
        target = int_node.outputs[0] if int_node.outputs else None
        conv = producers.get(target) if target else None
        if activation not in FUSED_ACTIVATIONS or conv is None or conv.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        preact = int_node.attrs.get("preact") or f"{target}_preact"
        conv.output[0] = preact
        p = g.tensors[target]
        lo = (max(int_node.attrs.get("act_min", g.qmin), g.qmin) - p.zero_point) * p.scale
        hi = (min(int_node.attrs.get("act_max", g.qmax), g.qmax) - p.zero_point) * p.scale
        if activation == "Relu":
            new = helper.make_node("Relu", [preact], [target], name=f"{target}_relu")
        else:
            bounds = [numpy_helper.from_array(np.array(v, np.float32), f"{target}_clip_{k}")
                      for k, v in (("min", lo), ("max", hi))]
            graph.initializer.extend(bounds)
            new = helper.make_node("Clip", [preact, bounds[0].name, bounds[1].name], [target], name=f"{target}_clip")
        position = list(graph.node).index(conv) + 1
        graph.node.insert(position, new)


def float_model_and_table(artifact: IntegerArtifact) -> tuple[onnx.ModelProto, str]:
    """(the float model to load into the toolkit, the text of its quantization table)."""
    g = artifact.graph
    qdq = export_qdq_float_io(g, opset=TOOLKIT_OPSET)
    quantized_from = {n.input[0]: n.output[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    preact = {n.outputs[0]: n.attrs["preact"] for n in g.nodes if n.attrs.get("preact")}
    imported = split_qdq(qdq)
    model = imported.float_model
    graph = model.graph
    io_names = {v.name for v in list(graph.input) + list(graph.output)}
    producers = {o: n for n in graph.node for o in n.output}
    # names: a float tensor that was quantized takes the engine tensor's (= the original model's)
    # name; a conv output feeding a fused activation takes the conv's own original output name
    renames = {x: t for x, t in quantized_from.items() if x not in io_names and t in g.tensors}
    for node in graph.node:
        if node.op_type in FUSED_ACTIVATIONS and node.output[0] in renames:
            source = producers.get(node.input[0])
            target = preact.get(renames[node.output[0]])
            if source is not None and source.op_type in ("Conv", "Gemm") and target and target not in g.tensors:
                renames[node.input[0]] = target
    for node in graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        node.output[:] = [renames.get(o, o) for o in node.output]
    _restore_fused_activations(model, g)
    del graph.value_info[:]
    params: dict[str, QuantParams] = {}
    for x, t in quantized_from.items():
        if t in g.tensors:
            params[renames.get(x, x)] = g.tensors[t]
    for node in graph.node:  # the conv before a fused activation: the activation's params
        if node.op_type in FUSED_ACTIVATIONS and node.output[0] in params and node.input[0] not in params:
            params[node.input[0]] = params[node.output[0]]
    lines = ["custom_quantize_layers: {}", "quantize_parameters:"]
    qmin, qmax = g.qmin, g.qmax
    order = [v.name for v in graph.input] + [o for n in graph.node for o in n.output]
    for name in order:
        if name in io_names:
            continue
        if name in params:
            p = params[name]
            lines += _entry(name, g.dtype, float(p.scale), int(p.zero_point), *_range(p.scale, p.zero_point, qmin, qmax))
    for value in list(graph.input) + list(graph.output):  # graph I/O: float, plus its `_int8` twin
        p = g.tensors.get(value.name)
        if p is None:
            continue
        lo, hi = _range(p.scale, p.zero_point, qmin, qmax)
        lines += _entry(value.name, "float32", None, None, lo, hi)
        lines += _entry(f"{value.name}_int8", g.dtype, float(p.scale), int(p.zero_point), lo, hi)
    onnx.checker.check_model(model)
    return model, "\n".join(lines) + "\n"


_KEY = re.compile(r"^    ([^ ].*):$")
_BOUND = re.compile(r"^        (min|max):$")


def _bounds(text: str) -> dict[str, dict[str, str]]:
    """tensor -> {"min": item line, "max": item line} of a table in the toolkit's layout."""
    out: dict[str, dict[str, str]] = {}
    current, lines = None, text.splitlines()
    for i, line in enumerate(lines):
        key = _KEY.match(line)
        if key:
            current = key.group(1)
            out[current] = {}
        elif current is not None and _BOUND.match(line) and i + 1 < len(lines):
            out[current][line.strip()[:-1]] = lines[i + 1]
    return out


def merge_tables(toolkit_table: str, unified_table: str) -> tuple[str, list[str]]:
    """The toolkit's own table (from step1) with unified's min/max written into every tensor both
    name; its scale/zero point fields stay as step1 wrote them (step2 recomputes them from min/max).
    Returns (the merged table, the toolkit's tensors unified has no params for)."""
    ours = _bounds(unified_table)
    lines, out, current, i = toolkit_table.splitlines(), [], None, 0
    seen: set[str] = set()
    while i < len(lines):
        line = lines[i]
        key = _KEY.match(line)
        if key:
            current = key.group(1)
        out.append(line)
        bound = _BOUND.match(line)
        if bound and current in ours and bound.group(1) in ours[current] and i + 1 < len(lines):
            out.append(ours[current][bound.group(1)])
            seen.add(current)
            i += 2
            continue
        i += 1
    missing = [k for k in _bounds(toolkit_table) if k not in seen and k != "quantize_parameters"]
    return "\n".join(out) + "\n", missing


def export_toolkit(artifact: IntegerArtifact, directory: str | os.PathLike, stem: str = "model") -> list[Path]:
    """Write `<stem>.onnx` (the float model for step1) and `<stem>.quantization.cfg` (unified's
    params in the toolkit's layout, to merge into step1's table) into `directory`, atomically each."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    model, table = float_model_and_table(artifact)
    onnx_path, cfg_path = folder / f"{stem}.onnx", folder / f"{stem}.quantization.cfg"
    with atomic_write(onnx_path) as tmp:
        tmp.write_bytes(model.SerializeToString())
    with atomic_write(cfg_path) as tmp:
        tmp.write_text(table)
    return [onnx_path, cfg_path]
