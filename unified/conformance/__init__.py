"""The backend conformance suite: what every unified backend, built-in or third-party, must do.

Each check is a plain function that raises AssertionError with a message naming the backend and
the figure; the pytest plugin (`pytest --unified-backend NAME`) runs them as tests, and unified's
own test suite runs them against the built-in backends.
"""
from unified.conformance.checks import (
    check_determinism,
    check_fp32_consistency,
    check_hook_contract,
    check_io_contract,
    check_quantize_roundtrip,
    check_save_load,
    check_thread_safety,
    conformance_model,
)

__all__ = [
    "check_determinism", "check_fp32_consistency", "check_hook_contract", "check_io_contract",
    "check_quantize_roundtrip", "check_save_load", "check_thread_safety", "conformance_model",
]
