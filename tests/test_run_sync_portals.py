"""Portals (sandbox.run_sync) are pooled greenlets: reuse must not leak state.

Each handler runs in a portal so that synchronous code can ``run_sync`` an
awaitable while other invocations keep running. Starting a greenlet per
invocation cost ~8 us; portals are now reused, so these check what reuse
could break: the invocation's context variables, two handlers suspended at
once, a portal opened inside another, and a handler that raised.
"""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from sandbox import run_sync as portals

current = contextvars.ContextVar("current", default="none")


async def _handler(name: str, gate: asyncio.Event | None = None) -> str:
    async def wait() -> str:
        if gate is not None:
            await gate.wait()
        return current.get()

    inside = current.get()
    seen = portals.run_sync(wait())  # synchronous code, suspending only this handler
    return f"{inside}:{seen}"


async def _invoke(name: str, gate: asyncio.Event | None = None) -> str:
    """As the child serves an invocation: its context set by the task, then the portal."""
    current.set(name)
    return await portals.run_in_portal(_handler(name, gate))


def test_portals_are_reused_and_each_handler_sees_its_own_context() -> None:
    async def main() -> None:
        first = await asyncio.create_task(_invoke("a"))
        pooled = list(portals._idle)
        second = await asyncio.create_task(_invoke("b"))
        assert (first, second) == ("a:a", "b:b")
        assert pooled and portals._idle == pooled, "the same greenlet served both"
        assert current.get() == "none", "a handler's context stays its own"

    asyncio.run(main())


def test_two_handlers_suspended_in_run_sync_at_once() -> None:
    async def main() -> None:
        gate_a, gate_b = asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(_invoke("a", gate_a))
        b = asyncio.create_task(_invoke("b", gate_b))
        await asyncio.sleep(0.01)
        gate_b.set()
        assert await b == "b:b" and not a.done()
        gate_a.set()
        assert await a == "a:a"

    asyncio.run(main())


def test_a_portal_opened_inside_another_returns_to_it() -> None:
    async def outer() -> str:
        inner = await _invoke("inner")
        return portals.run_sync(asyncio.sleep(0, result=f"outer+{inner}"))

    async def main() -> None:
        for _ in range(3):  # pooled portals, parents reassigned each time
            assert await asyncio.create_task(portals.run_in_portal(outer())) == "outer+inner:inner"

    asyncio.run(main())


def test_a_handler_that_raised_leaves_a_usable_portal() -> None:
    async def broken() -> None:
        portals.run_sync(asyncio.sleep(0))
        raise ValueError("tenant bug")

    async def main() -> None:
        with pytest.raises(ValueError, match="tenant bug"):
            await portals.run_in_portal(broken())
        assert await asyncio.create_task(_invoke("after")) == "after:after"

    asyncio.run(main())


def test_run_sync_outside_a_handler_says_where_it_may_be_used() -> None:
    with pytest.raises(RuntimeError, match="only be used while a handler runs"):
        portals.run_sync(asyncio.sleep(0))
