"""``run_sync`` (sandbox.run_sync) on the children's loop: hops, not portals.

Synchronous code waits for an awaitable by setting its greenlet aside and
handing the loop to a new one; handlers that never call ``run_sync`` run on
the loop's own greenlet, with no switch at all (a greenlet per invocation
cost ~35 us of a user invocation's ~170 us over 300 tenants). These run the
real ``ChildLoop`` and check what a hop could break: the invocation's
context variables, several handlers waiting at once and resumed in any
order, waits inside waits, errors, cancellation and the loop's stop.
"""

from __future__ import annotations

import asyncio
import contextvars
import time

import greenlet
import pytest

from sandbox.child import ChildLoop
from sandbox.run_sync import cancel_waits, run_sync

current = contextvars.ContextVar("current", default="none")


def run(coro):
    loop = ChildLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def _handler(name: str, gate: asyncio.Event | None = None) -> str:
    async def wait() -> str:
        if gate is not None:
            await gate.wait()
        return current.get()

    current.set(name)
    seen = run_sync(wait())  # synchronous code, suspending only this handler
    return f"{current.get()}:{seen}"


def test_a_handler_that_never_waits_runs_on_the_loops_own_greenlet() -> None:
    root = greenlet.getcurrent()

    async def handler() -> bool:
        return greenlet.getcurrent() is root

    async def main() -> list[bool]:
        return [await asyncio.create_task(handler()) for _ in range(3)]

    assert run(main()) == [True, True, True]


def test_each_handler_keeps_its_context_across_its_wait() -> None:
    async def main() -> tuple[str, str, str]:
        first = await asyncio.create_task(_handler("a"))
        second = await asyncio.create_task(_handler("b"))
        return first, second, current.get()

    assert run(main()) == ("a:a", "b:b", "none")


@pytest.mark.parametrize("order", ["first waits longer", "last waits longer"])
def test_handlers_wait_at_once_and_are_resumed_in_any_order(order: str) -> None:
    async def main() -> list[str]:
        gates = [asyncio.Event() for _ in range(3)]
        tasks = [asyncio.create_task(_handler(name, gate)) for name, gate in zip("abc", gates, strict=True)]
        await asyncio.sleep(0.01)
        assert not any(t.done() for t in tasks), "every handler waits, none blocks the loop"
        done = []
        for i in (range(3) if order == "last waits longer" else reversed(range(3))):
            gates[i].set()
            done.append(await tasks[i])
            assert not any(t.done() for t, g in zip(tasks, gates, strict=True) if not g.is_set())
        return done

    expected = ["a:a", "b:b", "c:c"]
    done = run(main())
    assert done == (expected if order == "last waits longer" else expected[::-1])


def test_a_wait_inside_a_wait_and_many_in_a_row() -> None:
    async def inner() -> str:
        return run_sync(asyncio.sleep(0, result="inner"))

    async def outer() -> str:
        got = [run_sync(asyncio.sleep(0, result=i)) for i in range(20)]
        return run_sync(inner()) + f"+{sum(got)}"

    async def main() -> list[str]:
        return await asyncio.gather(*(outer() for _ in range(5)))

    assert run(main()) == ["inner+190"] * 5


def test_greenlets_that_waited_end_once_their_step_does() -> None:
    """A hop's greenlet hands the loop back when its task step ends: live
    greenlets stay the loop's own and its driver, however many waits ran."""
    import gc

    def live() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)

    async def main() -> int:
        for _ in range(3):
            await asyncio.gather(*(asyncio.create_task(_handler(str(i))) for i in range(20)))
        return live()

    before = live()
    assert run(main()) <= before + 2


def test_handlers_may_wait_any_number_of_times_in_a_childs_life() -> None:
    """Each hop's new driver starts as deep as the stack it starts from: begun
    by the hopping greenlet, every one began deeper than the last, and a
    child died of RecursionError after some 150 waits in all (a Durable
    Object's synchronous ``storage.kv`` calls, one request after another)."""
    async def handler(i: int) -> int:
        run_sync(asyncio.sleep(0))
        return run_sync(asyncio.sleep(0, result=i))

    async def main() -> int:
        total = 0
        for i in range(1000):
            total += await asyncio.create_task(handler(i))
        return total

    assert run(main()) == sum(range(1000))


def test_timers_fire_while_handlers_wait() -> None:
    async def main() -> float:
        started = time.monotonic()
        results = await asyncio.gather(
            *(asyncio.create_task(_sleeper(0.02)) for _ in range(4)))
        assert results == [0.02] * 4
        return time.monotonic() - started

    async def _sleeper(s: float) -> float:
        run_sync(asyncio.sleep(s))
        return s

    assert run(main()) >= 0.02


def test_an_error_reaches_the_synchronous_code_and_the_loop_goes_on() -> None:
    async def failing() -> None:
        raise ValueError("upstream said no")

    async def handler() -> str:
        try:
            run_sync(failing())
        except ValueError as exc:
            return f"caught {exc}"
        return "not raised"

    async def broken() -> None:
        run_sync(asyncio.sleep(0))
        raise KeyError("tenant bug")

    async def main() -> tuple[str, str]:
        with pytest.raises(KeyError, match="tenant bug"):
            await asyncio.create_task(broken())
        return await asyncio.create_task(handler()), await asyncio.create_task(_handler("after"))

    assert run(main()) == ("caught upstream said no", "after:after")


def test_cancelling_a_waiting_handler_ends_its_wait_at_once() -> None:
    seen = []

    async def handler() -> None:
        try:
            run_sync(asyncio.sleep(30))
        except asyncio.CancelledError:
            seen.append("cancelled in the synchronous code")
            raise

    async def main() -> float:
        task = asyncio.create_task(handler())
        await asyncio.sleep(0.01)
        started = time.monotonic()
        task.cancel()
        cancel_waits(task)  # as the child does on the supervisor's Cancel
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    assert run(main()) < 5
    assert seen == ["cancelled in the synchronous code"]


def test_the_loop_stops_while_handlers_wait_and_runs_again() -> None:
    loop = ChildLoop()

    async def handler() -> None:
        run_sync(asyncio.sleep(30))

    tasks = []
    try:
        # The first waits where the loop's own greenlet left it (the stop ends
        # its wait), the second in a greenlet a hop made.
        tasks = [loop.create_task(handler()) for _ in range(2)]
        loop.call_later(0.01, loop.stop)
        loop.run_forever()  # returns: the loop stopped
        assert loop.run_until_complete(asyncio.sleep(0, result="again")) == "again"
    finally:
        for task in tasks:
            task.cancel()
            cancel_waits(task)
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()
    assert all(task.done() for task in tasks)


def test_run_sync_outside_a_handler_says_where_it_may_be_used() -> None:
    with pytest.raises(RuntimeError, match="only be used while a handler runs"):
        run_sync(asyncio.sleep(0))

    async def on_another_loop() -> None:
        run_sync(asyncio.sleep(0))

    with pytest.raises(RuntimeError, match="only be used while a handler runs"):
        asyncio.run(on_another_loop())


def test_run_sync_from_a_greenlet_the_worker_made_says_so() -> None:
    async def handler() -> str:
        def inside() -> str:
            try:
                run_sync(asyncio.sleep(0))
            except RuntimeError as exc:
                return str(exc)
            return "waited"

        return greenlet.greenlet(inside).switch()

    assert "a greenlet the worker's code started itself" in run(handler())
