"""Warming a package zygote past its top-level imports, with the runtime's own code only.

Importing a set's top-level modules is not all a framework does before its
first response: FastAPI imports ``pydantic.v1`` on its first route, reads the
endpoint's source with :mod:`inspect` (compiling :mod:`tokenize`'s regular
expressions), builds pydantic-core schemas and serializers; Django imports
most of ``django.db.models`` and ``django.core`` when an app is set up. Done
in a child, that is ~20-100 ms of private work per cold start; done here,
once, before ``gc.freeze()``, it is shared copy-on-write by every child.

Two steps, both bounded and reported:

* :func:`import_submodules` walks the set's packages (shallow modules first)
  and imports what imports cleanly, skipping tests, plugins for other tools
  and optional integrations (``contrib``, ``migrations``...);
* :func:`rehearse` serves one request through a tiny app *of this module*
  (never a tenant's) for each framework of the set, via ``workers.asgi`` /
  ``workers.wsgi``, entirely in memory.

The process's global state that imports may touch (``sys.path``,
``os.environ``, warning filters, logging, signal handlers, the asyncio
policy...) is restored afterwards, so a child starts as it would without
the warm-up. (No ``from __future__ import annotations`` here: the
rehearsal apps' models are local classes that FastAPI must resolve.)
Django is *not* set up here: ``settings.configure()`` and
``django.setup()`` succeed once per process, and the tenant's are the ones
that must.
"""

import asyncio
import gc
import importlib
import importlib.metadata
import logging
import os
import pkgutil
import signal
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from . import metadata_memo

#: Package path parts never imported by the walk: tests, docs, other tools'
#: plugins, and optional integrations a typical app does not touch.
SKIP_PARTS = frozenset({
    "test", "tests", "testing", "conftest", "__main__", "docs", "examples", "benchmarks",
    "pytest_plugin", "mypy", "_hypothesis_plugin", "hypothesis", "contrib", "migrations",
    "locale", "gis", "oracle", "mysql", "postgresql",
})
#: Wall-clock bound of the walk per set; what is left is the tenant's to import.
WALK_BUDGET_S = 2.0


def _candidates(tops: list[str]) -> list[str]:
    """Submodule names of the already-imported packages ``tops``, shallowest first."""
    names: list[str] = []
    for top in tops:
        module = sys.modules.get(top)
        path = getattr(module, "__path__", None)
        if path is None:
            continue
        for info in pkgutil.walk_packages(path, top + ".", onerror=lambda _name: None):
            if not SKIP_PARTS.intersection(info.name.split(".")):
                names.append(info.name)
    return sorted(names, key=lambda n: n.count("."))


def import_submodules(tops: list[str], budget_s: float = WALK_BUDGET_S) -> dict:
    """Import the submodules of ``tops`` that import cleanly, within ``budget_s``."""
    started = time.perf_counter()
    imported = failed = 0
    names = _candidates(tops)
    for name in names:
        if time.perf_counter() - started > budget_s:
            break
        if name in sys.modules:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(name)
            imported += 1
        except BaseException:  # noqa: BLE001 - an optional dependency missing: the tenant's business
            failed += 1
    return {"walked": len(names), "imported": imported, "failed": failed,
            "seconds": round(time.perf_counter() - started, 3)}


def read_metadata(package_dirs: list[str]) -> int:
    """Read every distribution's metadata once: ``importlib.metadata``'s
    directory lookups are cached per path, and the e-mail parser it uses is
    warmed, for tenants that ask for a version; the parsed messages stay in
    :mod:`sandbox.metadata_memo`, shared by every child."""
    metadata_memo.install()
    count = 0
    for dist in importlib.metadata.distributions(path=list(package_dirs)):
        importlib.metadata.version(dist.metadata["Name"])
        count += 1
    return count


# ---------------------------------------------------------------------------
# rehearsals: one request through a synthetic app per framework
# ---------------------------------------------------------------------------


def _fastapi_app() -> Any:
    import pydantic
    from fastapi import FastAPI

    app = FastAPI()

    class Item(pydantic.BaseModel):
        name: str
        price: float = 0.0
        tags: list[str] = []

    @app.post("/items")
    async def create(item: Item) -> dict:
        return {"name": item.name, "total": item.price * 2}

    @app.get("/items/{item_id}")
    def read(item_id: int, q: str | None = None) -> Item:
        return Item(name=q or str(item_id))

    return app


def _starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Any) -> Any:
        return JSONResponse({"hello": request.path_params["name"]})

    async def plain(request: Any) -> Any:
        return PlainTextResponse(await request.body())

    return Starlette(routes=[Route("/items/{name}", hello), Route("/items", plain, methods=["POST"])])


def _flask_app() -> Any:
    from flask import Flask, jsonify, render_template_string, request

    app = Flask("corral_rehearsal")

    @app.get("/items/<name>")
    def read(name: str) -> Any:
        return render_template_string("<b>{{ name }}</b>", name=name)

    @app.post("/items")
    def create() -> Any:
        return jsonify(request.get_json(silent=True) or {})

    return app


#: Framework (a top-level module of the set) -> (app factory, ASGI or WSGI).
FRAMEWORKS: dict[str, tuple[Callable[[], Any], str]] = {
    "fastapi": (_fastapi_app, "asgi"),
    "starlette": (_starlette_app, "asgi"),
    "flask": (_flask_app, "wsgi"),
}


#: The rehearsal apps, alive as long as the process: frameworks keep caches
#: keyed by ``id()`` of an endpoint (FastAPI's endpoint context), and a
#: freed rehearsal function's id could otherwise be a tenant function's.
#: A spare appends the apps it builds itself (:func:`replay`).
_KEPT: list[tuple[Any, str]] = []
#: The frameworks whose rehearsal succeeded in this zygote: a spare builds
#: each again (:func:`replay`).
_REHEARSED: list[str] = []


async def _requests(app: Any, kind: str) -> list[int]:
    from . import workers, workers_asgi, workers_wsgi

    serve = workers_asgi.fetch if kind == "asgi" else workers_wsgi.fetch
    headers = {"content-type": "application/json", "host": "rehearsal.invalid"}
    statuses = []
    for method, path, body in (("POST", "/items", b'{"name": "tea", "price": 1.5}'),
                               ("POST", "/items", b'{"price": "x"}'),
                               ("GET", "/items/7?q=tea", None)):
        request = workers.Request(f"http://rehearsal.invalid{path}", method=method, headers=headers, body=body)
        response = await serve(app, request, None)
        await response.bytes()
        statuses.append(response.status)
    return statuses


def rehearse(modules: list[str]) -> dict:
    """Requests through a synthetic app per framework of the set; ``{framework: what or error}``."""
    done: dict[str, Any] = {}
    for name, (factory, kind) in FRAMEWORKS.items():
        if name not in modules:
            continue
        started = time.perf_counter()
        loop = asyncio.new_event_loop()
        try:
            app = factory()
            _KEPT.append((app, kind))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                statuses = loop.run_until_complete(asyncio.wait_for(_requests(app, kind), 5))
            done[name] = {"ms": round((time.perf_counter() - started) * 1000, 1), "statuses": statuses}
            _REHEARSED.append(name)
        except BaseException as exc:  # noqa: BLE001 - a rehearsal is an optimisation only
            done[name] = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            loop.close()
            asyncio.set_event_loop(None)
    return done


def replay() -> None:
    """In a spare, before any Load: build each rehearsed app again and serve
    its requests. A tenant's cold start is mostly copy-on-write page faults
    (~2,000 for a small FastAPI app here, ~3.5 us each), not Python work:
    constructing an app and its models writes the reference counts of the
    framework's functions, types and code, and allocates from the zygote's
    half-full memory pools. Doing the same kinds of work here, at the spare's
    low priority, copies those pages before a tenant needs them, so its own
    app construction and first request fault ~30 times instead of ~1,500.
    The apps built here stay alive (see ``_KEPT``). Scheduled on the child's
    running loop; a Load that arrives before it is done cancels it
    (:func:`give_way`)."""
    if _REHEARSED:
        _replays.add(asyncio.get_event_loop().create_task(_replay()))


_replays: set[asyncio.Task] = set()
#: A Load arrived: from then on the process's global state is the tenant's.
_loading = False


def give_way() -> None:
    """A script is being loaded into this spare: a replay still running is
    cancelled (it must not take CPU from the cold start) and will not put
    back the global state it saved (sys.path, sys.meta_path, logging...),
    which from now on is the tenant's."""
    global _loading
    _loading = True
    for task in _replays:
        task.cancel()


async def _replay() -> None:
    restore = _snapshot()
    try:
        for name in _REHEARSED:
            factory, kind = FRAMEWORKS[name]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                app = factory()
                _KEPT.append((app, kind))
                await _requests(app, kind)
    except BaseException:  # noqa: BLE001 - an optimisation only
        pass
    finally:
        if not _loading:
            restore()
            gc.freeze()  # what it built is never walked by the tenant's collections
        _replays.clear()


# ---------------------------------------------------------------------------
# the whole warm-up, with the process's global state put back
# ---------------------------------------------------------------------------


def _snapshot() -> Callable[[], None]:
    """What imports may change of the process; returns a function restoring it."""
    saved_path, saved_meta, saved_hooks = list(sys.path), list(sys.meta_path), list(sys.path_hooks)
    saved_env, saved_filters = dict(os.environ), list(warnings.filters)
    saved_hooks_sys = (sys.stdout, sys.stderr, sys.excepthook, sys.displayhook)
    root = logging.getLogger()
    saved_logging = (list(root.handlers), root.level, logging.root.manager.disable)
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
    saved_policy = asyncio.get_event_loop_policy()

    def restore() -> None:
        sys.path[:], sys.meta_path[:], sys.path_hooks[:] = saved_path, saved_meta, saved_hooks
        os.environ.clear()
        os.environ.update(saved_env)
        warnings.filters[:] = saved_filters
        sys.stdout, sys.stderr, sys.excepthook, sys.displayhook = saved_hooks_sys
        root.handlers[:], root.level = saved_logging[0], saved_logging[1]
        logging.disable(saved_logging[2])
        for sig, handler in saved_signals.items():
            if handler is not None:
                signal.signal(sig, handler)
        asyncio.set_event_loop_policy(saved_policy)

    return restore


def warm(modules: list[str], package_dirs: list[str]) -> dict:
    """Everything above for one set; returns what it did, for the zygote's report."""
    restore = _snapshot()
    report: dict[str, Any] = {}
    try:
        report["walk"] = import_submodules(modules)
        report["rehearsed"] = rehearse(modules)
        report["metadata"] = read_metadata(package_dirs)
    except BaseException as exc:  # noqa: BLE001 - warming is an optimisation only
        report["error"] = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        restore()
    return report

