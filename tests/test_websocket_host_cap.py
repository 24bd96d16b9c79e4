"""WebSockets to servers (``js.WebSocket.new(url)``) are capped host-wide,
every sandbox's together (``[outbound] max_websockets``), besides the 256 of
one sandbox (test_cf_examples_gaps): each holds one of the supervisor's
file descriptors for as long as it stays open. One past the cap errs (an
``error`` event, then a 1006 close, as a refused connection does) with a
log line naming the cap; closing one makes room again. Real server, real
jailed children of two tenants, a real WebSocket server."""

from __future__ import annotations

import time

import pytest

from tests.harness import Corral
from tests.test_cf_examples_gaps import EchoServer
from tests.test_cf_gaps import deploy

CAP = 3

SOCKETS = '''
import js
from pyodide.ffi import create_proxy
from workers import Response, WorkerEntrypoint

COUNTS = {"open": 0, "error": 0, "close": 0}
SOCKETS = []


def count(kind):
    def listener(event):
        COUNTS[kind] += 1
    return create_proxy(listener)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.url.endswith("/counts"):
            return Response.json(COUNTS)
        if request.url.endswith("/close"):
            for ws in SOCKETS:
                ws.close(1000, "bye")
            SOCKETS.clear()
            return Response("closing")
        for _ in range(int(request.headers.get("x-count"))):
            ws = js.WebSocket.new(request.headers.get("x-target"))
            for kind in COUNTS:
                ws.addEventListener(kind, count(kind))
            SOCKETS.append(ws)
        return Response("opened")
'''


@pytest.fixture(scope="module")
def corral(tmp_path_factory):
    server = Corral(tmp_path_factory.mktemp("ws-host-cap"),
                    config=f"[outbound]\nmax_websockets = {CAP}\n").start()
    try:
        server.deploy_dispatcher()
        yield server
    finally:
        server.stop()


def counts_when(corral: Corral, script: str, done) -> dict:
    """The tenant's event counts once ``done(counts)`` holds (polled, with a deadline)."""
    deadline = time.monotonic() + 30
    while True:
        counts = corral.request("/counts", host=f"{script}.localhost").json()
        if done(counts) or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def open_sockets(corral: Corral, script: str, port: int, count: int) -> None:
    resp = corral.request("/", host=f"{script}.localhost",
                          headers={"x-target": f"ws://127.0.0.1:{port}/", "x-count": str(count)})
    assert resp.text == "opened", resp


def test_the_host_holds_at_most_max_websockets_to_servers(corral):
    server = EchoServer()
    try:
        deploy(corral, "first", SOCKETS)
        deploy(corral, "second", SOCKETS)
        open_sockets(corral, "first", server.port, 2)
        first = counts_when(corral, "first", lambda c: c["open"] + c["error"] >= 2)
        assert first == {"open": 2, "error": 0, "close": 0}, first
        # Another sandbox, well under its own cap of 256: one more fits on the host.
        open_sockets(corral, "second", server.port, 2)
        second = counts_when(corral, "second", lambda c: c["open"] + c["error"] >= 2 and c["close"] >= 1)
        assert second == {"open": 1, "error": 1, "close": 1}, second
        assert (f"too many WebSockets to servers are open on this host: at most {CAP} at once"
                in corral.log_path.read_text())
        # Closing the first tenant's two makes room for two more.
        assert corral.request("/close", host="first.localhost").text == "closing"
        closed = counts_when(corral, "first", lambda c: c["close"] >= 2)
        assert closed == {"open": 2, "error": 0, "close": 2}, closed
        open_sockets(corral, "second", server.port, 3)
        second = counts_when(corral, "second", lambda c: c["open"] + c["error"] >= 5 and c["close"] >= 2)
        assert second == {"open": 3, "error": 2, "close": 2}, second
        assert corral.alive() and corral.admin("GET", "/metrics").status == 200
    finally:
        server.close()
