"""The ONNX Runtime backend: float in, float out; quantization by `onnxruntime.quantization`."""
