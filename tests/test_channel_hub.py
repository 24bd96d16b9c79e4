"""One task reads every child's channel (supervisor.pool.channel_hub.ChannelHub).

Over real socket pairs: every channel with bytes waiting is read in one step
of the hub's task (that is what saves a trio round per frame), but no more
than MAX_READS of them before trio's other tasks run; a reader removed for a
closed descriptor never removes the registration of a socket that reused its
number. Nothing is timed: steps of the hub's task are counted by an
instrument.
"""

from __future__ import annotations

import socket

import trio
import trio.testing

from supervisor.pool.channel_hub import MAX_READS, ChannelHub


class _Steps(trio.abc.Instrument):
    """Counts the steps one task takes, and what ``read`` held after each."""

    def __init__(self, read: list[int] | None = None) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0
        self.read = read
        self.read_after: list[int] = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task and self.read is not None:
            self.read_after.append(len(self.read))


def _pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    pairs = [socket.socketpair() for _ in range(count)]
    for ours, _ in pairs:
        ours.setblocking(False)
    return pairs


def _reading(hub: ChannelHub, pairs, read: list[int], done: trio.Event, want: int,
             steps: _Steps) -> list[int]:
    """Registers a reader per pair; returns where the hub's step count is
    recorded once ``want`` channels were read."""
    steps_then: list[int] = []
    for number, (ours, _) in enumerate(pairs):
        def reader(sock=ours, number=number) -> None:
            sock.recv(4096)
            read.append(number)
            if len(read) == want:
                steps_then.append(steps.steps)
                done.set()
        hub.add(ours.fileno(), reader)
    return steps_then


async def _hub_running(nursery: trio.Nursery, hub: ChannelHub, steps: _Steps) -> None:
    async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
        steps.task = trio.lowlevel.current_task()
        task_status.started()
        await hub.run()

    await nursery.start(run)
    await trio.testing.wait_all_tasks_blocked()
    steps.steps = 0


def test_every_channel_with_bytes_is_read_in_one_step_of_the_hub() -> None:
    count = 40
    pairs = _pairs(count)
    read: list[int] = []

    async def main() -> None:
        hub, steps, done = ChannelHub(), _Steps(), trio.Event()
        trio.lowlevel.add_instrument(steps)
        steps_then = _reading(hub, pairs, read, done, count, steps)
        async with trio.open_nursery() as nursery:
            await _hub_running(nursery, hub, steps)
            for _, theirs in pairs:
                theirs.send(b"frame")
            await done.wait()
            nursery.cancel_scope.cancel()
        assert steps_then == [1], f"{count} ready channels took the hub {steps_then} steps"

    try:
        trio.run(main)
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
    assert sorted(read) == list(range(count))


def test_past_max_reads_the_hub_ends_its_step_and_reads_the_rest_in_the_next() -> None:
    count = MAX_READS + 36
    pairs = _pairs(count)
    read: list[int] = []

    async def main() -> _Steps:
        hub, steps, done = ChannelHub(), _Steps(read), trio.Event()
        trio.lowlevel.add_instrument(steps)
        steps_then = _reading(hub, pairs, read, done, count, steps)
        async with trio.open_nursery() as nursery:
            await _hub_running(nursery, hub, steps)
            steps.read_after.clear()
            for _, theirs in pairs:
                theirs.send(b"frame")
            await done.wait()
            nursery.cancel_scope.cancel()
        assert steps_then == [2], steps_then
        return steps

    try:
        steps = trio.run(main)
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
    assert sorted(read) == list(range(count))
    # Its first step read MAX_READS channels and ended (trio's other tasks
    # and its I/O poll came next); the second read the rest.
    assert steps.read_after[:2] == [MAX_READS, count], steps.read_after


def test_removing_a_closed_channel_leaves_the_socket_that_reused_its_number() -> None:
    hub = ChannelHub()
    first, first_peer = socket.socketpair()
    fd = first.fileno()

    def old_reader() -> None:
        raise AssertionError("the closed channel's reader was called")

    hub.add(fd, old_reader)
    first.close()  # its number is free; the kernel dropped it from the set
    first_peer.close()
    reused, reused_peer = socket.socketpair()
    if reused.fileno() != fd:  # the lowest free number is the one just freed
        reused, spare = reused_peer, reused
    else:
        spare = reused_peer
    assert reused.fileno() == fd
    reused.setblocking(False)
    got: list[bytes] = []
    done = trio.Event()

    def new_reader() -> None:
        got.append(reused.recv(4096))
        done.set()

    hub.add(fd, new_reader)
    hub.remove(fd, old_reader)  # late: the closed channel's owner cleans up
    assert len(hub) == 1

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run)
            spare.send(b"still read")
            await done.wait()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        reused.close()
        spare.close()
    assert got == [b"still read"]


def test_a_channel_added_after_the_hub_stopped_is_ignored() -> None:
    # The pool's nursery is cancelled: a child's task that had not yet
    # registered its channel must not fail on the closed epoll set.
    hub = ChannelHub()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    trio.run(main)
    ours, theirs = socket.socketpair()
    try:
        hub.add(ours.fileno(), lambda: None)
        hub.remove(ours.fileno(), lambda: None)
        assert len(hub) == 0
    finally:
        ours.close()
        theirs.close()
