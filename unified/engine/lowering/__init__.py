"""Lowering a prepared float ONNX graph to an `IntegerGraph` under a platform `Scheme`.

Per node: choose the output tensor's scale and zero point (from calibration, or fixed where the
math fixes it: ReLU6 is exactly [0, 6], Sigmoid [0, 1], Softmax by the scheme), quantize weights
and biases, and precompute fixed-point multipliers and lookup tables. Everything a kernel needs at
run time is an integer; floats are used here, at build time, only.

One table maps op type -> lowering (`registry.LOWERINGS`); each op family registers its entries:
`linear` (Conv, Gemm, MatMul), `elementwise` (Add, Mul, Concat), `pooling`, `movement`
(reshapes, slices, pads, standalone clamps), `activations` (lookup tables, Softmax), `fallback`.
"""
from unified.engine.lowering import (  # noqa: F401  (register)
    activations,
    elementwise,
    fallback,
    linear,
    movement,
    pooling,
)
from unified.engine.lowering.context import RangeSource
from unified.engine.lowering.walk import lower, supported_ops

__all__ = ["RangeSource", "lower", "supported_ops"]
