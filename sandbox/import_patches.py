"""Patching modules as tenant code imports them (or at once, if already imported).

Two parts of the runtime adjust standard or third-party modules for the jail:
:mod:`sandbox.unavailable` (clear errors for processes, threads, sockets) and
:mod:`sandbox.http_shims` (HTTP clients that go through the brokered fetch).
Both register ``{module name: patch}`` here; a module not imported yet is
patched right after its real loader ran, wherever it is imported from.
"""

from __future__ import annotations

import importlib.abc
import sys
import types
from collections.abc import Callable
from typing import Any

Patch = Callable[[types.ModuleType], None]


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then the module's patch."""

    def __init__(self, loader: Any, patch: Patch) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__loader__ = self._loader
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds a patched module with the other finders, and wraps its loader."""

    def __init__(self, pending: dict[str, Patch]) -> None:
        self._pending = pending

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        patch = self._pending.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None


def install(patches: dict[str, Patch]) -> None:
    """Patch what is imported, hook what is not."""
    pending = {}
    for name, patch in patches.items():
        module = sys.modules.get(name)
        if module is not None:
            patch(module)
        else:
            pending[name] = patch
    if pending:
        sys.meta_path.insert(0, _PatchOnImport(pending))
