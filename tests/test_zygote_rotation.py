"""When a zygote rotates for its count of children, in-process.

The successor is started a lead's worth of forks before the count is reached;
when it is still starting then (a loaded host), the current zygote forks on,
up to twice its count, instead of every request that waits for a spare
stalling until the successor is up (see supervisor.pool.zygote_client). The
real rotation, over real zygotes, is tests/test_hash_seed.py's.
"""

from __future__ import annotations

import socket
import subprocess

import trio
import trio.testing

from supervisor.pool.fork_priority import ZYGOTE_NICE
from supervisor.pool.zygote_client import ZygoteClient, _Launched


def _client(max_children: int) -> ZygoteClient:
    client = ZygoteClient(0, lambda *a: None, lambda *a: None, lambda: None, max_children=max_children)
    client._life = trio.CancelScope()
    return client


def in_trio(test):  # noqa: ANN001, ANN201 - a cancel scope's state is read inside a run
    def run() -> None:
        async def body() -> None:
            test()

        trio.run(body)

    run.__name__ = test.__name__
    return run


@in_trio
def test_a_zygote_whose_successor_is_up_rotates_at_its_count() -> None:
    client = _client(10)
    client._successor_done = trio.Event()
    client._successor_done.set()
    for _ in range(9):
        client.forked()
    assert not client._life.cancel_called
    client.forked()
    assert client._life.cancel_called


@in_trio
def test_a_late_successor_lets_the_zygote_fork_on_up_to_twice_its_count() -> None:
    client = _client(10)
    client._successor_done = trio.Event()  # started, not up yet
    for _ in range(19):
        client.forked()
    assert not client._life.cancel_called, "rotated while its successor was still starting"
    client.forked()
    assert client._life.cancel_called, "forked past twice its count"


def test_the_rotation_comes_when_the_late_successor_is_up() -> None:
    client = _client(10)
    client._nursery = None
    started = trio.Event()

    async def start(successor: int = 0) -> None:
        await started.wait()
        return None

    client._start = start  # type: ignore[method-assign]

    async def main() -> None:
        client._successor_done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._start_successor, client.generation + 1)
            for _ in range(11):
                client.forked()
            await trio.testing.wait_all_tasks_blocked()
            assert not client._life.cancel_called
            started.set()
        assert client._life.cancel_called, "past its count, and the successor up: it must rotate"

    trio.run(main)


def test_spawns_are_capped_at_the_limit_in_force() -> None:
    client = _client(10)
    sent: list[bytes] = []

    class Sock:
        def send(self, payload: bytes) -> None:
            sent.append(payload)

    client._sock = Sock()  # type: ignore[assignment]
    client._successor_done = trio.Event()
    assert client.spawn(50) and client._asked == 20, "a late successor: up to twice the count"
    client._successor_done.set()
    assert not client.spawn(1), "successor up: nothing past the count"
    assert len(sent) == 1


def test_a_successor_taken_over_leaves_idle_cpu_before_it_forks() -> None:
    """Started under SCHED_IDLE (fork_priority.IDLE_ONLY), a successor is given
    the zygotes' nice as it becomes the one that forks: its children would
    inherit the idle policy otherwise. Here with a real process standing in."""
    calls: list[tuple[int, int]] = []
    client = ZygoteClient(0, lambda *a: None, lambda *a: None, lambda: None, max_children=10,
                          renice=lambda pid, nice: calls.append((pid, nice)))
    stand_in = subprocess.Popen(["sleep", "60"])
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    async def main() -> None:
        async def start(successor: int = 0) -> _Launched:
            return _Launched(stand_in, ours)

        client._start = start  # type: ignore[method-assign]
        client._successor_done = trio.Event()
        await client._start_successor(client.generation + 1)
        taken = await client._take_successor()
        assert taken is not None and taken.process is stand_in
        assert calls == [(stand_in.pid, ZYGOTE_NICE)], calls

    try:
        trio.run(main)
    finally:
        stand_in.kill()
        stand_in.wait()
        ours.close()
        theirs.close()
