"""The conformance suite against the built-in backends and the example third-party plugin."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest

import unified
from unified.consistency import checks as conformance
from unified.core import plugins

BUILTINS = ["ort", "rknn", "tengine"]


@pytest.fixture(scope="module")
def cm():
    return conformance.conformance_model()


@pytest.mark.parametrize("backend", BUILTINS)
def test_builtin_backends_conform(backend: str, cm) -> None:
    conformance.check_hook_contract(backend, cm)
    conformance.check_io_contract(backend, cm)
    conformance.check_quantize_roundtrip(backend, cm)
    conformance.check_determinism(backend, cm)
    conformance.check_thread_safety(backend, cm)
    conformance.check_save_load(backend, cm)


@pytest.mark.lite0
@pytest.mark.parametrize("backend", BUILTINS)
def test_builtin_backends_meet_their_declared_thresholds(backend: str) -> None:
    figures = conformance.check_fp32_consistency(backend, images=24)
    print(f"\n{backend}: {figures} (declared {plugins.get_backend(backend).thresholds})")


def _example_installed() -> bool:
    return any(ep.name == "refeval" for ep in importlib.metadata.entry_points(group="unified"))


def test_example_plugin_is_installed_and_listed(monkeypatch) -> None:
    assert _example_installed(), "install it: pip install ./examples/unified-refeval (the README's test command does)"
    monkeypatch.delenv(plugins.AUTOLOAD_OFF_ENV)
    plugins.reload_plugins()
    try:
        names = [b.name for b in unified.backends()]
        assert names[:3] == BUILTINS and "refeval" in names
        assert plugins.plugin_failures() == {}
        out = subprocess.run([sys.executable, "-m", "unified.cli", "backends"], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != plugins.AUTOLOAD_OFF_ENV}, check=True)
        assert "refeval" in out.stdout and "ONNX reference evaluator" in out.stdout
    finally:
        monkeypatch.setenv(plugins.AUTOLOAD_OFF_ENV, "1")
        plugins.reload_plugins()


def test_example_plugin_passes_the_suite_with_one_command(tmp_path) -> None:
    assert _example_installed(), "install it: pip install ./examples/unified-refeval"
    env = {k: v for k, v in os.environ.items() if k != plugins.AUTOLOAD_OFF_ENV}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--unified-backend", "refeval", "--unified-images", "4",
                           "-q", "-p", "no:cacheprovider"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "8 passed" in proc.stdout


def test_plugin_is_inactive_unless_asked(tmp_path) -> None:
    (tmp_path / "test_nothing.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout
