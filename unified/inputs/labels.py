"""ImageNet class names, shipped as a data file so the runtime path needs neither torch nor torchvision."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    text = resources.files("unified").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    labels = tuple(line for line in text.splitlines() if line)
    assert len(labels) == 1000, "the shipped ImageNet label file must hold 1000 names"
    return labels


def label_for(index: int, num_classes: int) -> str:
    """The ImageNet name for 1000-class outputs, else `class <index>`."""
    if num_classes == 1000:
        return imagenet_labels()[index]
    return f"class {index}"
