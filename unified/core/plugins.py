"""The one plugin manager: built-in backends, entry-point plugins, and the backend registry.

Built-in backends are registered exactly as a third-party plugin would be; the tuple below is the
only place `core` names a backend module. Third-party plugins come from the entry-point group
`unified`, loaded once and lazily. A plugin that fails to import is recorded by name in
`plugin_failures()` and never breaks the others.

Auto-loading of installed plugins is off when `UNIFIED_DISABLE_PLUGIN_AUTOLOAD` is set (the test
suite sets it, as llm and pytest do), so tests see only what they register.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
import pluggy

from unified.core import hookspecs
from unified.core.backend_spec import BackendSpec
from unified.core.errors import BackendNotFoundError

ENTRY_POINT_GROUP = "unified"
AUTOLOAD_OFF_ENV = "UNIFIED_DISABLE_PLUGIN_AUTOLOAD"

#: The built-in backends, each a plugin module like any third-party one.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "unified.backends.ort.plugin",
    "unified.backends.rknn.plugin",
    "unified.backends.tengine.plugin",
)

pm = pluggy.PluginManager("unified")
pm.add_hookspecs(hookspecs)

_lock = threading.RLock()
_loaded = False
_failures: dict[str, str] = {}


def _load_builtins() -> None:
    for module_name in DEFAULT_PLUGINS:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a broken built-in is reported like any plugin
            _failures[module_name] = f"{type(exc).__name__}: {exc}"
            continue
        if not pm.is_registered(module):
            pm.register(module, name=module_name)


def _load_entry_points() -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:
            _failures[ep.name] = f"{type(exc).__name__}: {exc}"


def ensure_loaded() -> pluggy.PluginManager:
    """Load built-ins and (unless switched off) entry-point plugins, once."""
    global _loaded
    if _loaded:  # every run() goes through here: skip the lock once loaded
        return pm
    with _lock:
        if not _loaded:
            _load_builtins()
            if not os.environ.get(AUTOLOAD_OFF_ENV):
                _load_entry_points()
            _loaded = True
    return pm


def reload_plugins() -> None:
    """Forget entry-point state and load again (tests and long-running services use this)."""
    global _loaded
    with _lock:
        for name, plugin in list(pm.list_name_plugin()):
            if name not in DEFAULT_PLUGINS:
                pm.unregister(plugin)
        _failures.clear()
        _loaded = False
    ensure_loaded()


def plugin_failures() -> dict[str, str]:
    """Plugins that failed to load: {plugin name: error}."""
    ensure_loaded()
    return dict(_failures)


def backend_specs() -> dict[str, BackendSpec]:
    """Every registered backend by name, in registration order."""
    manager = ensure_loaded()
    specs: dict[str, BackendSpec] = {}
    for impl in manager.hook.unified_register_backends.get_hookimpls():
        def register(spec: BackendSpec, _plugin_name: str = impl.plugin_name) -> None:
            if spec.name in specs:
                raise ValueError(f"backend {spec.name!r} registered twice (again by {_plugin_name})")
            specs[spec.name] = _with_plugin(spec, _plugin_name)
        impl.function(register=register)
    return specs


def _with_plugin(spec: BackendSpec, plugin_name: str) -> BackendSpec:
    from dataclasses import replace

    return spec if spec.plugin else replace(spec, plugin=plugin_name)


def get_backend(name: str) -> BackendSpec:
    """The spec of backend `name`, or a `BackendNotFoundError` listing what is installed."""
    specs = backend_specs()
    if name not in specs:
        installed = ", ".join(sorted(specs)) or "none"
        hint = ""
        failures = plugin_failures()
        if failures:
            hint = "; plugins that failed to load: " + ", ".join(f"{k} ({v})" for k, v in failures.items())
        raise BackendNotFoundError(f"unknown backend {name!r}; installed backends: {installed}{hint}")
    return specs[name]


def register_plugin(plugin: object, name: str | None = None) -> str | None:
    """Register a plugin object by hand (tests, notebooks); returns its name."""
    ensure_loaded()
    return pm.register(plugin, name=name)


def unregister_plugin(plugin: object) -> None:
    pm.unregister(plugin)


