"""Installs the module names tenant code imports from the runtime.

``workers`` is the SDK (:mod:`sandbox.workers`); ``js`` and ``pyodide`` are
thin stand-ins for the names Cloudflare's Python Workers reach through
Pyodide (``from js import console``, ``Response``, ``fetch``), so that code
written for Cloudflare imports here too.
"""

from __future__ import annotations

import json
import sys
import types

from . import logs, pyodide_ffi, workers
from .bindings.cache import caches


def _make_js() -> types.ModuleType:
    js = types.ModuleType("js", "JavaScript globals, as far as Corral provides them")
    js.console = logs.console  # type: ignore[attr-defined]
    js.Response = workers.Response  # type: ignore[attr-defined]
    js.Request = workers.Request  # type: ignore[attr-defined]
    js.Headers = workers.Headers  # type: ignore[attr-defined]
    js.fetch = workers.fetch  # type: ignore[attr-defined]
    js.JSON = types.SimpleNamespace(stringify=json.dumps, parse=json.loads)  # type: ignore[attr-defined]
    js.Object = types.SimpleNamespace(fromEntries=dict)  # type: ignore[attr-defined]
    js.caches = caches  # type: ignore[attr-defined]
    return js


def _make_pyodide() -> types.ModuleType:
    pyodide = types.ModuleType("pyodide", "Pyodide stand-ins: values are already Python")
    ffi = pyodide_ffi
    pyodide.ffi = ffi  # type: ignore[attr-defined]
    sys.modules["pyodide.ffi"] = ffi
    return pyodide


def install() -> None:
    sys.modules["workers"] = workers
    sys.modules["js"] = _make_js()
    sys.modules["pyodide"] = _make_pyodide()
