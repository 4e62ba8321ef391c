"""Small helpers the end-to-end tests share."""
from __future__ import annotations

import numpy as np

CHUNK = 25


def run_chunked(qm, x: np.ndarray, size: int = CHUNK) -> np.ndarray:
    """`qm.run` over `x` in chunks: the same logits as one call, without a 200-image working set
    (ORT's arena keeps a session's largest batch for the session's life)."""
    return np.concatenate([qm.run(x[i:i + size]) for i in range(0, len(x), size)])
