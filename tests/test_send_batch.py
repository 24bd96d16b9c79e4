"""Frames to children leave once per loop turn, or every few (supervisor.pool.child_process.SendBatch).

Concurrent client requests read in one turn of the supervisor's loop each
make an Invoke for the dispatcher; they must leave in one write, not one
write each (each write wakes the child). Seen from /metrics: the frames the
batch carried, and the writes that carried them. Nothing is timed.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading

import trio

from protocol.framing import child_decoder
from protocol.messages import Cancel
from supervisor.limits.cpu_meter import MeterFactory
from supervisor.pool.child_process import BATCH_MAX_FRAMES, ChildKit, ChildProcess
from tests.harness import Corral
from tests.test_observability import metric

HELLO = '''
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("hi " + request.url)
'''

CLIENTS = 16
ROUNDS = 10


def test_concurrent_requests_reach_a_child_in_fewer_writes_than_frames(tmp_path):
    server = Corral(tmp_path / "state").start()
    try:
        server.deploy_dispatcher()
        server.deploy("hi", HELLO)
        assert server.request("/", host="hi.localhost").status == 200
        frames_before = metric(server, "corral_child_frames_batched_total")
        writes_before = metric(server, "corral_child_batch_writes_total")
        answers: list[tuple[int, bytes]] = []
        start = threading.Barrier(CLIENTS)

        def client(n: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            start.wait()
            for i in range(ROUNDS):
                conn.request("GET", f"/{n}/{i}", headers={"host": "hi.localhost"})
                resp = conn.getresponse()
                answers.append((resp.status, resp.read()))
            conn.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(answers) == sorted(
            (200, f"hi http://hi.localhost/{n}/{i}".encode()) for n in range(CLIENTS) for i in range(ROUNDS))
        frames = metric(server, "corral_child_frames_batched_total") - frames_before
        writes = metric(server, "corral_child_batch_writes_total") - writes_before
        # Each request is at least an Invoke to the dispatcher and an Invoke
        # to the tenant (the SubResponse back to the dispatcher, a tail
        # call's "answered", goes with the next of them, or alone once the
        # loop goes idle: see ChildProcess.defer).
        assert frames >= 2 * CLIENTS * ROUNDS, (frames, writes)
        print(f"\n{frames:.0f} frames in {writes:.0f} writes")
        assert 0 < writes < frames, (frames, writes)
    finally:
        server.stop()


class _Children:
    """Child processes made of real socket pairs, sharing one batch; the
    process behind each is this one (nothing runs in it)."""

    def __init__(self, count: int) -> None:
        self.kit = ChildKit(enforcer=None, meters=MeterFactory(allow_perf=False))  # type: ignore[arg-type]
        self.pairs = [socket.socketpair() for _ in range(count)]
        self.children = []
        for ours, theirs in self.pairs:
            theirs.setblocking(False)
            pidfd = os.pidfd_open(os.getpid())
            self.children.append(ChildProcess(None, os.getpid(), ours, pidfd, 0, self.kit))  # type: ignore[arg-type]
        self.decoders = [child_decoder() for _ in range(count)]

    def arrived(self, index: int = 0) -> list[int]:
        """The ids of the frames that reached child ``index`` since last asked."""
        ids = []
        while True:
            try:
                data = self.pairs[index][1].recv(65536)
            except BlockingIOError:
                return ids
            ids += [m.id for m in self.decoders[index].feed(data)]

    def close(self) -> None:
        self.kit.batch.uninstall()
        for (ours, theirs), child in zip(self.pairs, self.children, strict=True):
            ours.close()
            theirs.close()
            os.close(child.pidfd)


def _one_turn_to_the_first(kids: _Children, first_id: int) -> list[list[int]]:
    """2 * BATCH_MAX_FRAMES + 1 frames for the first child in one task step
    (one turn of the loop): what reached it after each."""
    seen = []
    for sent in range(first_id, first_id + 2 * BATCH_MAX_FRAMES + 1):
        kids.children[0].send(Cancel(sent))
        seen.append(kids.arrived())
    return seen


def test_a_long_turn_sends_a_child_its_frames_every_few_not_only_at_its_end() -> None:
    """Tens of frames for one child in one turn (a loaded dispatcher) leave
    BATCH_MAX_FRAMES at a time as they are queued, so the child starts on
    them while the turn goes on; the rest leave at the end of the turn."""
    seen: list[list[int]] = []

    async def main() -> None:
        kids = _Children(1)
        kids.kit.batch.install()
        try:
            seen.extend(_one_turn_to_the_first(kids, 0))
            await trio.sleep(0)  # the turn ends
            seen.append(kids.arrived())
        finally:
            kids.close()

    trio.run(main)
    first, second = list(range(BATCH_MAX_FRAMES)), list(range(BATCH_MAX_FRAMES, 2 * BATCH_MAX_FRAMES))
    assert [ids for ids in seen if ids] == [first, second, [2 * BATCH_MAX_FRAMES]], seen
    assert seen[BATCH_MAX_FRAMES - 1] == first, "the first frames waited for the end of the turn"


def test_after_a_turn_that_kept_more_children_than_cores_busy_frames_wait_for_the_turn_end() -> None:
    """At 300 tenants one turn gives frames to tens of children, which keep
    every core busy: sending the dispatcher its frames early then only adds
    wake-ups. After such a turn a long run of frames for one child leaves in
    one send at the turn's end; after a turn that fed that child alone, the
    early sends come back."""
    busy = len(os.sched_getaffinity(0)) + 2  # the cores, the dispatcher, one more
    turns: list[list[list[int]]] = []

    async def main() -> None:
        kids = _Children(busy)
        kids.kit.batch.install()
        try:
            for index, child in enumerate(kids.children):
                child.send(Cancel(1000 + index))
            await trio.sleep(0)  # the wide turn ends
            assert all(kids.arrived(i) == [1000 + i] for i in range(busy))
            for first_id in (0, 100):  # a turn after the wide one, then one after a narrow one
                seen = _one_turn_to_the_first(kids, first_id)
                await trio.sleep(0)
                seen.append(kids.arrived())
                turns.append(seen)
        finally:
            kids.close()

    trio.run(main)
    after_wide, after_narrow = turns
    frames = 2 * BATCH_MAX_FRAMES + 1
    assert [ids for ids in after_wide if ids] == [list(range(frames))], after_wide
    assert [len(ids) for ids in after_narrow if ids] == [BATCH_MAX_FRAMES, BATCH_MAX_FRAMES, 1], after_narrow


def test_work_handed_to_later_runs_after_the_turns_frames_have_left() -> None:
    """An invocation's trace (handed to ``later``) no answer waits for: it
    runs once the frames queued in the same turn are in the child's socket,
    not before them, and what it sends itself leaves in the same turn."""
    order: list[str] = []

    async def main() -> None:
        kids = _Children(2)
        kids.kit.batch.install()
        try:

            def trace(arg: str) -> None:
                order.append(f"{arg} after {kids.arrived(0)}")
                kids.children[1].send(Cancel(7))  # e.g. a tail worker's Invoke

            kids.children[0].later(trace, "trace")
            kids.children[0].send(Cancel(1))
            assert order == [], "it ran before the end of the turn"
            await trio.sleep(0)  # the turn ends
            order.append(f"then {kids.arrived(1)}")
        finally:
            kids.close()

    trio.run(main)
    assert order == ["trace after [1]", "then [7]"], order


def test_a_task_woken_by_later_work_runs_at_once_not_after_the_loops_sleep() -> None:
    """trio chose how long to sleep before the hook ran: a task the work
    woke must not wait out that sleep (here 30 s, with nothing else due)."""

    async def main() -> None:
        kids = _Children(1)
        kids.kit.batch.install()
        woken = trio.Event()
        try:
            async def waiter() -> None:
                await woken.wait()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.sleep(0.01)  # the waiter sleeps; the next turn would sleep long
                kids.children[0].later(lambda _: woken.set(), None)
                with trio.fail_after(20):  # TooSlowError: it waited out the sleep
                    await woken.wait()
        finally:
            kids.close()

    trio.run(main)
