"""Small helpers the end-to-end tests share."""
from __future__ import annotations

import numpy as np

CHUNK = 25


def run_chunked(qm, x: np.ndarray, size: int = CHUNK) -> np.ndarray:
    """`qm.run` over `x` in chunks: the same logits as one call, without a 200-image working set
    (ORT's arena keeps a session's largest batch for the session's life)."""
    return np.concatenate([qm.run(x[i:i + size]) for i in range(0, len(x), size)])


def normal_calibration(count: int = 12, seed: int = 4) -> list[np.ndarray]:
    """Standard-normal (1, 3, 16, 16) samples for the tiny models' calibration (the bias-correction
    tests of every backend measure on the same ones)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(count)]
