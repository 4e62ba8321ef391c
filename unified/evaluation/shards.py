"""The one code path that runs backends over many images: a shard in, small per-image figures out.

`compare` and `evaluate`, local or on Ray, all run `run_shard`. A shard reads and preprocesses its
own images (on the worker, so the driver never holds the dataset), runs the fp32 reference and
every backend on them (see `RUN_BATCH`), and keeps per image only what the figures need: cosine,
signal and noise energy, largest error, and the top-5 classes of each class-score output. That
is a few hundred bytes per image and backend, whatever the model's output size, so a 50,000-image
run merges in memory and nothing holds every output of every image.

Results do not depend on which process ran a shard or in what order shards finished: `merge`
orders them by shard index, and the figures are computed from the merged per-image arrays.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from unified.core.batching import concatenate_outputs
from unified.core.errors import UnifiedError
from unified.core.quantized_model import QuantizedModel
from unified.evaluation.datasets import Item
from unified.inputs.calibration import _to_sample
from unified.inputs.preprocess import Preprocess

REFERENCE = "fp32"
TOP_K = 5
# Models run one image at a time inside a shard: the integer engine is memory-bound, and a batch of
# one keeps its working set in cache. Measured on Lite0, four models, one ORT thread per process:
# 16.2 images/s at batch 1 against 14.3 at 4 and 12.4 at 10; two processes side by side reach
# 1.89x one process at batch 1, only 1.60x at batch 10.
RUN_BATCH = 1


@dataclass
class OutputSummary:
    """Per-image figures of one output of one model against the fp32 reference."""

    cosine: np.ndarray      # float64 [n]
    signal: np.ndarray      # float64 [n]: sum of ref**2
    noise: np.ndarray       # float64 [n]: sum of (ref - out)**2
    max_abs: np.ndarray     # float64 [n]
    top5: np.ndarray | None  # int64 [n, 5] where the output is a batch of class scores


@dataclass
class ShardResult:
    index: int
    kept: np.ndarray                                    # item indices, in shard order
    labels: np.ndarray                                  # class index per kept item, -1 if none
    skipped: list[tuple[int, str, str]] = field(default_factory=list)  # (item index, name, reason)
    outputs: dict[str, dict[str, OutputSummary]] = field(default_factory=dict)  # model label -> output name
    seconds: dict[str, float] = field(default_factory=dict)  # model label -> time running it
    read_seconds: float = 0.0
    worker: str = ""


@dataclass(frozen=True)
class Shard:
    index: int
    items: tuple[Item, ...]


def make_shards(items: Sequence[Item], size: int) -> list[Shard]:
    if size < 1:
        raise ValueError("shard size must be at least 1")
    return [Shard(i // size, tuple(items[i:i + size])) for i in range(0, len(items), size)]


def is_class_scores(array: np.ndarray) -> bool:
    """A batch of class scores: [N, classes] with at least two classes."""
    return array.ndim == 2 and array.shape[1] >= 2


def top_k(scores: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Indices of the k largest scores per row, best first (stable order, so equal inputs give
    equal answers on every process)."""
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)


def cosines(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of two batches, in float64."""
    a = np.asarray(out, np.float64).reshape(len(out), -1)
    r = np.asarray(ref, np.float64).reshape(len(ref), -1)
    return (a * r).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1), 1e-30)


def summarize(out: np.ndarray, ref: np.ndarray) -> OutputSummary:
    a = out.reshape(len(out), -1).astype(np.float64)
    r = ref.reshape(len(ref), -1).astype(np.float64)
    return OutputSummary(cosines(a, r), (r * r).sum(1), ((r - a) ** 2).sum(1), np.abs(r - a).max(1),
                         top_k(out) if is_class_scores(out) else None)


def _as_dict(out: Any) -> dict[str, np.ndarray]:
    return out if isinstance(out, dict) else {"output": out}


def read_items(items: Sequence[Item], preprocess: Preprocess, input_names: Sequence[str] | None
               ) -> tuple[list[Item], list[Any], list[tuple[int, str, str]]]:
    """Preprocess each item; an item that cannot be read is skipped with its reason."""
    inputs = [(name, 4) for name in input_names] if input_names and len(input_names) > 1 else None
    kept, samples, skipped = [], [], []
    for item in items:
        try:
            samples.append(_to_sample(item.source, preprocess, item.index, inputs))
            kept.append(item)
        except UnifiedError as exc:  # the image's own problem, without the calibration wording
            cause = exc.__cause__ if isinstance(exc.__cause__, UnifiedError) else exc
            skipped.append((item.index, item.name, str(cause)))
    return kept, samples, skipped


def run_shard(shard: Shard, models: dict[str, QuantizedModel], reference: QuantizedModel,
              preprocess: Preprocess) -> ShardResult:
    """Every model of `models` (label -> model) and the fp32 `reference` over one shard."""
    t = time.perf_counter()
    kept, samples, skipped = read_items(shard.items, preprocess, reference.input_names)
    result = ShardResult(shard.index, np.array([i.index for i in kept], dtype=np.int64),
                         np.array([-1 if i.label is None else i.label for i in kept], dtype=np.int64),
                         skipped, read_seconds=time.perf_counter() - t, worker=f"{os.uname().nodename}:{os.getpid()}")
    if not kept:
        return result
    batches = [concatenate_outputs(samples[i:i + RUN_BATCH]) for i in range(0, len(samples), RUN_BATCH)]
    t = time.perf_counter()
    ref = concatenate_outputs([_as_dict(reference.run(batch)) for batch in batches])
    result.seconds[REFERENCE] = time.perf_counter() - t
    result.outputs[REFERENCE] = {name: summarize(r, r) for name, r in ref.items()}
    for label, model in models.items():
        t = time.perf_counter()
        out = concatenate_outputs([_as_dict(model.run(batch)) for batch in batches])
        result.seconds[label] = time.perf_counter() - t
        result.outputs[label] = {name: summarize(out[name], r) for name, r in ref.items()}
    return result



class ModelCache:
    """Models restored from their saved bytes once per process, keyed by content digest: a worker
    that runs many shards loads each model once."""

    def __init__(self) -> None:
        self._models: dict[str, QuantizedModel] = {}

    def get(self, data: bytes, label: str) -> QuantizedModel:
        key = hashlib.sha256(data).hexdigest()
        if key not in self._models:
            self._models[key] = QuantizedModel.from_bytes(data, label=f"{label} (shipped model)")
        return self._models[key]


_process_cache = ModelCache()


def run_shard_from_bytes(shard: Shard, blobs: dict[str, bytes], preprocess_json: dict[str, Any],
                         cache: ModelCache | None = None) -> ShardResult:
    """`run_shard` on models shipped as `.uqm` bytes (`blobs[REFERENCE]` is the fp32 model): what
    every executor runs, so a local run and a Ray run execute the very same models. `cache`:
    where restored models live (default: the process's own, right for a Ray worker; a local run
    passes one that ends with the call, so the caller's process does not keep every model)."""
    cache = cache if cache is not None else _process_cache
    models = {label: cache.get(data, label) for label, data in blobs.items() if label != REFERENCE}
    reference = cache.get(blobs[REFERENCE], REFERENCE)
    return run_shard(shard, models, reference, Preprocess.from_json(preprocess_json))


ShardRunner = Callable[[Shard], ShardResult]
