"""Reading images from paths, PIL images or arrays into RGB PIL images.

Every input mode a camera or a dataset hands us is accepted: RGB, RGBA (alpha dropped), grayscale
(replicated), palette, 16-bit and 32-bit integer grayscale (scaled to 8 bits), and uint8 arrays
shaped HxW, HxWx1, HxWx3 or HxWx4. Anything else is an `ImageError` naming the problem.
"""
from __future__ import annotations

import os
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from unified.core.errors import ImageError
from unified.core.paths import existing_file

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


#: images are untrusted input too: at most this many pixels are decoded (UNIFIED_MAX_IMAGE_PIXELS)
DEFAULT_MAX_PIXELS = 64_000_000


def max_image_pixels() -> int:
    return int(os.environ.get("UNIFIED_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS))


def open_image(source: str | os.PathLike) -> Image.Image:
    """Open an image file fully (so errors surface here, not later during resize); refuse one with
    more pixels than `max_image_pixels()` before decoding it."""
    path = existing_file(source, "image", ImageError)
    try:
        with Image.open(path) as im:
            limit = max_image_pixels()
            pixels = im.size[0] * im.size[1]
            if pixels > limit:
                raise ImageError(f"{path}: {im.size[0]}x{im.size[1]} = {pixels} pixels is over the limit of {limit} "
                                 "(raise it with UNIFIED_MAX_IMAGE_PIXELS)")
            im.load()
            return im.copy()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refused as a decompression bomb by PIL: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"not an image file (PIL cannot identify it): {path}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot decode image {path}: {exc}") from exc


def _wide_gray_to_8bit(im: Image.Image) -> Image.Image:
    arr = np.asarray(im)
    if arr.dtype.kind == "f":
        arr8 = np.clip(np.rint(arr * 255.0 if arr.max() <= 1.0 else arr), 0, 255).astype(np.uint8)
    else:
        bits = 16 if im.mode.startswith("I;16") or arr.max() < 65536 else 32
        arr8 = (arr.astype(np.uint64) >> (bits - 8)).astype(np.uint8)
    return Image.fromarray(arr8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _wide_gray_to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"cannot convert image of mode {image.mode!r} to RGB: {exc}") from exc


def array_to_image(arr: np.ndarray) -> Image.Image:
    """A uint8 (or uint16) HxW / HxWxC array as an RGB PIL image."""
    if arr.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"image arrays must be uint8 or uint16, got dtype {arr.dtype} with shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(arr).convert("RGB")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return to_rgb(Image.fromarray(np.ascontiguousarray(arr)))
    raise ImageError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {arr.shape}")


def load_rgb(source: ImageLike) -> Image.Image:
    """Any supported image input as an 8-bit RGB PIL image."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        return array_to_image(source)
    if isinstance(source, (str, os.PathLike)):
        return to_rgb(open_image(source))
    raise ImageError(f"cannot read an image from a {type(source).__name__}")
