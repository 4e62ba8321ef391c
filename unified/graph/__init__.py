"""Float ONNX graphs: loading and checking, helpers on nodes and weights, float preparation (constant
folding, BatchNorm into Conv), float statistics computed by ONNX Runtime, and the one session helper."""
