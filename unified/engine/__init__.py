"""The integer NPU engine under the emulated backends (rknn, tengine).

Backend-neutral: a backend supplies a `Scheme` (how scales, zero points and rounding are chosen),
the quantization pipeline supplies float ranges, and the engine lowers the prepared float graph to
an `IntegerGraph` of 8-bit tensors, int32/int64 accumulators and fixed-point requantization, runs it
(`Interpreter`, a table of kernels), taps its layers, exports it as an ONNX QDQ model and checks
itself against that export (the fidelity oracle).
"""
