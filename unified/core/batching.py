"""Batches of one array or of several named inputs: their size, a slice, joining outputs, and
running a large batch in pieces. Shared by `QuantizedModel`, the engine, the ort backend and the
evaluation shards (numpy only, so any layer may use it)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

Batch = np.ndarray | dict[str, np.ndarray]


def batch_size(x: Batch) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def take(x: Batch, start: int, stop: int) -> Batch:
    """Rows start:stop of a batch (of every input, for several inputs)."""
    return {k: v[start:stop] for k, v in x.items()} if isinstance(x, dict) else x[start:stop]


def concatenate_outputs(parts: list[Any]) -> Batch:
    """Join the outputs of consecutive batches (arrays, or dicts of arrays by output name)."""
    if parts and isinstance(parts[0], dict):
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return np.concatenate(parts)


def run_in_chunks(run: Callable[[Batch], Any], x: Batch, size: int) -> Any:
    """`run(x)`, or, for a batch larger than `size`, `run` on consecutive pieces of `size` rows
    joined back (for models whose samples are independent, the same result)."""
    n = batch_size(x)
    if n <= size:
        return run(x)
    return concatenate_outputs([run(take(x, i, i + size)) for i in range(0, n, size)])
