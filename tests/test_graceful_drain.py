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

from tests.harness import Corral, read_response

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
