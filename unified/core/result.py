"""`InferenceResult`: what `unified.infer` returns for one image."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unified.inputs.labels import label_for


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def top_k(logits: np.ndarray, k: int = 5) -> list[tuple[int, str, float]]:
    """(class index, label, probability) of the k most likely classes; ties keep the lower index."""
    probs = softmax(np.asarray(logits, dtype=np.float32).reshape(-1))
    order = np.argsort(-probs, kind="stable")[:k]
    return [(int(i), label_for(int(i), probs.size), float(probs[i])) for i in order]


@dataclass
class InferenceResult:
    """The float logits a backend produced (dequantized where needed) and their top-5."""

    logits: np.ndarray
    backend: str
    mode: str

    @property
    def top5(self) -> list[tuple[int, str, float]]:
        return top_k(self.logits, 5)

    @property
    def top1(self) -> int:
        return int(np.argmax(self.logits))

    def __repr__(self) -> str:
        best = self.top5[0]
        return f"InferenceResult(backend={self.backend!r}, mode={self.mode!r}, top1={best[0]} {best[1]!r} p={best[2]:.4f})"
