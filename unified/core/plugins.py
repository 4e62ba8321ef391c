"""The one plugin manager: built-in backends, entry-point plugins, the backend registry, routing.

Built-in backends are registered exactly as a third-party plugin would be; `DEFAULT_PLUGINS` is the
only place `core` names a backend module. Third-party plugins come from the entry-point group
`unified`, loaded once and lazily.

Isolation: a plugin is *admitted* only whole. Anything that goes wrong while importing it (any
exception, `SystemExit` included; only KeyboardInterrupt passes), a hook name the contract does
not know (`unified_infere`), a registration hook that raises, or a backend name already taken
disables that plugin alone and is recorded by name in `plugin_failures()`; the others keep working.
Backend specs are collected once, when the plugin is admitted.

Routing: a per-backend call (`call(backend, hook, ...)`) reaches only the plugin that registered
that backend, plus every hook *wrapper* (profilers, the consistency harness), so no plugin can
answer for another's name. `firstresult` still applies within the owner.

Auto-loading of installed plugins is off when `UNIFIED_DISABLE_PLUGIN_AUTOLOAD` is set (the test
suite sets it, as llm and pytest do), so tests see only what they register.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
from dataclasses import replace
from typing import Any, Callable

import pluggy

from unified.core import hookspecs
from unified.core.backend_spec import BackendSpec
from unified.core.errors import BackendError, BackendNotFoundError, PluginError

ENTRY_POINT_GROUP = "unified"
AUTOLOAD_OFF_ENV = "UNIFIED_DISABLE_PLUGIN_AUTOLOAD"
HOOK_PREFIX = "unified_"

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
_specs: dict[str, BackendSpec] = {}        # backend name -> spec, in registration order
_owners: dict[str, object] = {}            # backend name -> the plugin object that registered it
_routes: dict[tuple[str, str], Callable[..., Any]] = {}  # (hook, backend) -> routed caller


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- admission ---------------------------------------------------------------------------------

def _unknown_hooks(plugin: object) -> list[str]:
    """Hook implementations of `plugin` whose name is not in the contract (typos, stale names)."""
    unknown = []
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.spec is None:
            unknown.append(caller.name)
    return sorted(unknown)


def _collect_specs(plugin: object, plugin_name: str) -> list[BackendSpec]:
    """Run `plugin`'s own registration hook (only its own) and return what it declared."""
    declared: list[BackendSpec] = []

    def register(spec: BackendSpec) -> None:
        if not isinstance(spec, BackendSpec):
            raise TypeError(f"register() takes a unified.BackendSpec, got {type(spec).__name__}")
        declared.append(spec if spec.plugin else replace(spec, plugin=plugin_name))

    for impl in pm.hook.unified_register_backends.get_hookimpls():
        if impl.plugin is plugin:
            impl.function(register=register)
    return declared


def _admit(plugin: object, name: str) -> str | None:
    """Register `plugin` and its backends, or leave no trace of it; returns the failure, if any."""
    try:
        pm.register(plugin, name=name)
    except BaseException as exc:  # noqa: BLE001 - a plugin must not end the process
        if isinstance(exc, KeyboardInterrupt):
            raise
        return f"cannot register: {_describe(exc)}"
    try:
        unknown = _unknown_hooks(plugin)
        if unknown:
            raise PluginError(f"implements hooks the contract does not define: {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(h for h in dir(hookspecs) if h.startswith(HOOK_PREFIX)))})")
        declared = _collect_specs(plugin, name)
        names = [s.name for s in declared]
        for backend in names:
            if backend in _specs:
                raise PluginError(f"registers backend {backend!r}, already registered by {_specs[backend].plugin}")
            if names.count(backend) > 1:
                raise PluginError(f"registers backend {backend!r} twice")
    except BaseException as exc:  # noqa: BLE001
        pm.unregister(plugin)
        if isinstance(exc, KeyboardInterrupt):
            raise
        return _describe(exc) if not isinstance(exc, PluginError) else str(exc)
    for spec in declared:
        _specs[spec.name] = spec
        _owners[spec.name] = plugin
    _routes.clear()
    return None


def _import(loader: Callable[[], object], name: str) -> object | None:
    try:
        return loader()
    except BaseException as exc:  # noqa: BLE001 - SystemExit at import must not end every API call
        if isinstance(exc, KeyboardInterrupt):
            raise
        _failures[name] = f"import failed: {_describe(exc)}"
        return None


def _load_builtins() -> None:
    for module_name in DEFAULT_PLUGINS:
        if pm.get_plugin(module_name) is not None:
            continue
        module = _import(lambda m=module_name: importlib.import_module(m), module_name)
        if module is not None:
            failure = _admit(module, module_name)
            if failure:
                _failures[module_name] = failure


def _load_entry_points() -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name) or ep.name in _failures:
            continue
        plugin = _import(ep.load, ep.name)
        if plugin is not None:
            failure = _admit(plugin, ep.name)
            if failure:
                _failures[ep.name] = failure


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
            if name not in DEFAULT_PLUGINS and plugin is not None:
                _forget(plugin)
        _failures.clear()
        _loaded = False
    ensure_loaded()


def _forget(plugin: object) -> None:
    pm.unregister(plugin)
    for backend in [b for b, owner in _owners.items() if owner is plugin]:
        del _owners[backend], _specs[backend]
    _routes.clear()


def plugin_failures() -> dict[str, str]:
    """Plugins that were disabled: {plugin name: why}."""
    ensure_loaded()
    return dict(_failures)


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object by hand (tests, notebooks); returns its name.

    Raises `PluginError` naming the plugin and the reason when it cannot be admitted.
    """
    ensure_loaded()
    name = name or pm.get_canonical_name(plugin)
    with _lock:
        failure = _admit(plugin, name)
    if failure:
        raise PluginError(f"plugin {name!r}: {failure}")
    return name


def unregister_plugin(plugin: object) -> None:
    with _lock:
        _forget(plugin)


# -- the registry ------------------------------------------------------------------------------

def backend_specs() -> dict[str, BackendSpec]:
    """Every registered backend by name, in registration order (collected once per plugin load)."""
    ensure_loaded()
    return dict(_specs)


def get_backend(name: str) -> BackendSpec:
    """The spec of backend `name`, or a `BackendNotFoundError` listing what is installed."""
    ensure_loaded()
    spec = _specs.get(name)
    if spec is None:
        installed = ", ".join(sorted(_specs)) or "none"
        hint = ""
        if _failures:
            hint = "; plugins that failed to load: " + ", ".join(f"{k} ({v})" for k, v in _failures.items())
        raise BackendNotFoundError(f"unknown backend {name!r}; installed backends: {installed}{hint}")
    return spec


# -- routing -----------------------------------------------------------------------------------

def _route(hook_name: str, backend: str) -> Callable[..., Any]:
    """The hook caller for `backend`: its owner's implementations plus every wrapper."""
    key = (hook_name, backend)
    caller = _routes.get(key)
    if caller is None:
        with _lock:
            get_backend(backend)
            owner = _owners[backend]
            others = set()
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                if impl.plugin is not owner and not (impl.wrapper or impl.hookwrapper):
                    others.add(impl.plugin)
            caller = pm.subset_hook_caller(hook_name, remove_plugins=others)
            _routes[key] = caller
    return caller


def call(backend: str, hook_name: str, **kwargs: Any) -> Any:
    """Call a per-backend hook for `backend` only; `BackendError` if its owner does not answer."""
    ensure_loaded()
    result = _route(hook_name, backend)(backend=backend, **kwargs)
    if result is None:
        raise BackendError(f"backend {backend!r} ({get_backend(backend).plugin}) did not answer {hook_name}")
    return result


def call_optional(backend: str, hook_name: str, **kwargs: Any) -> Any:
    """Like `call`, for optional hooks: None when the backend does not implement it."""
    ensure_loaded()
    return _route(hook_name, backend)(backend=backend, **kwargs)
