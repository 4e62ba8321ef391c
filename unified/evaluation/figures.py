"""Shard results -> report figures, deterministically.

Shards are ordered by index before anything is added up, and every figure is computed from the
concatenated per-image arrays in item order, so the report is the same to the last digit
whichever process ran a shard and in whatever order shards finished.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from unified.evaluation.report import OutputFigures, SkippedImage
from unified.evaluation.shards import REFERENCE, OutputSummary, ShardResult


@dataclass
class Merged:
    """All shards joined in item order."""

    kept: np.ndarray
    labels: np.ndarray
    skipped: list[SkippedImage]
    outputs: dict[str, dict[str, OutputSummary]]
    seconds: dict[str, float]
    workers: list[str]


def merge(results: Iterable[ShardResult]) -> Merged:
    ordered = sorted(results, key=lambda r: r.index)
    kept = np.concatenate([r.kept for r in ordered]) if ordered else np.zeros(0, np.int64)
    labels = np.concatenate([r.labels for r in ordered]) if ordered else np.zeros(0, np.int64)
    skipped = [SkippedImage(name, reason) for r in ordered for _, name, reason in r.skipped]
    filled = [r for r in ordered if r.outputs]
    outputs: dict[str, dict[str, OutputSummary]] = {}
    seconds: dict[str, float] = {}
    if filled:
        for label, per_output in filled[0].outputs.items():
            outputs[label] = {name: _join([r.outputs[label][name] for r in filled]) for name in per_output}
            seconds[label] = float(sum(r.seconds[label] for r in filled))
    return Merged(kept, labels, skipped, outputs, seconds, [r.worker for r in ordered])


def _join(parts: list[OutputSummary]) -> OutputSummary:
    top5 = None if parts[0].top5 is None else np.concatenate([p.top5 for p in parts])
    return OutputSummary(*(np.concatenate([getattr(p, f) for p in parts])
                           for f in ("cosine", "signal", "noise", "max_abs")), top5)


def output_figures(name: str, s: OutputSummary, ref: OutputSummary) -> OutputFigures:
    signal, noise = float(s.signal.sum()), float(s.noise.sum())
    figures = OutputFigures(name, float(s.cosine.mean()), float(s.cosine.min()),
                            float(10 * np.log10(max(signal, 1e-30) / max(noise, 1e-30))), float(s.max_abs.max()))
    if s.top5 is not None and ref.top5 is not None:
        figures.top1_agreement = float((s.top5[:, 0] == ref.top5[:, 0]).mean())
        overlap = (s.top5[:, :, None] == ref.top5[:, None, :]).any(2).sum(1) / ref.top5.shape[1]
        figures.top5_overlap = float(overlap.mean())
    return figures


def class_output(merged: Merged) -> str | None:
    """The first output holding class scores (where accuracy and top-k agreement apply)."""
    return next((name for name, s in merged.outputs.get(REFERENCE, {}).items() if s.top5 is not None), None)


def accuracy(top5: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None]:
    """Top-1 and top-5 accuracy over the labelled images (label >= 0); None without labels."""
    mask = labels >= 0
    if not mask.any():
        return None, None
    top5, labels = top5[mask], labels[mask]
    return float((top5[:, 0] == labels).mean()), float((top5 == labels[:, None]).any(1).mean())
