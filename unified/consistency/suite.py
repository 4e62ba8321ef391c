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


def test_hook_contract(unified_backend: str, cm) -> None:
    checks.check_hook_contract(unified_backend, cm)


def test_io_contract(unified_backend: str, cm) -> None:
    checks.check_io_contract(unified_backend, cm)


def test_quantize_input_round_trip(unified_backend: str, cm) -> None:
    checks.check_quantize_roundtrip(unified_backend, cm)


def test_determinism(unified_backend: str, cm) -> None:
    checks.check_determinism(unified_backend, cm)


def test_thread_safety(unified_backend: str, cm) -> None:
    checks.check_thread_safety(unified_backend, cm)


def test_save_load_round_trip(unified_backend: str, cm) -> None:
    checks.check_save_load(unified_backend, cm)


def test_consistency_with_fp32(unified_backend: str, request: pytest.FixtureRequest) -> None:
    figures = checks.check_fp32_consistency(unified_backend, request.config.getoption("unified_images"))
    print(f"\n{unified_backend}: {figures}")
