"""``pyodide.ffi.run_sync``: synchronous code awaits, suspending only its own invocation.

On Cloudflare, JSPI lets a synchronous Python frame wait for a promise. Here
every invocation's handler runs inside a greenlet of its own (the pattern of
SQLAlchemy's ``await_only`` and greenback): the asyncio task steps the
handler's coroutine inside that greenlet, and :func:`run_sync` switches back
to the task with the awaitable it wants. The task awaits it like any other
await (other invocations keep running on the loop), then switches back into
the greenlet with the result. A nested event loop would block every other
request the child serves; this does not.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import greenlet

_T = TypeVar("_T")

_SEND, _THROW = 0, 1


class _Portal(greenlet.greenlet):
    """The greenlet a handler's coroutine is stepped in; marks where run_sync may switch."""


def _step_loop(coro: Coroutine[Any, Any, Any], op: int, arg: Any) -> tuple[str, Any]:
    """Inside the portal: step ``coro`` until it ends; each suspension goes to the task."""
    while True:
        try:
            yielded = coro.send(arg) if op == _SEND else coro.throw(arg)
        except StopIteration as stop:
            return ("done", stop.value)
        except BaseException as exc:  # noqa: BLE001 - handed to the task as is
            return ("error", exc)
        op, arg = greenlet.getcurrent().parent.switch(("yield", yielded))


class _Suspend:
    """Yields one value of the inner coroutine to the event loop, returns what it sends back."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        return (yield self.value)


#: Portals waiting for their next handler. A greenlet that runs to its end
#: costs ~8 us to start and tear down here (greenlet 3), a switch into a
#: waiting one ~0.5 us: per invocation, that was a quarter of a warm
#: request's CPU in the child.
_idle: list[_Portal] = []
#: Portals kept waiting at most (one per invocation running at once is plenty).
MAX_IDLE_PORTALS = 32


def _serve_portal(job: tuple[Coroutine[Any, Any, Any], int, Any]) -> None:
    """A pooled portal's life: step one handler to its end, hand back the
    outcome, wait for the next (it never returns)."""
    while True:
        outcome = _step_loop(*job)
        job = greenlet.getcurrent().parent.switch(outcome)


async def run_in_portal(coro: Coroutine[Any, Any, _T]) -> _T:
    """Await ``coro`` with :func:`run_sync` usable anywhere below it."""
    portal = _idle.pop() if _idle else _Portal(_serve_portal)
    portal.parent = greenlet.getcurrent()  # this task's greenlet (a portal when nested)
    # The greenlet sees the task's context variables (the current invocation).
    portal.gr_context = contextvars.copy_context()
    message = portal.switch((coro, _SEND, None))
    while True:
        kind, payload = message
        if kind == "done" or kind == "error":
            if len(_idle) < MAX_IDLE_PORTALS:
                _idle.append(portal)
            if kind == "error":
                raise payload
            return payload
        try:
            if kind == "yield":
                result = await _Suspend(payload)
            else:  # "await": run_sync below wants this awaited
                result = await payload
            op = _SEND
        except BaseException as exc:  # noqa: BLE001 - goes back to where it was awaited
            op, result = _THROW, exc
        message = portal.switch(op, result)


def in_portal() -> bool:
    """True where :func:`run_sync` can suspend (inside a handler's invocation)."""
    current = greenlet.getcurrent()
    while current is not None:
        if isinstance(current, _Portal):
            return True
        current = current.parent
    return False


def run_sync(awaitable: Awaitable[_T]) -> _T:
    """Wait for ``awaitable`` from synchronous code; only this invocation waits."""
    current = greenlet.getcurrent()
    if not isinstance(current, _Portal):
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()  # no "never awaited" warning on top of the real error
        raise RuntimeError(
            "run_sync() can only be used while a handler runs (fetch, scheduled, queue, ...): "
            "it is not available at import time or outside the worker's own invocations")
    op, value = current.parent.switch(("await", awaitable))
    if op == _THROW:
        raise value
    return value
