"""Image preprocessing in PIL + numpy, equal to torchvision's classification transforms.

`Preprocess(resize=256, crop=224, mean, std)` reproduces
``Resize(256) -> CenterCrop(224) -> ToTensor() -> Normalize(mean/255, std/255)`` within 1e-6
(a test compares them), without importing torch: the runtime path must not need it.
Mean and std are in pixel units (0..255), the way RKNN's `mean_values`/`std_values` and Tengine's
`-w`/`-s` are given, so the same numbers configure every backend.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from unified.core.errors import ImageError, InputError
from unified.inputs.images import ImageLike, load_rgb


LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes the model's float input: resize, center crop, channel order,
    `(pixel - mean) / std` (pixel units, in the model's channel order), and the model's layout."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    layout: str = "NCHW"
    channels: str = "RGB"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise InputError(f"Preprocess layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.channels not in CHANNEL_ORDERS:
            raise InputError(f"Preprocess channels must be one of {', '.join(CHANNEL_ORDERS)}, got {self.channels!r}")
        object.__setattr__(self, "mean", per_channel(self.mean))
        object.__setattr__(self, "std", per_channel(self.std))
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 < value <= 16384:
                raise InputError(f"Preprocess {name} must be a size in pixels (1..16384), got {value!r}")
        if self.crop > self.resize:
            raise InputError(f"Preprocess crop {self.crop} is larger than the resize {self.resize}")
        if not all(np.isfinite(v) for v in self.mean + self.std) or any(v == 0 for v in self.std):
            raise InputError(f"Preprocess mean/std must be finite and std non-zero, got {self.mean} / {self.std}")

    def with_normalization(self, mean: Any = None, std: Any = None) -> "Preprocess":
        """A copy with mean and/or std replaced (pixel units; one value or one per channel, as
        RKNN's `mean_values=[[127, 127, 127]]` or a plain 127); None keeps the current one."""
        return replace(self, mean=self.mean if mean is None else per_channel(mean),
                       std=self.std if std is None else per_channel(std))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Preprocess":
        return cls(
            resize=int(data["resize"]),
            crop=int(data["crop"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            layout=str(data.get("layout", "NCHW")),
            channels=str(data.get("channels", "RGB")),
        )

    def pixels(self, image: ImageLike) -> np.ndarray:
        """Resize and center-crop to an HxWx3 uint8 array (what an NPU's camera pipeline feeds)."""
        im = load_rgb(image)
        im = resize_shorter_side(im, self.resize)
        im = center_crop(im, self.crop)
        return np.asarray(im, dtype=np.uint8)

    def normalize(self, pixels: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """uint8 RGB NHWC or HWC pixels -> the model's float32 input, (pixel - mean) / std, in its
        channel order and layout."""
        arr = np.asarray(pixels)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise InputError(f"expected HxWx3 or NxHxWx3 pixels, got shape {arr.shape}")
        # Same operation order as torchvision (x/255 - m/255) / (s/255) would round differently by
        # ~1 ulp; we compute in float64 and round once, which stays within 1e-6 of it.
        if self.channels == "BGR":
            arr = arr[..., ::-1]
        x = (arr.astype(np.float64) - np.asarray(self.mean)) / np.asarray(self.std)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=dtype)

    def __call__(self, image: ImageLike) -> np.ndarray:
        """One image -> float32 tensor of shape (1, 3, crop, crop), or (1, crop, crop, 3) for NHWC."""
        return self.normalize(self.pixels(image))

    def batch(self, images: Iterable[ImageLike]) -> np.ndarray:
        tensors = [self(im) for im in images]
        if not tensors:
            raise ImageError("no images given")
        return np.concatenate(tensors, axis=0)


def per_channel(value: Any) -> tuple[float, float, float]:
    """127, [127], [127, 127, 127] or [[127, 127, 127]] -> (127.0, 127.0, 127.0)."""
    flat = np.asarray(value, dtype=np.float64).reshape(-1).tolist()
    if len(flat) == 1:
        flat = flat * 3
    if len(flat) != 3:
        raise InputError(f"expected one value or one per RGB channel, got {value!r}")
    return (flat[0], flat[1], flat[2])


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """torchvision `Resize(size)` on a PIL image: shorter side to `size`, bilinear with antialias."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return image
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return image.resize((new_w, new_h), Image.BILINEAR)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision `CenterCrop(size)`: offsets rounded as torchvision does (pads if too small)."""
    w, h = image.size
    if w < size or h < size:
        padded = Image.new("RGB", (max(w, size), max(h, size)))
        padded.paste(image, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        image, (w, h) = padded, padded.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def as_input_batch(x: Any, preprocess: Preprocess, input_names: Sequence[str] | None = None,
                   input_rank: int | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """A model input batch from what a user passes: a float array in the model's own input space
    and layout (a 3-D image tensor gets its batch dimension, unless the model's input has rank 3:
    then it is a batch of sequences), image(s) through `preprocess`, or,
    for a model with several inputs, a dict input name -> array or a tuple in graph order."""
    names = list(input_names or [])
    if isinstance(x, (tuple, list)) and len(names) > 1 and len(x) == len(names) and all(isinstance(v, np.ndarray) for v in x):
        x = dict(zip(names, x))
    if isinstance(x, dict):
        if names and set(x) != set(names):
            raise InputError(f"the model takes inputs {names}; got {sorted(x)}")
        arrays = {k: np.asarray(v) for k, v in x.items()}
        sizes = {k: len(v) for k, v in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise InputError(f"inputs have different batch sizes: {sizes}")
        return {k: np.ascontiguousarray(v, dtype=np.float32) if v.dtype.kind == "f" else v for k, v in arrays.items()}
    if len(names) > 1:
        raise InputError(f"the model takes {len(names)} inputs {names}: pass a dict by input name or a tuple in "
                         "graph order")
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        if x.ndim == 3 and input_rank in (None, 4):
            x = x[None]
        if x.ndim < 2:
            raise InputError(f"expected a float batch in the model's input layout, got shape {x.shape}")
        return np.ascontiguousarray(x, dtype=np.float32)
    if isinstance(x, (list, tuple)):
        return preprocess.batch(x)
    return preprocess(x)  # type: ignore[arg-type]
