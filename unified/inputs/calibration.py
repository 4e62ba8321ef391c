"""Calibration data: folders, RKNN-style dataset.txt files, image lists or arrays -> float tensors.

Every source becomes a `CalibrationSet` of float32 samples in the model's input space and layout
(images after the model's own preprocessing), so backends never see file formats. A sample is one
array (batch 1) for a single-input model, or a dict input name -> array for a model with several
inputs (given as dicts, as tuples in graph order, or as RKNN dataset.txt lines with one file per
input). Bad data fails here, early, with the offending item named: an empty set, NaN or Inf
values, mismatched shapes.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from unified.core.errors import CalibrationError, ImageError
from unified.inputs.preprocess import Preprocess
from unified.terminal.progress import progress

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class CalibrationSet:
    """Float NCHW tensors, one image each (shape (1, C, H, W)), with a fingerprint for caching."""

    tensors: list[Any]  # np.ndarray per sample, or dict input name -> np.ndarray
    description: str
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def batches(self, batch_size: int) -> Iterator[Any]:
        """Consecutive samples joined along the batch axis (per input for several inputs)."""
        for start in range(0, len(self.tensors), batch_size):
            chunk = self.tensors[start:start + batch_size]
            if isinstance(chunk[0], dict):
                yield {name: np.concatenate([s[name] for s in chunk], axis=0) for name in chunk[0]}
            else:
                yield np.concatenate(chunk, axis=0)

    def fingerprint(self) -> str:
        """SHA-256 of the samples, computed once (the build cache and the float-statistics memo
        both key on it; the samples are not changed after the set is made)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for sample in self.tensors:
                for name, t in sorted(sample.items()) if isinstance(sample, dict) else [("", sample)]:
                    h.update(name.encode())
                    h.update(np.ascontiguousarray(t).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def _files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _dataset_txt(path: Path) -> list[Any]:
    """RKNN's dataset.txt: one sample per line, one file (image or .npy) per model input separated
    by spaces; relative paths are taken from the file's folder."""
    items: list[Any] = []
    for line in path.read_text().splitlines():
        entries = line.strip().split()
        if not entries or entries[0].startswith("#"):
            continue
        files = [Path(e) if Path(e).is_absolute() else path.parent / e for e in entries]
        items.append(files[0] if len(files) == 1 else tuple(files))
    return items


def _expand_source(source: Any, inputs: list[tuple[str, int]] | None = None) -> tuple[list[Any], str]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise CalibrationError(f"calibration source not found: {path}")
        if path.is_dir():
            return _files_in(path), f"folder {path}"
        if path.suffix.lower() == ".txt":
            return _dataset_txt(path), f"dataset file {path}"
        return [path], f"image {path}"
    rank = inputs[0][1] if inputs and len(inputs) == 1 else 4
    if isinstance(source, np.ndarray):
        if source.dtype.kind == "f" and source.ndim == rank:  # a batch: one sample per row
            return [source[i:i + 1] for i in range(source.shape[0])], f"array {source.shape}"
        return [source], f"array {source.shape}"
    if isinstance(source, dict) and inputs and len(inputs) > 1:  # batched arrays by input name
        count = {len(np.asarray(v)) for v in source.values()}
        if len(count) != 1:
            raise CalibrationError(f"calibration arrays by input have different batch sizes: "
                                   f"{ {k: len(np.asarray(v)) for k, v in source.items()} }")
        n = count.pop()
        return [{k: np.asarray(v)[i:i + 1] for k, v in source.items()} for i in range(n)], f"{n} samples by input"
    if isinstance(source, Image.Image):
        return [source], "one PIL image"
    try:
        items = list(source)
    except TypeError as exc:
        raise CalibrationError(f"cannot calibrate on a {type(source).__name__}") from exc
    return items, f"{len(items)} items"


def _to_tensor(item: Any, preprocess: Preprocess, index: int, rank: int | None = None) -> np.ndarray:
    """One input of one sample: a float array (with or without its batch dimension of 1), a .npy
    file, or an image (through `preprocess`)."""
    if isinstance(item, (str, os.PathLike)) and str(item).endswith(".npy"):
        try:
            item = np.load(item, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"calibration item {index}: cannot read {item}: {exc}") from exc
    if isinstance(item, np.ndarray) and item.dtype.kind == "f":
        rank = rank or 4
        t = item[None] if item.ndim == rank - 1 else item
        if t.ndim != rank or t.shape[0] != 1:
            raise CalibrationError(f"calibration item {index}: expected one sample of rank {rank - 1} "
                                   f"(or {rank} with batch 1), got shape {item.shape}")
        return np.ascontiguousarray(t, dtype=np.float32)
    try:
        return preprocess(item)
    except ImageError as exc:
        raise CalibrationError(f"calibration item {index}: {exc}") from exc


def _to_sample(item: Any, preprocess: Preprocess, index: int, inputs: list[tuple[str, int]] | None) -> Any:
    """A sample: one array, or a dict by input name for a model with several inputs."""
    if not inputs or len(inputs) == 1:
        return _to_tensor(item, preprocess, index, inputs[0][1] if inputs else None)
    names = [name for name, _ in inputs]
    if isinstance(item, dict):
        if set(item) != set(names):
            raise CalibrationError(f"calibration item {index}: has inputs {sorted(item)}, the model takes {names}")
        parts = [item[name] for name in names]
    elif isinstance(item, (tuple, list)) and len(item) == len(names):
        parts = list(item)
    else:
        raise CalibrationError(f"calibration item {index}: the model takes {len(names)} inputs {names}; give a dict "
                               "by input name or a tuple in graph order")
    return {name: _to_tensor(part, preprocess, index, rank) for (name, rank), part in zip(inputs, parts)}


def _shape_of(sample: Any) -> Any:
    return {k: v.shape for k, v in sample.items()} if isinstance(sample, dict) else sample.shape


def _finite(sample: Any) -> str | None:
    for t in (sample.values() if isinstance(sample, dict) else [sample]):
        if not np.isfinite(t).all():
            return "NaN" if np.isnan(t).any() else "Inf"
    return None


def make_calibration_set(source: Any, preprocess: Preprocess, limit: int | None = None,
                         inputs: list[tuple[str, int]] | None = None) -> CalibrationSet:
    """Normalize any calibration source; raise `CalibrationError` naming what is wrong.

    `inputs`: the model's (input name, rank) in graph order, so arrays of any rank and samples of
    several inputs are read right; None means one image-like 4-D input."""
    if isinstance(source, CalibrationSet):
        return source
    items, description = _expand_source(source, inputs)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise CalibrationError(f"calibration set is empty ({description})")
    tensors: list[Any] = []
    for i, item in enumerate(progress(items, len(items), "reading calibration data", f"{len(items)} samples")):
        t = _to_sample(item, preprocess, i, inputs)
        bad = _finite(t)
        if bad:
            raise CalibrationError(f"calibration item {i} ({_name(item)}) contains {bad} values")
        if tensors and _shape_of(t) != _shape_of(tensors[0]):
            raise CalibrationError(
                f"calibration item {i} ({_name(item)}) has shape {_shape_of(t)}, the first had {_shape_of(tensors[0])}"
            )
        tensors.append(t)
    return CalibrationSet(tensors, description)


def _name(item: Any) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else type(item).__name__


def default_calibration(preprocess: Preprocess, count: int = 100, seed: int = 1) -> CalibrationSet:
    """Random crops of the offline photos (seed 1: disjoint from the evaluation crops of seed 0)."""
    from unified.inputs.sample_images import random_crops

    crops = random_crops(count, seed)
    cal = make_calibration_set(crops, preprocess)
    cal.description = f"{count} built-in photo crops (seed {seed})"
    return cal
