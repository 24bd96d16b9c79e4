"""SIGTERM answers every request a client has already sent (SPEC 1: "drains
in-flight requests before exiting"), wherever the request waits: on an idle
keep-alive connection the server has not read yet, or on a connection still
in the listen backlog. The server is stopped (SIGSTOP) while the requests
are sent and the SIGTERM is delivered, so that it finds all of them waiting
when it runs again, whichever it looks at first.
"""

from __future__ import annotations

import os
import signal
import socket

from tests.harness import Corral, multipart, read_response

HELLO = """
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("hello " + request.url.rsplit("/", 1)[1])
"""


def _request(path: str) -> bytes:
    return f"GET /{path} HTTP/1.1\r\nHost: hello.localhost\r\n\r\n".encode()


def test_sigterm_answers_the_requests_already_sent_then_closes(tmp_path):
    server = Corral(tmp_path / "state").start()
    try:
        server.deploy_dispatcher()
        server.deploy("hello", HELLO)
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        waiting = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        for sock in (idle, waiting):  # both keep-alive connections, served once
            sock.sendall(_request("first"))
            assert read_response(sock)[1] == b"hello first"
        pid = server.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            waiting.sendall(_request("second"))
            # The kernel completes this connection's handshake alone: it waits
            # in the listen backlog, its request in its buffer.
            backlog = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            backlog.sendall(_request("third"))
            os.kill(pid, signal.SIGTERM)
        finally:
            os.kill(pid, signal.SIGCONT)
        for sock, word in ((waiting, b"second"), (backlog, b"third")):
            head, body = read_response(sock)
            assert head.startswith(b"HTTP/1.1 200 ") and body == b"hello " + word
            assert sock.recv(1) == b""  # then closed, cleanly
        assert idle.recv(1) == b""  # the idle one is closed, not reset
        assert server.proc.wait(30) == 0
        for sock in (idle, waiting, backlog):
            sock.close()
    finally:
        server.stop()


LATER = """
import asyncio
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/read"):
            return Response(await self.env.KV.get("later") or "none")

        async def write_later():
            await asyncio.sleep(1.0)  # still at work when the stop comes
            await self.env.KV.put("later", "written by waitUntil")

        self.ctx.waitUntil(write_later())
        return Response("answered")
"""


def _stopped_then_started(tmp_path, before) -> Corral:
    """A server that ran ``before(server)``, was stopped by SIGTERM (exiting
    0), and is started again on the same state directory."""
    server = Corral(tmp_path / "state").start()
    try:
        server.deploy_dispatcher()
        before(server)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
    finally:
        server.stop()
    return Corral(tmp_path / "state").start()


def test_a_stop_waits_for_the_wait_until_work_of_answered_requests(tmp_path):
    """``systemctl stop`` right after a response: the work the request gave
    ``waitUntil`` (a KV write, here) still runs; it was killed with its child."""
    kv = [{"type": "kv_namespace", "name": "KV", "namespace_id": "later"}]

    def answered(server: Corral) -> None:
        server.deploy("later", LATER, bindings=kv)
        assert server.request("/", host="later.localhost").text == "answered"

    again = _stopped_then_started(tmp_path, answered)
    try:
        assert again.request("/read", host="later.localhost").text == "written by waitUntil", again.log()
    finally:
        again.stop()


def test_a_stop_answers_an_admin_call_already_sent(tmp_path):
    """A deploy on the admin socket when the stop comes is carried out and
    answered (the server is stopped while it is sent, as above), not cut."""
    server = Corral(tmp_path / "state").start()
    try:
        assert server.admin("GET", "/accounts/local/workers/dispatch/namespaces").status == 200  # serving
        body, ctype = multipart({"main_module": "worker.py"}, {"worker.py": HELLO})
        head = (f"PUT /accounts/local/workers/dispatch/namespaces/default/scripts/late HTTP/1.1\r\n"
                f"Host: corral\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        pid = server.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            admin = socket.socket(socket.AF_UNIX)
            admin.settimeout(30)
            admin.connect(server.socket_path)  # waits in the backlog
            admin.sendall(head + body)
            os.kill(pid, signal.SIGTERM)
        finally:
            os.kill(pid, signal.SIGCONT)
        status, answer = read_response(admin)
        assert status.startswith(b"HTTP/1.1 200 "), (status, answer)
        admin.close()
        assert server.proc.wait(60) == 0
    finally:
        server.stop()
    again = Corral(tmp_path / "state").start()
    try:
        again.deploy_dispatcher()
        assert again.request("/x", host="late.localhost").text == "hello x"
    finally:
        again.stop()


TAILER = """
from workers import WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def tail(self, events):
        for event in events:
            await self.env.KV.put("seen-" + event.event.request.url.rsplit("/", 1)[1], event.outcome)
"""


def test_a_stop_delivers_the_traces_of_answered_requests_and_counts_them(tmp_path):
    """The requests were answered, then SIGTERM: their trace events, queued
    for the tail worker (and a CPU figure away from complete), died with the
    server, and usage lost the last of them."""
    def answered(server: Corral) -> None:
        server.deploy("tailer", TAILER, namespace=None,
                      bindings=[{"type": "kv_namespace", "name": "KV", "namespace_id": "seen"}])
        server.deploy("traced", HELLO, extra_metadata={"tail_consumers": [{"service": "tailer"}]})
        for word in ("one", "two", "three"):
            assert server.request(f"/{word}", host="traced.localhost").text == f"hello {word}"

    again = _stopped_then_started(tmp_path, answered)
    try:
        keys = again.admin("GET", "/accounts/local/storage/kv/namespaces/seen/keys").json()["result"]
        assert sorted(k["name"] for k in keys) == ["seen-one", "seen-three", "seen-two"], again.log()[-3000:]
        rows = again.admin("GET", "/accounts/local/workers/usage?namespace=default&script=traced").json()["result"]
        assert sum(r["requests"] for r in rows) == 3, rows
    finally:
        again.stop()


SLOW_CONSUMER = """
import asyncio
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/send"):
            await self.env.Q.send("job")
            return Response("sent")
        started, done = await self.env.KV.get("started"), await self.env.KV.get("done")
        return Response(f"{started} {done}")

    async def queue(self, batch, env, ctx):
        for message in batch.messages:
            await env.KV.put("started", str(message.attempts))
            await asyncio.sleep(1.5)
            await env.KV.put("done", str((int(await env.KV.get("done") or 0)) + 1))
            message.ack()
"""


def test_a_stop_waits_for_a_queue_batch_under_way(tmp_path):
    """SIGTERM while a consumer works on its batch: the batch finishes and is
    acked (the stop cut it, and the message came back with an attempt spent,
    towards its dead-letter queue)."""
    import time

    bindings = [{"type": "kv_namespace", "name": "KV", "namespace_id": "jobs"},
                {"type": "queue", "name": "Q", "queue_name": "jobs"}]

    def working(server: Corral) -> None:
        server.deploy("consumer", SLOW_CONSUMER, bindings=bindings, extra_metadata={
            "queue_consumers": [{"queue": "jobs", "max_batch_size": 1, "max_batch_timeout": 0.1}]})
        assert server.request("/send", host="consumer.localhost").text == "sent"
        deadline = time.monotonic() + 30
        while server.request("/", host="consumer.localhost").text.split()[0] == "None":
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.05)  # until the batch is under way

    again = _stopped_then_started(tmp_path, working)
    try:
        assert again.request("/", host="consumer.localhost").text == "1 1", again.log()[-2000:]
    finally:
        again.stop()
