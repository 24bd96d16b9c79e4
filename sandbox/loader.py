"""Importing a tenant script from its bundle directory, with Python's own import system.

The supervisor writes each script version's files to a directory of their
own (``<state_dir>/bundles/<name>/``, the name a keyed hash of the version),
which the child sees read-only.
The main module's folder is the import root (``main = "src/entry.py"`` makes
``src/`` the root, as in Cloudflare's Python Workers) and goes first on
``sys.path``; from there on, imports are CPython's: modules have a real
``__file__``, data files next to them can be opened, ``importlib.resources``
and ``importlib.metadata`` (a ``*.dist-info`` in the bundle) work. When the
supervisor sends the main module's compiled code and its folder's names
(:class:`~protocol.messages.MainCode`), those are used instead of reading
the same bytes from disk, where a cold page cache made cold starts wait.

There is no import guard: any standard-library module may be imported. What
cannot work in the jail fails when used (:mod:`sandbox.unavailable`), and
the boundary is the jail (namespaces, Landlock, seccomp), not the import system.
"""

from __future__ import annotations

import _imp
import importlib
import importlib.machinery
import importlib.util
import marshal
import os
import posixpath
import sys
import types

from protocol.messages import PYC_HEADER, MainCode

from . import logs

#: Names the runtime provides; a bundle may not shadow them.
RESERVED = ("workers", "js", "pyodide")


class ScriptLoadError(Exception):
    """The script cannot run: syntax error, import error, no handler."""


def _main_name(main_module: str) -> tuple[str, str]:
    """``(import root relative to the bundle, dotted name of the main module)``."""
    clean = main_module.strip("/")
    if not clean.endswith(".py"):
        raise ScriptLoadError(f"main module {main_module!r} must be a .py file")
    root = posixpath.dirname(clean)
    name = posixpath.basename(clean)[:-3]
    if not name.isidentifier():
        raise ScriptLoadError(f"main module {main_module!r} is not an importable module name")
    return root, name


def load(bundle_dir: str, main_module: str, package_dirs: list[str] | tuple[str, ...] = (),
         main_code: MainCode | None = None) -> types.ModuleType:
    """Import the script's main module from ``bundle_dir``; returns it or raises ScriptLoadError.

    ``package_dirs`` (one package-store entry per wheel of the script's set)
    go on ``sys.path`` after the standard library, as site-packages would;
    a package zygote's children have them already. ``main_code``: what the
    bundle holds for the main module, already read by the supervisor.
    """
    root, name = _main_name(main_module)
    import_root = os.path.join(bundle_dir, root) if root else bundle_dir
    if main_code is not None:
        entries = main_code.root_entries
    else:
        try:
            entries = os.listdir(import_root)
        except OSError as exc:
            raise ScriptLoadError(f"the script's bundle cannot be read: {exc}") from exc
    if f"{name}.py" not in entries:
        raise ScriptLoadError(f"main module {main_module!r} is not in the script's bundle")
    clashes = sorted(r for r in RESERVED if r in entries or f"{r}.py" in entries)
    if clashes:
        raise ScriptLoadError(f"module name {clashes[0]!r} is reserved by the runtime")
    sys.path.insert(0, import_root)
    for directory in package_dirs:
        if directory not in sys.path:
            sys.path.append(directory)
    if "asgi.py" in entries or "asgi" in entries:
        # The runtime's top-level ``asgi`` alias yields to a module of the bundle's own.
        sys.modules.pop("asgi", None)
    if name in sys.modules:
        raise ScriptLoadError(f"main module {main_module!r} has the name of a module the runtime "
                              f"already imported ({name!r}): rename it")
    # The main module's spec straight from its file, not by asking every
    # finder on sys.meta_path and sys.path: the same module, and ~40 fewer
    # of the zygote's pages copied into the child (measured). Its siblings
    # are imported the usual way, from the import root first on sys.path.
    spec, module = _main_module(name, os.path.join(import_root, f"{name}.py"))
    sys.modules[name] = module
    try:
        if not _exec_precompiled(spec, module, main_code.pyc if main_code is not None else None):
            spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - any failure is the script's
        sys.modules.pop(name, None)
        raise ScriptLoadError(f"{type(exc).__name__}: {logs.exception_text(exc)}") from exc
    return module


def _main_module(name: str, path: str) -> tuple[importlib.machinery.ModuleSpec, types.ModuleType]:
    """The spec and (empty) module ``spec_from_file_location`` and
    ``module_from_spec`` make for a top-level ``.py`` file, built directly:
    without their search of the supported loaders, ``cache_from_source``'s
    path work and ``_init_module_attrs``: a cold start's load 580-690 ->
    410-470 us and ~15 fewer of the zygote's pages copied (medians over
    forked children, 3 interleaved runs)."""
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.machinery.ModuleSpec(name, loader, origin=path)
    spec.has_location = True
    head, tail = os.path.split(path)
    spec.cached = (os.path.join(head, "__pycache__", f"{tail[:-3]}.{sys.implementation.cache_tag}.pyc")
                   if sys.pycache_prefix is None and sys.implementation.cache_tag
                   else importlib.util.cache_from_source(path))
    module = types.ModuleType(name)
    module.__spec__ = spec
    module.__loader__ = loader
    module.__package__ = ""
    module.__file__ = path
    module.__cached__ = spec.cached
    return spec, module


def _exec_precompiled(spec: importlib.machinery.ModuleSpec, module: types.ModuleType,
                      data: bytes | None) -> bool:
    """Run the main module's precompiled code (``data``, else its bundle's
    file), if there is one; False: there is not (or not as the supervisor
    writes it), and the import system runs the module instead.

    What ``exec_module`` does for such a pyc, without the import system's
    Python around it (path stats, header checks, frames removed): a cold
    start's load 490 -> 435 us and ~15 fewer of the zygote's pages copied
    (medians over forked children, measured).
    """
    if spec.cached is None or spec.origin is None:
        return False
    if data is None:
        try:
            with open(spec.cached, "rb") as f:
                data = f.read()
        except OSError:
            return False
    if len(data) < 16 or data[:8] != PYC_HEADER:
        return False
    code = marshal.loads(memoryview(data)[16:])
    _imp._fix_co_filename(code, spec.origin)  # as importlib does: tracebacks name the file
    exec(code, module.__dict__)  # noqa: S102 - the tenant's own module, in its jail
    return True


def unload(bundle_dir: str, main_module: str) -> None:
    """Forget a script loaded by :func:`load` (the runtime's own rehearsals only)."""
    root, name = _main_name(main_module)
    import_root = os.path.join(bundle_dir, root) if root else bundle_dir
    while import_root in sys.path:
        sys.path.remove(import_root)
    sys.path_importer_cache.pop(import_root, None)
    sys.modules.pop(name, None)
