"""Frames to children leave once per loop turn (supervisor.pool.child_process.SendBatch).

Concurrent client requests read in one turn of the supervisor's loop each
make an Invoke for the dispatcher; they must leave in one write, not one
write each (each write wakes the child). Seen from /metrics: the frames the
batch carried, and the writes that carried them. Nothing is timed.
"""

from __future__ import annotations

import http.client
import threading

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
