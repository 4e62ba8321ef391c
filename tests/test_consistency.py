"""Every built-in backend on the built-in model and the bundled photos, image by image.

Thresholds come from measurements (centre crops of the 20 offline photos, default calibration):
lowest per-image logit cosine / top-1 agreement measured: ort static 0.956 / 75% (textures such as
gravel, grass and brick flip between near-tied classes), rknn 0.979 / 100%, tengine 0.664 / 55%.
Thresholds sit a little below those. A failure names the backend, the image and the figure.
"""
from __future__ import annotations

import numpy as np
import pytest

import unified
from unified.inputs.sample_images import offline_photos

pytestmark = pytest.mark.lite0

MIN_COSINE = {"ort": 0.93, "rknn": 0.96, "tengine": 0.6}
MIN_TOP1 = {"ort": 0.65, "rknn": 0.9, "tengine": 0.45}


@pytest.fixture(scope="module")
def photos_and_reference(lite0_preprocess):
    photos = offline_photos()
    x = np.concatenate([lite0_preprocess(p.image) for p in photos])
    ref = unified.quantize("efficientnet_lite0", backend="ort", mode="fp32").run(x)
    return photos, x, ref


@pytest.mark.parametrize("backend", ["ort", "rknn", "tengine"])
def test_each_photo_close_to_fp32(backend: str, photos_and_reference) -> None:
    photos, x, ref = photos_and_reference
    out = unified.quantize("efficientnet_lite0", backend=backend).run(x)
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    failures = [f"{backend}: image {p.name}: logit cosine {c:.4f} < {MIN_COSINE[backend]}"
                for p, c in zip(photos, cos) if c < MIN_COSINE[backend]]
    disagree = [f"{backend}: image {p.name}: top-1 {int(o.argmax())} vs fp32 {int(r.argmax())}"
                for p, o, r in zip(photos, out, ref) if o.argmax() != r.argmax()]
    agreement = 1 - len(disagree) / len(photos)
    print(f"\n{backend}: min cosine {cos.min():.4f} ({photos[int(cos.argmin())].name}), "
          f"top-1 agreement {agreement:.1%} on {len(photos)} photos; " + "; ".join(disagree))
    assert not failures, "\n".join(failures)
    assert agreement >= MIN_TOP1[backend], f"{backend}: top-1 agreement {agreement:.1%} < {MIN_TOP1[backend]:.0%}: " + "; ".join(disagree)
