"""The built-in backends, one folder each (ort/, rknn/, tengine/), each a plugin like any other.

`unified.backends` is both this package and the public call `unified.backends()`: the package
object itself is callable and lists every installed backend, built-in and third-party. Python binds
a subpackage as an attribute of its parent when it is first imported, so making the package the
callable (rather than shadowing it with a function) keeps both meanings whatever is imported first.
"""
from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unified.core.backend_spec import BackendSpec


class _BackendsPackage(types.ModuleType):
    def __call__(self) -> list[BackendSpec]:
        """Installed backends, built-in and third-party, with their I/O contracts."""
        from unified.core.api import backends

        return backends()


sys.modules[__name__].__class__ = _BackendsPackage
