"""The hook contract: entry-point plugins, broken plugins, wrappers, unknown names, no auto-loading."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import unified
from unified.core import plugins
from unified.core.errors import BackendNotFoundError

PLUGIN_SOURCE = textwrap.dedent('''
    """A third-party backend: the ONNX reference evaluator, float in, float out."""
    import numpy as np
    import onnx
    from onnx.reference import ReferenceEvaluator
    import unified

    class Artifact:
        input_quant = None
        output_quant = None
        def __init__(self, data):
            self.data = data
            self.evaluator = ReferenceEvaluator(onnx.load_from_string(data))
        def to_files(self):
            return {"model.onnx": self.data}, {}

    @unified.hookimpl
    def unified_register_backends(register):
        register(unified.BackendSpec(name="refeval", description="onnx.reference", io="float",
                 input_dtype="float32", output_dtype="float32", input_layout="NCHW",
                 load_artifact=lambda blobs, meta: Artifact(blobs["model.onnx"]),
                 calibration_free_modes=("default",)))

    @unified.hookimpl
    def unified_quantize(backend, model, calibration, options):
        return Artifact(model.SerializeToString()) if backend == "refeval" else None

    @unified.hookimpl
    def unified_quantize_input(backend, artifact, batch):
        return batch if backend == "refeval" else None

    @unified.hookimpl
    def unified_infer(backend, artifact, inputs):
        return artifact.evaluator.run(None, {"input": inputs})[0] if backend == "refeval" else None

    @unified.hookimpl
    def unified_dequantize_output(backend, artifact, outputs):
        return outputs if backend == "refeval" else None
''')


def _install_fake_distribution(root: Path, dist: str, module: str, source: str, ep_name: str) -> None:
    """What `pip install` leaves on disk: a module plus a .dist-info with an entry point."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[unified]\n{ep_name} = {module}\n")


@pytest.fixture
def installed_plugins(tmp_path, monkeypatch):
    _install_fake_distribution(tmp_path, "unified-refeval", "unified_refeval", PLUGIN_SOURCE, "refeval")
    _install_fake_distribution(tmp_path, "unified-broken", "unified_broken",
                               "raise RuntimeError('this plugin is broken on purpose')\n", "broken")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in ("unified_refeval", "unified_broken"):
        sys.modules.pop(mod, None)
    monkeypatch.setenv(plugins.AUTOLOAD_OFF_ENV, "1")
    plugins.reload_plugins()


def test_autoload_is_off_in_tests(installed_plugins) -> None:
    plugins.reload_plugins()
    assert "refeval" not in plugins.backend_specs()
    assert plugins.plugin_failures() == {}


def test_entry_point_plugin_serves_infer(installed_plugins, monkeypatch, tiny_model, tiny_batch) -> None:
    monkeypatch.delenv(plugins.AUTOLOAD_OFF_ENV)
    plugins.reload_plugins()
    names = [b.name for b in unified.backends()]
    assert "refeval" in names and "ort" in names
    assert plugins.get_backend("refeval").plugin == "refeval"
    qm = unified.quantize(tiny_model, backend="refeval")
    expected = unified.quantize(tiny_model, backend="ort", mode="fp32").run(tiny_batch)
    np.testing.assert_allclose(qm.run(tiny_batch), expected, rtol=1e-5, atol=1e-5)
    result = unified.infer(tiny_model, tiny_batch[:1], backend="refeval")
    assert result.top1 == int(np.argmax(expected[0]))


def test_broken_plugin_is_reported_and_others_work(installed_plugins, monkeypatch, tiny_model, tiny_batch) -> None:
    monkeypatch.delenv(plugins.AUTOLOAD_OFF_ENV)
    plugins.reload_plugins()
    failures = plugins.plugin_failures()
    assert list(failures) == ["broken"]
    assert "broken on purpose" in failures["broken"]
    assert unified.quantize(tiny_model, backend="refeval").run(tiny_batch).shape == (4, 10)
    with pytest.raises(BackendNotFoundError, match="broken"):
        plugins.get_backend("nope")


class _Recorder:
    """A hook wrapper: observes every infer call of every backend without the backends knowing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    @unified.hookimpl(wrapper=True)
    def unified_infer(self, backend, artifact, inputs):
        out = yield
        self.calls.append((backend, out.shape))
        return out


def test_hook_wrapper_sees_every_backend(tiny_model, tiny_batch, tiny_calibration) -> None:
    recorder = _Recorder()
    plugins.register_plugin(recorder, name="recorder")
    try:
        runs = [("ort", "fp32"), ("ort", "dynamic"), ("ort", "static")]
        extra = [b.name for b in unified.backends() if b.name != "ort"]
        runs += [(name, None) for name in extra]
        for backend, mode in runs:
            unified.quantize(tiny_model, backend=backend, mode=mode, calibration=tiny_calibration).run(tiny_batch)
    finally:
        plugins.unregister_plugin(recorder)
    assert [c[0] for c in recorder.calls] == [r[0] for r in runs]
    assert all(shape == (4, 10) for _, shape in recorder.calls)


def test_unknown_backend_lists_installed(tiny_model) -> None:
    with pytest.raises(BackendNotFoundError) as info:
        unified.quantize(tiny_model, backend="tpu9000")
    message = str(info.value)
    assert "'tpu9000'" in message
    for spec in unified.backends():
        assert spec.name in message


def test_unknown_mode_is_named(tiny_model) -> None:
    with pytest.raises(unified.BackendError, match="no mode 'int4'.*fp32"):
        unified.quantize(tiny_model, backend="ort", mode="int4")


# -- routing: no plugin can answer for another's backend -------------------------------------------

class _Hijacker:
    """Answers every hook for every backend name (a plugin that forgot its `backend ==` checks)."""

    @unified.hookimpl(tryfirst=True)
    def unified_quantize_input(self, backend, artifact, batch):
        return np.zeros_like(batch)

    @unified.hookimpl(tryfirst=True)
    def unified_infer(self, backend, artifact, inputs):
        return np.zeros((len(inputs), 10), np.float32)

    @unified.hookimpl(tryfirst=True)
    def unified_dequantize_output(self, backend, artifact, outputs):
        return np.zeros(outputs.shape, np.float32)


@pytest.mark.parametrize("backend", ["ort", "rknn", "tengine"])
def test_a_plugin_answering_every_name_cannot_change_builtin_results(backend, tiny_model, tiny_batch,
                                                                    tiny_calibration) -> None:
    qm = unified.quantize(tiny_model, backend=backend, calibration=tiny_calibration)
    before, native_before = qm.run(tiny_batch), qm.quantize_input(tiny_batch)
    assert np.abs(before).max() > 0
    hijacker = _Hijacker()
    plugins.register_plugin(hijacker, name="hijacker")
    try:
        np.testing.assert_array_equal(qm.run(tiny_batch), before)
        np.testing.assert_array_equal(qm.quantize_input(tiny_batch), native_before)
    finally:
        plugins.unregister_plugin(hijacker)


def _entry_point_plugin(tmp_path, monkeypatch, module: str, source: str) -> None:
    _install_fake_distribution(tmp_path, f"unified-{module}", f"unified_{module}", source, module)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(plugins.AUTOLOAD_OFF_ENV)


REGISTRATION_RAISES = textwrap.dedent('''
    import unified
    @unified.hookimpl
    def unified_register_backends(register):
        raise RuntimeError("cannot find my device")
''')
REGISTERS_ORT_AGAIN = textwrap.dedent('''
    import unified
    @unified.hookimpl
    def unified_register_backends(register):
        register(unified.BackendSpec(name="ort", description="impostor", io="float", input_dtype="float32",
                 output_dtype="float32", input_layout="NCHW", load_artifact=lambda b, m: None))
''')
EXITS_AT_IMPORT = "import sys\nsys.exit(3)\n"
MISSPELLED_HOOK = textwrap.dedent('''
    import unified
    @unified.hookimpl
    def unified_infere(backend, artifact, inputs):
        return None
''')


@pytest.mark.parametrize("module, source, reason", [
    ("raising", REGISTRATION_RAISES, "RuntimeError: cannot find my device"),
    ("impostor", REGISTERS_ORT_AGAIN, "registers backend 'ort', already registered by unified.backends.ort.plugin"),
    ("exiting", EXITS_AT_IMPORT, "import failed: SystemExit: 3"),
    ("typo", MISSPELLED_HOOK, "hooks the contract does not define: unified_infere"),
])
def test_a_bad_plugin_is_disabled_alone_and_reported_by_name(module, source, reason, tmp_path, monkeypatch,
                                                              tiny_model, tiny_batch) -> None:
    _entry_point_plugin(tmp_path, monkeypatch, module, source)
    try:
        plugins.reload_plugins()
        failures = plugins.plugin_failures()
        assert list(failures) == [module]
        assert reason in failures[module]
        assert [s.name for s in unified.backends()][:3] == ["ort", "rknn", "tengine"]
        assert plugins.get_backend("ort").description.startswith("ONNX Runtime")
        out = unified.quantize(tiny_model, backend="ort", mode="fp32").run(tiny_batch)
        assert out.shape == (4, 10)
    finally:
        sys.modules.pop(f"unified_{module}", None)
        monkeypatch.setenv(plugins.AUTOLOAD_OFF_ENV, "1")
        plugins.reload_plugins()
    assert plugins.plugin_failures() == {}


def test_saved_builtin_model_loads_while_a_plugin_is_broken(tmp_path, monkeypatch, tiny_model, tiny_batch) -> None:
    path = tmp_path / "m.uqm"
    unified.quantize(tiny_model, backend="ort", mode="fp32").save(path)
    _entry_point_plugin(tmp_path, monkeypatch, "raising", REGISTRATION_RAISES)
    try:
        plugins.reload_plugins()
        assert unified.load(path).run(tiny_batch).shape == (4, 10)
    finally:
        sys.modules.pop("unified_raising", None)
        monkeypatch.setenv(plugins.AUTOLOAD_OFF_ENV, "1")
        plugins.reload_plugins()


def test_registering_by_hand_raises_a_plugin_error_naming_it() -> None:
    class Impostor:
        @unified.hookimpl
        def unified_register_backends(self, register):
            register(unified.BackendSpec(name="rknn", description="x", io="float", input_dtype="float32",
                                         output_dtype="float32", input_layout="NCHW", load_artifact=lambda b, m: None))

    with pytest.raises(unified.PluginError, match="plugin 'impostor': registers backend 'rknn'"):
        plugins.register_plugin(Impostor(), name="impostor")
    assert plugins.get_backend("rknn").plugin == "unified.backends.rknn.plugin"
    assert plugins.pm.get_plugin("impostor") is None


def test_specs_are_collected_once_per_plugin_load(monkeypatch) -> None:
    calls = []

    class Counting:
        @unified.hookimpl
        def unified_register_backends(self, register):
            calls.append(1)
            register(unified.BackendSpec(name="counted", description="x", io="float", input_dtype="float32",
                                         output_dtype="float32", input_layout="NCHW", load_artifact=lambda b, m: None))

    plugin = Counting()
    plugins.register_plugin(plugin, name="counting")
    try:
        for _ in range(5):
            plugins.get_backend("counted")
            unified.backends()
        assert len(calls) == 1
    finally:
        plugins.unregister_plugin(plugin)
    assert "counted" not in plugins.backend_specs()


def test_backends_is_both_the_package_and_the_call() -> None:
    import unified.backends.ort.plugin  # noqa: F401  (importing a subpackage must not shadow the call)

    assert [b.name for b in unified.backends()][:3] == ["ort", "rknn", "tengine"]
    assert unified.backends.ort.plugin.NAME == "ort"
