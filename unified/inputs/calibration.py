"""Calibration data: folders, RKNN-style dataset.txt files, image lists or arrays -> float tensors.

Every source becomes a `CalibrationSet` of float32 NCHW tensors in the model's input space (after
the model's own preprocessing), so backends never see file formats. Bad data fails here, early,
with the offending item named: an empty set, NaN or Inf values, mismatched shapes.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
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

    tensors: list[np.ndarray]
    description: str

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.tensors), batch_size):
            yield np.concatenate(self.tensors[start:start + batch_size], axis=0)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in self.tensors:
            h.update(np.ascontiguousarray(t).tobytes())
        return h.hexdigest()


def _files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _dataset_txt(path: Path) -> list[Path]:
    """RKNN's dataset.txt: one image path per line, relative paths taken from the file's folder."""
    items = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        entry = line.strip().split()[0] if line.strip() else ""
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry)
        items.append(p if p.is_absolute() else path.parent / p)
    return items


def _expand_source(source: Any) -> tuple[list[Any], str]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise CalibrationError(f"calibration source not found: {path}")
        if path.is_dir():
            return _files_in(path), f"folder {path}"
        if path.suffix.lower() == ".txt":
            return _dataset_txt(path), f"dataset file {path}"
        return [path], f"image {path}"
    if isinstance(source, np.ndarray):
        if source.dtype.kind == "f" and source.ndim == 4:
            return [source[i:i + 1] for i in range(source.shape[0])], f"array {source.shape}"
        return [source], f"array {source.shape}"
    if isinstance(source, Image.Image):
        return [source], "one PIL image"
    try:
        items = list(source)
    except TypeError as exc:
        raise CalibrationError(f"cannot calibrate on a {type(source).__name__}") from exc
    return items, f"{len(items)} items"


def _to_tensor(item: Any, preprocess: Preprocess, index: int) -> np.ndarray:
    if isinstance(item, np.ndarray) and item.dtype.kind == "f":
        t = item[None] if item.ndim == 3 else item
        if t.ndim != 4 or t.shape[0] != 1:
            raise CalibrationError(f"calibration item {index}: float tensors must be CHW or 1xCxHxW, got {item.shape}")
        return np.ascontiguousarray(t, dtype=np.float32)
    try:
        return preprocess(item)
    except ImageError as exc:
        raise CalibrationError(f"calibration item {index}: {exc}") from exc


def make_calibration_set(source: Any, preprocess: Preprocess, limit: int | None = None) -> CalibrationSet:
    """Normalize any calibration source; raise `CalibrationError` naming what is wrong."""
    if isinstance(source, CalibrationSet):
        return source
    items, description = _expand_source(source)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise CalibrationError(f"calibration set is empty ({description})")
    tensors = []
    for i, item in enumerate(progress(items, len(items), "reading calibration data", f"{len(items)} images")):
        t = _to_tensor(item, preprocess, i)
        if not np.isfinite(t).all():
            bad = "NaN" if np.isnan(t).any() else "Inf"
            raise CalibrationError(f"calibration item {i} ({_name(item)}) contains {bad} values")
        if tensors and t.shape != tensors[0].shape:
            raise CalibrationError(
                f"calibration item {i} ({_name(item)}) has shape {t.shape}, the first had {tensors[0].shape}"
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
