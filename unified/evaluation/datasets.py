"""Evaluation datasets: what a deployment engineer points `unified eval` at, as items with labels.

Four on-disk forms, told apart without configuration:

* a folder of images (no labels);
* an ImageNet-style tree, one sub-folder per class. A folder name is mapped to the model's class
  index as an integer ("281"), an ImageNet WordNet id ("n02123045", the layout of ImageNet's own
  train/val trees) or a class name ("tabby", "tabby_cat", case and "_"/"-" ignored);
* a `dataset.txt` (RKNN's calibration list): one sample per line, paths relative to the file,
  several space-separated files for a model with several inputs;
* a labels file: `path class_index` per line (ImageNet's `val.txt`), also relative to the file.

In memory, a list of images or (image, label) pairs works too (how `compare` feeds its crops).
Items keep their order; every item has an index, so results merge deterministically however the
work was split. Reading a file happens later, on whichever process runs its shard; a file that
cannot be read is skipped there and reported by path, not fatal here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from unified.core.errors import InputError
from unified.inputs.calibration import IMAGE_SUFFIXES
from unified.inputs.labels import imagenet_labels


@dataclass(frozen=True)
class Item:
    """One sample: a path (or several, one per model input) or an in-memory image, and its label."""

    index: int
    source: Any
    label: int | None
    name: str


@dataclass(frozen=True)
class Dataset:
    items: tuple[Item, ...]
    description: str
    kind: str  # "folder" | "class-folders" | "dataset.txt" | "labels" | "images"

    @property
    def labelled(self) -> bool:
        return any(item.label is not None for item in self.items)

    def __len__(self) -> int:
        return len(self.items)


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """ImageNet-1k WordNet ids in class-index order (sorted, as ImageNet's own index is)."""
    text = resources.files("unified").joinpath("data/imagenet_wnids.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _key(name: str) -> str:
    return name.lower().replace("_", " ").replace("-", " ").strip()


def class_index(folder: str, num_classes: int) -> int:
    """The model class a class folder stands for; `InputError` naming the folder otherwise."""
    if folder.isdigit():
        index = int(folder)
        if index < num_classes:
            return index
        raise InputError(f"class folder {folder!r}: index {index} is outside the model's {num_classes} classes")
    if num_classes == 1000:
        wnids = imagenet_wnids()
        if folder in wnids:
            return wnids.index(folder)
        by_name = {_key(label): i for i, label in enumerate(imagenet_labels())}
        if _key(folder) in by_name:
            return by_name[_key(folder)]
    raise InputError(f"class folder {folder!r} is neither a class index, an ImageNet WordNet id nor an ImageNet "
                     f"class name of this {num_classes}-class model; name folders by class index or pass a labels "
                     "file ('path class_index' per line)")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _from_folder(root: Path, num_classes: int | None) -> Dataset:
    images = _images_in(root)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if images or not classes:
        if not images:
            raise InputError(f"dataset folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        items = [Item(i, str(p), None, str(p)) for i, p in enumerate(images)]
        return Dataset(tuple(items), f"{len(items)} images in {root}", "folder")
    if num_classes is None:
        raise InputError(f"{root} is a class-per-folder tree, but the model has no class-score output to map "
                         "its folder names to")
    items: list[Item] = []
    for folder in classes:
        label = class_index(folder.name, num_classes)
        items += [Item(len(items) + k, str(p), label, str(p)) for k, p in enumerate(_images_in(folder))]
    if not items:
        raise InputError(f"class folders under {root} hold no images")
    return Dataset(tuple(items), f"{len(items)} images in {len(classes)} class folders of {root}", "class-folders")


def _from_list(path: Path, num_classes: int | None) -> Dataset:
    """A dataset.txt (paths only) or a labels file (path and class index per line)."""
    try:
        lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read dataset list {path}: {exc}") from exc
    lines = [words for words in lines if words and not words[0].startswith("#")]
    if not lines:
        raise InputError(f"dataset list {path} names no images")
    labelled = all(len(words) == 2 and words[1].lstrip("-").isdigit() for words in lines)
    resolve = lambda name: str(Path(name) if os.path.isabs(name) else path.parent / name)  # noqa: E731
    items = []
    for i, words in enumerate(lines):
        if labelled:
            label = int(words[1])
            if label < 0 or (num_classes is not None and label >= num_classes):
                raise InputError(f"{path}, line {i + 1}: class index {label} is outside the model's "
                                 f"{num_classes} classes")
            items.append(Item(i, resolve(words[0]), label, resolve(words[0])))
        else:
            files = [resolve(w) for w in words]
            items.append(Item(i, files[0] if len(files) == 1 else tuple(files), None, " ".join(files)))
    kind = "labels" if labelled else "dataset.txt"
    return Dataset(tuple(items), f"{len(items)} {'labelled ' if labelled else ''}samples listed in {path}", kind)


def load_dataset(source: Any, num_classes: int | None = None) -> Dataset:
    """Any supported source as a `Dataset`; `num_classes` is the model's class count (for labels)."""
    if isinstance(source, Dataset):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return _from_folder(path, num_classes)
        if path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES:
            return _from_list(path, num_classes)
        if path.is_file():
            return Dataset((Item(0, str(path), None, str(path)),), str(path), "images")
        raise InputError(f"dataset not found: {path}")
    if isinstance(source, Sequence) or hasattr(source, "__iter__"):
        items = []
        for i, entry in enumerate(source):
            image, label = entry if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], int) \
                else (entry, None)
            name = str(image) if isinstance(image, (str, os.PathLike)) else f"image {i}"
            items.append(Item(i, str(image) if isinstance(image, os.PathLike) else image, label, name))
        if not items:
            raise InputError("the dataset is empty")
        return Dataset(tuple(items), f"{len(items)} images", "images")
    raise InputError(f"cannot evaluate on a {type(source).__name__}: pass a folder, a dataset.txt, a labels file "
                     "or a list of images")
