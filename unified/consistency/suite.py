"""The conformance suite as pytest tests (collected by the plugin when --unified-backend is given)."""
from __future__ import annotations

import pytest

from unified.consistency import checks


@pytest.fixture(scope="module")
def cm() -> checks.ConformanceModel:
    return checks.conformance_model()


def test_backend_is_installed(unified_backend: str) -> None:
    import unified

    names = [b.name for b in unified.backends()]
    assert unified_backend in names, f"backend {unified_backend!r} is not installed; installed: {names}"


CHECKS = {
    "hook contract": checks.check_hook_contract,
    "io contract": checks.check_io_contract,
    "quantize_input round trip": checks.check_quantize_roundtrip,
    "determinism": checks.check_determinism,
    "thread safety": checks.check_thread_safety,
    "save/load round trip": checks.check_save_load,
}


@pytest.mark.parametrize("check", list(CHECKS.values()), ids=list(CHECKS))
def test_contract(unified_backend: str, cm, check) -> None:
    check(unified_backend, cm)


def test_consistency_with_fp32(unified_backend: str, request: pytest.FixtureRequest) -> None:
    figures = checks.check_fp32_consistency(unified_backend, request.config.getoption("unified_images"))
    print(f"\n{unified_backend}: {figures}")
