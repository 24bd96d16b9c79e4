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
        # Each request is at least an Invoke to the dispatcher, an Invoke to
        # the tenant and the SubResponse back to the dispatcher.
        assert frames >= 3 * CLIENTS * ROUNDS, (frames, writes)
        print(f"\n{frames:.0f} frames in {writes:.0f} writes")
        assert 0 < writes < frames, (frames, writes)
    finally:
        server.stop()


def test_a_long_turn_sends_a_child_its_frames_every_few_not_only_at_its_end() -> None:
    """Tens of frames for one child in one turn (a loaded dispatcher) leave
    BATCH_MAX_FRAMES at a time as they are queued, so the child starts on
    them while the turn goes on; the rest leave at the end of the turn. A
    real socket pair; the child process is this one (nothing is run in it)."""
    seen: list[list[int]] = []

    async def main() -> None:
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        kit = ChildKit(enforcer=None, meters=MeterFactory(allow_perf=False))  # type: ignore[arg-type]
        child = ChildProcess(None, os.getpid(), ours, os.pidfd_open(os.getpid()), 0, kit)  # type: ignore[arg-type]
        kit.batch.install()
        decoder = child_decoder()

        def arrived() -> list[int]:
            ids = []
            while True:
                try:
                    data = theirs.recv(65536)
                except BlockingIOError:
                    return ids
                ids += [m.id for m in decoder.feed(data)]

        try:
            sent = 0
            for _ in range(2 * BATCH_MAX_FRAMES + 1):  # all in one task step: one turn
                child.send(Cancel(sent))
                sent += 1
                seen.append(arrived())
            await trio.sleep(0)  # the turn ends
            seen.append(arrived())
        finally:
            kit.batch.uninstall()
            ours.close()
            theirs.close()
            os.close(child.pidfd)

    trio.run(main)
    first, second = list(range(BATCH_MAX_FRAMES)), list(range(BATCH_MAX_FRAMES, 2 * BATCH_MAX_FRAMES))
    assert [ids for ids in seen if ids] == [first, second, [2 * BATCH_MAX_FRAMES]], seen
    assert seen[BATCH_MAX_FRAMES - 1] == first, "the first frames waited for the end of the turn"
