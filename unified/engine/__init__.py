"""The integer NPU engine shared by the emulated backends (rknn, tengine).

Backend-neutral: a backend supplies a `Scheme` (how scales, zero points and rounding are chosen)
and this package prepares the float graph, calibrates it, lowers it to an `IntegerGraph` of 8-bit
tensors, int32/int64 accumulators and fixed-point requantization, runs it, and exports it as an
ONNX QDQ model for ONNX Runtime to check.
"""
