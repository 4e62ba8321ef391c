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


def looks_like_class_scores(values: np.ndarray) -> bool:
    """One image's output is class scores when it is a vector of at least two values."""
    return values.ndim == 1 and values.size >= 2


@dataclass
class InferenceResult:
    """Every output a backend produced for one image (float, dequantized where needed).

    `logits`, `top5` and `top1` describe the class scores: the single output of a classifier, or
    the first output that is a score vector; a model with none (a detector head, a segmenter) has
    `outputs` only, and `top5` raises `ValueError`.
    """

    outputs: dict[str, np.ndarray]
    backend: str
    mode: str

    @property
    def scores_name(self) -> str | None:
        return next((name for name, v in self.outputs.items() if looks_like_class_scores(v)), None)

    @property
    def logits(self) -> np.ndarray:
        name = self.scores_name
        if name is None:
            raise ValueError(f"no output holds class scores (outputs: {self.describe_outputs()})")
        return self.outputs[name]

    @property
    def top5(self) -> list[tuple[int, str, float]]:
        return top_k(self.logits, 5)

    @property
    def top1(self) -> int:
        return int(np.argmax(self.logits))

    def describe_outputs(self) -> str:
        return ", ".join(f"{name} {tuple(v.shape)}" for name, v in self.outputs.items())

    def __repr__(self) -> str:
        if self.scores_name is None:
            return f"InferenceResult(backend={self.backend!r}, mode={self.mode!r}, outputs: {self.describe_outputs()})"
        best = self.top5[0]
        return f"InferenceResult(backend={self.backend!r}, mode={self.mode!r}, top1={best[0]} {best[1]!r} p={best[2]:.4f})"
