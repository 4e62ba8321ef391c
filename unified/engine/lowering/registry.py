"""The table from ONNX op type to its lowering: one entry per op, registered by its family module.

A lowering turns one float ONNX node into integer-graph nodes under the scheme (output params,
quantized constants, fixed-point multipliers). The supported-op list is this table's keys; an op
the user asked to run in float takes the `FLOAT_FALLBACK` entry instead of its own.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import onnx

    from unified.engine.lowering.context import LoweringContext

Lowering = Callable[["LoweringContext", "onnx.NodeProto"], None]

#: op type -> lowering; filled by the family modules (linear, elementwise, pooling, ...)
LOWERINGS: dict[str, Lowering] = {}
#: the key under which the float-fallback lowering is registered
FLOAT_FALLBACK = "<float>"


def lowers(*op_types: str) -> Callable[[Lowering], Lowering]:
    """Register a function as the lowering of `op_types`."""
    def register(fn: Lowering) -> Lowering:
        for op in op_types:
            if op in LOWERINGS:
                raise ValueError(f"op {op!r} has two lowerings: {LOWERINGS[op].__name__} and {fn.__name__}")
            LOWERINGS[op] = fn
        return fn
    return register
