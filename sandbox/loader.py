"""Loading a tenant script from memory, behind an import guard.

The jail has no file system, so a script's modules arrive in the ``Load``
message and are imported from that dictionary by a meta-path finder. The
main module's folder is the import root (``main = "src/entry.py"`` makes
``src/`` the root, as in Cloudflare's Python Workers).

Tenant modules get their own ``__builtins__`` whose ``__import__`` refuses
modules outside the allowlist with an ImportError that names the module:
a clear message instead of a confusing failure deep inside importlib.
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import posixpath
import sys
import types
from typing import Any

from . import allowlist


class ScriptLoadError(Exception):
    """The script cannot run: syntax error, import error, no handler."""


def module_names(modules: dict[str, bytes], main_module: str) -> dict[str, tuple[str, bool]]:
    """Map dotted module names to (file path, is_package) below the import root."""
    root = posixpath.dirname(main_module.strip("/"))
    names: dict[str, tuple[str, bool]] = {}
    for path in modules:
        clean = path.strip("/")
        if not clean.endswith(".py"):
            continue
        if root:
            if not clean.startswith(root + "/"):
                continue
            clean = clean[len(root) + 1 :]
        parts = clean[:-3].split("/")
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        if parts and all(part.isidentifier() for part in parts):
            names[".".join(parts)] = (path, is_package)
    # Folders without __init__.py are namespace packages of the script.
    for name in list(names):
        parts = name.split(".")
        for i in range(1, len(parts)):
            names.setdefault(".".join(parts[:i]), ("", True))
    return names


class _TenantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and executes the script's own modules from memory."""

    def __init__(self, modules: dict[str, bytes], names: dict[str, tuple[str, bool]],
                 tenant_builtins: dict[str, Any]) -> None:
        self._modules = modules
        self._names = names
        self._builtins = tenant_builtins

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        entry = self._names.get(fullname)
        if entry is None:
            return None
        file_path, is_package = entry
        spec = importlib.machinery.ModuleSpec(
            fullname, self, origin=f"corral:{file_path}" if file_path else None,
            is_package=is_package,
        )
        if is_package:
            spec.submodule_search_locations = []
        spec.has_location = bool(file_path)
        return spec

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        file_path, _ = self._names[module.__name__]
        module.__dict__["__builtins__"] = self._builtins
        if not file_path:
            return  # namespace package
        module.__file__ = file_path
        code = compile(self._modules[file_path], file_path, "exec", dont_inherit=True)
        exec(code, module.__dict__)


def _guarded_import(tenant_tops: frozenset[str]) -> Any:
    real_import = builtins.__import__
    allowed = allowlist.ALLOWED_TOP_LEVEL | tenant_tops

    def __import__(name: str, globals: Any = None, locals: Any = None,  # noqa: A002, N807
                   fromlist: Any = (), level: int = 0) -> Any:
        if level == 0 and name.partition(".")[0] not in allowed:
            raise ImportError(
                f"import of '{name}' is not allowed in a Corral worker: only the script's own "
                "modules and the sandbox's standard-library modules (json, re, datetime, "
                "hashlib, asyncio, ...) can be imported",
                name=name,
            )
        try:
            return real_import(name, globals, locals, fromlist, level)
        except ModuleNotFoundError as exc:
            if level == 0 and exc.name and exc.name.partition(".")[0] not in tenant_tops:
                raise ImportError(
                    f"module '{exc.name}' is not available in the Corral sandbox", name=exc.name
                ) from None
            raise

    return __import__


def load(modules: dict[str, bytes], main_module: str, script_id: str) -> types.ModuleType:
    """Import the script's main module; returns it or raises ScriptLoadError."""
    names = module_names(modules, main_module)
    root = posixpath.dirname(main_module.strip("/"))
    main_rel = main_module.strip("/")[len(root) + 1 if root else 0 : -3].replace("/", ".")
    if not main_module.endswith(".py") or main_rel not in names:
        raise ScriptLoadError(f"main module {main_module!r} is not among the uploaded .py modules")
    tenant_tops = frozenset(name.partition(".")[0] for name in names)
    clashes = sorted(t for t in tenant_tops if t in ("workers", "js", "pyodide"))
    if clashes:
        raise ScriptLoadError(f"module name {clashes[0]!r} is reserved by the runtime")
    tenant_builtins = dict(builtins.__dict__)
    tenant_builtins["__import__"] = _guarded_import(tenant_tops)
    finder = _TenantFinder(modules, names, tenant_builtins)
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(main_rel)
    except ScriptLoadError:
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure is the script's
        raise ScriptLoadError(f"{type(exc).__name__}: {exc}") from exc
