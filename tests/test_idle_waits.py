"""supervisor.edge.idle_waits over real socket pairs, in a real trio loop.

The waits are edge-triggered: what must hold is that no edge is lost (bytes
that come while no task waits make the next wait return at once), that an
edge wakes its wait once (an unread socket does not wake it again), and that
closing and cancelling leave nothing parked. The HTTP server's use of it is
covered by the keep-alive tests (tests/test_spine.py, tests/test_edge_framing.py).
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from supervisor.edge.idle_waits import IdleWaits


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


def _run(body) -> None:
    """``body(waits, nursery, ours, theirs)`` in a trio run with the hub's task
    running and a fresh socket pair, ``ours`` non-blocking; both closed after."""
    ours, theirs = _pair()

    async def main() -> None:
        waits = IdleWaits()
        async with trio.open_nursery() as nursery:
            await nursery.start(waits.run)
            assert waits.add(ours.fileno())
            await body(waits, nursery, ours, theirs)
            waits.remove(ours.fileno())
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        ours.close()
        theirs.close()


def test_a_wait_is_woken_by_bytes_and_once_per_edge() -> None:
    woken: list[int] = []

    async def body(waits: IdleWaits, nursery: trio.Nursery, ours: socket.socket, theirs: socket.socket) -> None:
        async def waiter() -> None:
            await waits.wait(ours.fileno())
            woken.append(1)
            await waits.wait(ours.fileno())  # the bytes stay unread: no new edge
            woken.append(2)

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        theirs.send(b"GET")
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [1], "the edge wakes the parked wait"
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [1], "an unread socket is not reported again"
        theirs.send(b" /")
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [1, 2], "new bytes are a new edge"

    _run(body)


def test_bytes_that_come_while_nobody_waits_are_not_lost() -> None:
    async def body(waits: IdleWaits, nursery: trio.Nursery, ours: socket.socket, theirs: socket.socket) -> None:
        theirs.send(b"GET / HTTP/1.1\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()  # the hub has seen the edge, nobody waited
        with trio.fail_after(5):
            await waits.wait(ours.fileno())
        assert ours.recv(100) == b"GET / HTTP/1.1\r\n\r\n"

        # A socket readable before it is added is reported once added.
        early, early_peer = _pair()
        try:
            early_peer.send(b"x")
            assert waits.add(early.fileno())
            with trio.fail_after(5):
                await waits.wait(early.fileno())
            waits.remove(early.fileno())
        finally:
            early.close()
            early_peer.close()

    _run(body)


def test_the_peer_closing_wakes_the_wait() -> None:
    async def body(waits: IdleWaits, nursery: trio.Nursery, ours: socket.socket, theirs: socket.socket) -> None:
        theirs.close()
        with trio.fail_after(5):
            await waits.wait(ours.fileno())
        assert ours.recv(10) == b""

    _run(body)


def test_notify_closing_and_remove_wake_a_parked_wait_with_closed_resource_error() -> None:
    raised: list[str] = []

    async def body(waits: IdleWaits, nursery: trio.Nursery, ours: socket.socket, theirs: socket.socket) -> None:
        async def waiter() -> None:
            try:
                await waits.wait(ours.fileno())
            except trio.ClosedResourceError:
                raised.append("closed")

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        waits.notify_closing(ours.fileno())
        await trio.testing.wait_all_tasks_blocked()
        assert raised == ["closed"]
        with pytest.raises(trio.ClosedResourceError):
            await waits.wait(ours.fileno())  # and every later wait
        waits.remove(ours.fileno())  # idempotent

    _run(body)


def test_a_cancelled_wait_leaves_the_next_edge_for_the_next_wait() -> None:
    async def body(waits: IdleWaits, nursery: trio.Nursery, ours: socket.socket, theirs: socket.socket) -> None:
        with trio.CancelScope() as scope:
            nursery.start_soon(_cancel_when_blocked, scope)
            await waits.wait(ours.fileno())
        assert scope.cancelled_caught
        theirs.send(b"x")
        with trio.fail_after(5):
            await waits.wait(ours.fileno())

    _run(body)


async def _cancel_when_blocked(scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()


def test_without_its_task_running_the_hub_takes_nothing() -> None:
    waits = IdleWaits()
    ours, theirs = _pair()
    try:
        assert waits.add(ours.fileno()) is False
    finally:
        ours.close()
        theirs.close()
