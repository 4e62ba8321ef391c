"""Shared fixtures: no auto-loaded plugins, a private cache, tiny models, and Lite0 built once."""
from __future__ import annotations

import os

# Before unified loads any plugin: tests see only the built-ins and what they register themselves.
os.environ["UNIFIED_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ.setdefault("UNIFIED_PROGRESS", "0")

import logging  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from unified.consistency.tiny_models import tiny_classifier  # noqa: E402

logging.getLogger().setLevel(logging.ERROR)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One cache per test session: the zoo export and default quantizations happen once, here."""
    path = os.environ.get("UNIFIED_TEST_CACHE") or str(tmp_path_factory.mktemp("unified-cache"))
    os.environ["UNIFIED_CACHE_DIR"] = path
    return path


@pytest.fixture(scope="session")
def tiny_model():
    return tiny_classifier(seed=0)


@pytest.fixture(scope="session")
def tiny_batch() -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, size=(4, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_calibration() -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    return [rng.uniform(-1, 1, size=(1, 3, 16, 16)).astype(np.float32) for _ in range(16)]


@pytest.fixture(scope="session")
def lite0(private_cache):
    """The pretrained EfficientNet-Lite0 as ONNX (exported once per session into the private cache)."""
    from unified.inputs.zoo import load_zoo_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_zoo_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def lite0_preprocess():
    from unified.inputs.zoo import ZOO

    return ZOO["efficientnet_lite0"].preprocess


@pytest.fixture(scope="session")
def eval_batch(lite0_preprocess) -> np.ndarray:
    """200 deterministic random crops of the offline photos (seed 0)."""
    from unified.inputs.sample_images import random_crops

    return np.concatenate([lite0_preprocess(c) for c in random_crops(200, seed=0)])


@pytest.fixture(scope="session")
def calib_crops(lite0_preprocess) -> list[np.ndarray]:
    """100 calibration crops (seed 1), disjoint from the evaluation crops."""
    from unified.inputs.sample_images import random_crops

    return [lite0_preprocess(c) for c in random_crops(100, seed=1)]


@pytest.fixture(scope="session")
def lite0_fp32_logits(lite0, eval_batch) -> np.ndarray:
    import unified
    from tests.helpers import run_chunked

    return run_chunked(unified.quantize(lite0, backend="ort", mode="fp32"), eval_batch)
