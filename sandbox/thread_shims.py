"""Code that hands work to a thread, run inline: the jail starts no threads.

Cloudflare's Python Workers have no threads either (Pyodide), and their event
loop answers ``run_in_executor`` by calling the function at once; code written
for them relies on it, Django's async handler first of all (``asgiref``'s
``sync_to_async`` runs every sync view and middleware through it). Corral does
the same in the child's event loop (:class:`sandbox.child.ChildLoop`), and, as
the SDK does for ``anyio.to_thread`` (:mod:`sandbox.http_shims`), it adjusts the
one place ``asgiref`` starts a thread of its own: a ``ThreadSensitiveContext``
joins its executor's worker from a helper thread on exit, and with every call
run inline there is no worker to join.
"""

from __future__ import annotations

import asyncio
import threading
import types
from collections.abc import Callable
from typing import Any

from . import import_patches

#: The environment a tenant's native libraries start with (the zygote clears
#: the host's): keep to the calling thread. A child can start none (its
#: RLIMIT_NPROC is 0 and its filter refuses clone), and OpenBLAS (numpy's)
#: starting its pool fails and ends the process at import; OpenMP, MKL and
#: rayon would fail at first use. Cloudflare's Pyodide builds of the same
#: packages are single-threaded too.
NATIVE_SINGLE_THREADED = {
    **{name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                              "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "RAYON_NUM_THREADS",
                              "POLARS_MAX_THREADS")},
    "TOKENIZERS_PARALLELISM": "false",
    # Django refuses its ORM where an event loop runs in the calling thread
    # (SynchronousOnlyOperation): here every sync view runs so, inline, with
    # no other thread to race it. django-cf sets the same on Cloudflare, where
    # the ORM fails alike without it; plain Django projects work unmodified.
    "DJANGO_ALLOW_ASYNC_UNSAFE": "true",
}


def run_inline(loop: asyncio.AbstractEventLoop, func: Callable[..., Any], *args: Any) -> asyncio.Future:
    """``loop.run_in_executor(executor, func, *args)`` without a thread: ``func``
    runs now, in the calling invocation (where ``run_sync`` works), and the
    future it returns is already done."""
    future = loop.create_future()
    try:
        future.set_result(func(*args))
    except BaseException as exc:  # noqa: BLE001 - delivered to whoever awaits it
        future.set_exception(exc)
    return future


class _InlineThread:
    """``threading.Thread`` for ``asgiref.sync``: ``start()`` runs the target."""

    def __init__(self, group: Any = None, target: Callable[..., Any] | None = None, name: Any = None,
                 args: tuple = (), kwargs: dict | None = None, *, daemon: Any = None) -> None:
        self._call = (target, args, kwargs or {})

    def start(self) -> None:
        target, args, kwargs = self._call
        if target is not None:
            target(*args, **kwargs)

    def join(self, timeout: float | None = None) -> None:
        pass


class _ThreadingForAsgiref(types.ModuleType):
    """``threading`` as ``asgiref.sync`` sees it: all of it, with the inline Thread."""

    Thread = _InlineThread

    def __getattr__(self, name: str) -> Any:
        return getattr(threading, name)


def patch_asgiref_sync(module: types.ModuleType) -> None:
    module.threading = _ThreadingForAsgiref("threading")  # type: ignore[attr-defined]


PATCHES = {"asgiref.sync": patch_asgiref_sync}


def install() -> None:
    import_patches.install(PATCHES)
