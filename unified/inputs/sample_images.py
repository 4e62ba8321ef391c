"""Real photos that ship offline, and deterministic random crops of them.

The bundled photo (a cat, scikit-image's `chelsea`, CC0) is inside `unified` itself so
`unified infer` works with nothing else installed. For calibration and evaluation sets we gather
the photos that scikit-image, scikit-learn and matplotlib ship in their wheels (whichever are
installed) and cut deterministic random crops; two seeds give two disjoint sets of crops.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from unified.inputs.images import open_image, to_rgb

_SKIMAGE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "camera", "moon", "coins", "grass", "gravel", "brick", "clock", "cell",
    "stereo_motorcycle",
)


def bundled_photo_path() -> Path:
    """The cat photo shipped inside the package (the default image of `unified infer`)."""
    return Path(str(resources.files("unified").joinpath("data/chelsea.jpg")))


@dataclass(frozen=True)
class Photo:
    name: str
    image: Image.Image


def _skimage_photos() -> list[Photo]:
    try:
        import skimage.data as data
    except ImportError:
        return []
    photos = []
    for name in _SKIMAGE_PHOTOS:
        loader: Callable | None = getattr(data, name, None)
        if loader is None:
            continue
        try:
            arr = loader()
        except Exception:  # some images are fetched on demand; offline they fail: skip them
            continue
        if isinstance(arr, tuple):
            arr = arr[0]
        photos.append(Photo(f"skimage:{name}", to_rgb(Image.fromarray(np.asarray(arr)))))
    return photos


def _sklearn_photos() -> list[Photo]:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return []
    bunch = load_sample_images()
    return [Photo(f"sklearn:{Path(f).name}", Image.fromarray(im)) for f, im in zip(bunch.filenames, bunch.images)]


def _matplotlib_photos() -> list[Photo]:
    try:
        import matplotlib
    except ImportError:
        return []
    folder = Path(matplotlib.get_data_path()) / "sample_data"
    photos = []
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        if (folder / name).exists():
            photos.append(Photo(f"matplotlib:{name}", to_rgb(open_image(folder / name))))
    return photos


def offline_photos() -> list[Photo]:
    """All photos available offline, in a fixed order (the bundled cat only if scikit-image's is absent)."""
    photos = _skimage_photos() + _sklearn_photos() + _matplotlib_photos()
    if not any(p.name == "skimage:chelsea" for p in photos):
        photos.insert(0, Photo("unified:chelsea.jpg", to_rgb(open_image(bundled_photo_path()))))
    return photos


def random_crops(n: int, seed: int, photos: list[Photo] | None = None) -> list[Image.Image]:
    """`n` deterministic random crops (30-100% of the shorter side, random aspect 3:4..4:3).

    Different seeds give different crops; the evaluation set uses seed 0 and calibration seed 1
    by convention, so the two sets never share a crop.
    """
    photos = photos if photos is not None else offline_photos()
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        photo = photos[rng.integers(len(photos))].image
        w, h = photo.size
        side = rng.uniform(0.3, 1.0) * min(w, h)
        aspect = rng.uniform(0.75, 4 / 3)
        cw, ch = int(min(w, side * aspect)), int(min(h, side / aspect))
        left = int(rng.integers(0, w - cw + 1))
        top = int(rng.integers(0, h - ch + 1))
        crop = photo.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crops.append(crop)
    return crops
