"""Installs the module names tenant code imports from the runtime.

``workers`` is the SDK (:mod:`sandbox.workers`) with ``workers.asgi`` and
``workers.wsgi``, plus the top-level ``asgi`` some projects import; ``js``
and ``pyodide`` are the JavaScript-flavoured companions Cloudflare's Python
Workers reach through Pyodide (:mod:`sandbox.js_shim`,
:mod:`sandbox.pyodide_shim`), so that code written for Cloudflare imports
here unchanged. ``requests``, ``urllib3``, ``httpx`` and ``anyio`` get
patched when a tenant imports them (:mod:`sandbox.http_shims`).
"""

from __future__ import annotations

import sys

from . import (
    http_shims,
    js_shim,
    pyodide_shim,
    thread_shims,
    unavailable,
    workers,
    workers_asgi,
    workers_wsgi,
)
from .bindings.cache import caches


def install() -> None:
    pyodide_shim.install()
    sys.modules["workers"] = workers
    workers.asgi = workers_asgi  # type: ignore[attr-defined]
    workers.wsgi = workers_wsgi  # type: ignore[attr-defined]
    sys.modules["workers.asgi"] = workers_asgi
    sys.modules["workers.wsgi"] = workers_wsgi
    sys.modules["asgi"] = workers_asgi
    js_shim.install()
    sys.modules["js"].caches = caches  # type: ignore[attr-defined]  # the Cache API's global
    http_shims.install()
    thread_shims.install()
    unavailable.install()  # inactive until a child's Load (see there)
