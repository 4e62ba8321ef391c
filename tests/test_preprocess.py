"""Preprocessing equals torchvision's transforms, and every common image mode is accepted."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from unified.core.errors import ImageError
from unified.inputs.images import load_rgb
from unified.inputs.preprocess import Preprocess
from unified.inputs.sample_images import bundled_photo_path, offline_photos


def _torchvision_reference(image: Image.Image, pre: Preprocess) -> np.ndarray:
    from torchvision import transforms

    t = transforms.Compose([
        transforms.Resize(pre.resize),
        transforms.CenterCrop(pre.crop),
        transforms.ToTensor(),
        transforms.Normalize([m / 255 for m in pre.mean], [s / 255 for s in pre.std]),
    ])
    return t(image).numpy()[None]


@pytest.mark.parametrize("pre", [Preprocess(), Preprocess(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))])
def test_matches_torchvision_on_real_photos(pre: Preprocess) -> None:
    photos = offline_photos()[:6]
    assert len(photos) >= 3
    for photo in photos:
        ours = pre(photo.image)
        ref = _torchvision_reference(photo.image, pre)
        assert ours.shape == ref.shape == (1, 3, 224, 224)
        assert ours.dtype == np.float32
        assert np.abs(ours - ref).max() <= 1e-6, photo.name


def test_odd_sizes_match_torchvision() -> None:
    rng = np.random.default_rng(0)
    pre = Preprocess(resize=20, crop=17)
    for h, w in [(31, 45), (20, 20), (64, 21), (17, 100)]:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert np.abs(pre(im) - _torchvision_reference(im, pre)).max() <= 1e-6


def test_tf_normalization_maps_pixels_exactly() -> None:
    x = Preprocess().normalize(np.array([[[0, 127, 255]]], dtype=np.uint8))
    assert x.reshape(-1).tolist() == [-127 / 128, 0.0, 1.0]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16", "I", "LA", "CMYK"])
def test_accepts_common_modes(mode: str) -> None:
    base = Image.open(bundled_photo_path()).convert("RGB")
    if mode == "I;16":
        im = Image.fromarray(np.asarray(base.convert("L"), dtype="<u2") * 257)
        assert im.mode == "I;16"
    elif mode == "I":
        im = Image.fromarray(np.asarray(base.convert("L"), dtype=np.int32) * 257)
    else:
        im = base.convert(mode)
    x = Preprocess()(im)
    assert x.shape == (1, 3, 224, 224)
    assert np.isfinite(x).all()
    if mode in ("L", "I;16", "I", "LA"):  # gray: all three channels equal and same as 8-bit gray
        np.testing.assert_array_equal(x[0, 0], x[0, 2])
        np.testing.assert_allclose(x, Preprocess()(base.convert("L")), atol=1 / 128 + 1e-6)


def test_arrays_grayscale_and_16bit() -> None:
    gray = np.full((40, 50), 200, np.uint8)
    assert load_rgb(gray).mode == "RGB"
    wide = np.full((40, 50, 3), 200 * 257, np.uint16)
    np.testing.assert_array_equal(np.asarray(load_rgb(wide)), np.full((40, 50, 3), 200, np.uint8))


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 5), np.uint8), np.zeros((4, 4, 3), np.int64), np.zeros((2, 2, 2, 3), np.uint8)])
def test_bad_arrays_are_image_errors(bad: np.ndarray) -> None:
    with pytest.raises(ImageError, match=str(bad.shape[0])):
        load_rgb(bad)


def test_missing_and_non_image_files(tmp_path) -> None:
    with pytest.raises(ImageError, match="not found"):
        load_rgb(tmp_path / "nope.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a jpeg")
    with pytest.raises(ImageError, match="not an image file"):
        load_rgb(text)
