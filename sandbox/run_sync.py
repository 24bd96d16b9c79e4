"""``pyodide.ffi.run_sync``: synchronous code awaits, suspending only its own invocation.

On Cloudflare, JSPI lets a synchronous Python frame wait for a promise. Here
the frame's whole C stack is set aside with greenlet (the pattern of gevent's
hub): the greenlet that runs the child's event loop is, at that moment, deep
inside the calling invocation's task step, so it stops driving the loop and
waits there, and a fresh greenlet takes the loop over (a *hop*). The
awaitable runs as a task of its own; when it is done, the greenlet driving
the loop by then switches back into the waiting one, which returns the result
to the synchronous code. When that invocation's step ends, its greenlet
hands the loop back to whichever greenlet drives it now and ends (or, for
the main greenlet, waits for the loop to stop). A nested event loop would
block every other request the child serves; this does not.

Greenlets are only switched when ``run_sync`` is called. Running every
handler in a greenlet of its own, in case it would call ``run_sync``, cost
two switches per invocation and four per await: measured over 300 tenants
round robin (every child's memory cold in the caches), ~35 us of a user
invocation's ~170 us and ~15 us of a dispatcher's ~60 us.

A task's steps run in whichever greenlet drives the loop at the time, so a
greenlet the worker's own code made (SQLAlchemy's ``greenlet_spawn``, say)
has, after another invocation's ``run_sync``, a parent that no longer drives;
``run_sync`` called from inside such a greenlet says so rather than switch
into it. Every handler in a portal of its own kept parents fixed, at the cost
above; no worker written for Cloudflare (no greenlet there) relies on it.

What the caller waits for is its own task: cancelling the invocation
(:func:`cancel_waits`, on the supervisor's ``Cancel``) cancels it, so the
synchronous code sees ``CancelledError`` at once. Only a loop that hops
(:class:`sandbox.child.ChildLoop`) can suspend a caller; elsewhere, and
outside any task (a module's top level at Load), ``run_sync`` says where it
may be used.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable
from typing import Any, TypeVar

import greenlet

_T = TypeVar("_T")

_enter_task = asyncio.tasks._enter_task  # noqa: SLF001 - asyncio's hook for task implementations
_leave_task = asyncio.tasks._leave_task  # noqa: SLF001


#: Per waiting task, the task it waits for (see :func:`cancel_waits`).
_waits: dict[asyncio.Task[Any], asyncio.Future[Any]] = {}


def can_suspend() -> bool:
    """True where :func:`run_sync` can suspend: inside a task step on a loop that hops."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    return hasattr(loop, "hop") and asyncio.current_task(loop) is not None


def run_sync(awaitable: Awaitable[_T]) -> _T:
    """Wait for ``awaitable`` from synchronous code; only this invocation waits."""
    if not can_suspend():
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()  # no "never awaited" warning on top of the real error
        raise RuntimeError(
            "run_sync() can only be used while a handler runs (fetch, scheduled, queue, ...): "
            "it is not available at import time or outside the worker's own invocations")
    loop: Any = asyncio.get_running_loop()  # a ChildLoop: hop, yield_driving, resume, driver
    task = asyncio.current_task(loop)
    assert task is not None
    me = greenlet.getcurrent()
    if me is not loop.driver and not loop.waited_before(me):
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()
        raise RuntimeError(
            "run_sync() was called from a greenlet the worker's code started itself: it can "
            "only wait in the invocation's own code (outside greenlet.switch hand-offs)")
    # Its own task, in a copy of the caller's context (the invocation's variables).
    inner = asyncio.ensure_future(awaitable, loop=loop)
    waiting = [True]  # False once back (the loop's stop can bring it back first)
    inner.add_done_callback(lambda _: waiting[0] and loop.resume(me), context=contextvars.Context())
    _waits[task] = inner
    _leave_task(loop, task)
    try:
        if loop.driver is me:
            loop.hop()
        else:
            loop.yield_driving()
    finally:
        waiting[0] = False
        _enter_task(loop, task)
        _waits.pop(task, None)
    if not inner.done():  # switched back to by the loop's stop (the child is ending)
        inner.cancel()
        raise asyncio.CancelledError("the event loop stopped")
    return inner.result()


def cancel_waits(task: asyncio.Task[Any]) -> None:
    """``task`` was cancelled: what it waits for in :func:`run_sync` is too."""
    inner = _waits.get(task)
    if inner is not None:
        inner.cancel()
