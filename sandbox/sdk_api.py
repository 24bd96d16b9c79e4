"""Module-level functions of Cloudflare's ``workers`` SDK that are not types:
``handler``, ``import_from_javascript``, ``patch_env``, ``waitUntil``.

Kept apart from :mod:`sandbox.workers` (the request/response types) so that
each stays readable; ``workers`` re-exports them.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from typing import Any


def _workers() -> Any:
    from . import workers
    return workers


def handler(func: Callable[..., Any]) -> Callable[..., Any]:
    """``@handler`` on ``on_fetch``: on Cloudflare it converts JS arguments; here they
    already are the SDK's Python objects, so the function is returned as it is."""
    return func


def wait_until(awaitable: Any) -> None:
    """``workers.wait_until(coro)``: keep work alive past the response of the
    invocation that is running (``ctx.waitUntil`` without the ctx)."""
    workers = _workers()
    inv = workers.current_invocation.get()
    if workers._runtime is None or inv == 0:
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()
        raise RuntimeError("waitUntil() can only be used while a handler runs")
    workers._runtime.wait_until(inv, awaitable)


waitUntil = wait_until  # noqa: N816 - Workers API name


def import_from_javascript(module_name: str) -> Any:
    """``cloudflare:workers`` gives ``env`` and ``waitUntil``; other JavaScript
    modules do not exist in Corral, and the error says which one was asked for."""
    if module_name == "cloudflare:workers":
        workers = _workers()
        module = types.SimpleNamespace(env=workers.env, waitUntil=wait_until, wait_until=wait_until,
                                       WorkerEntrypoint=workers.WorkerEntrypoint,
                                       DurableObject=workers.DurableObject,
                                       WorkflowEntrypoint=workers.WorkflowEntrypoint)
        return module
    raise ImportError(f"Failed to import {module_name!r}: Corral runs Python natively and has no "
                      "JavaScript modules; only 'cloudflare:workers' is available")


@contextlib.contextmanager
def patch_env(values: Any = None, **kwargs: Any) -> Iterator[None]:
    """Add or replace bindings of the importable ``env`` (``from workers
    import env``) for the code in this block and the tasks it starts, as
    the SDK's does (workerd keeps the patch in the caller's async context).
    It once changed the one env of the child: every request in flight saw
    another's patch, through its own ``self.env`` too, which it never
    touches."""
    workers = _workers()
    runtime = workers._runtime
    if runtime is None or runtime.env is None:
        raise RuntimeError("patch_env() needs a loaded worker")
    changes = {**(dict(values) if values else {}), **kwargs}
    token = workers.env_patch.set({**(workers.env_patch.get() or {}), **changes})
    try:
        yield
    finally:
        workers.env_patch.reset(token)


